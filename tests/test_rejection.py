import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate, stats

from numpyro_jko import rejection
from numpyro_jko.chain import JKOChain, draw
from numpyro_jko.cnf import CNFSpec

# Proposal p = N(0, 1) (the chain's latent); unnormalized target g = 3 N(1, 0.6^2).
LOG3 = float(np.log(3.0))


def log_g(x):
    return LOG3 + jax.scipy.stats.norm.logpdf(x[0], 1.0, 0.6)


def log_p(x):
    return stats.norm.logpdf(x)


def test_fit_rejection_hits_rate(key):
    log_w = 2.0 * jax.random.normal(key, (20000,))
    for rate in (0.05, 0.2, 0.5):
        layer = jax.jit(rejection.fit_rejection, static_argnums=1)(log_w, rate)
        assert abs(float(layer.rbar) - rate) < 2e-4
        assert abs(float(rejection.rejection_rate(log_w, layer.log_c)) - rate) < 2e-4


def test_weighted_fit_estimates_the_rate_under_the_reweighted_law(key):
    # Draws of N(0, 1) reweighted to p = N(0.5, 0.8^2) must give the constant and
    # the rate of draws of p itself, within their Monte Carlo errors.
    k1, k2 = jax.random.split(key)
    n = 50_000
    x0 = jax.random.normal(k1, (n,))
    log_p = jax.scipy.stats.norm.logpdf(x0, 0.5, 0.8)
    weights = jnp.exp(log_p - jax.scipy.stats.norm.logpdf(x0))
    log_w0 = jax.vmap(log_g)(x0[:, None]) - log_p
    weighted = rejection.fit_rejection(log_w0, 0.2, weights=weights)
    assert abs(float(weighted.rbar) - 0.2) < 2e-4  # the weighted rate is hit
    x = 0.5 + 0.8 * jax.random.normal(k2, (n,))
    log_w = jax.vmap(log_g)(x[:, None]) - jax.scipy.stats.norm.logpdf(x, 0.5, 0.8)
    # The rate of exact draws of p at the weighted fit's constant.
    alpha = rejection.acceptance_probability(log_w, weighted.log_c)
    rate = 1.0 - float(jnp.mean(alpha))
    se = float(np.hypot(weighted.rbar_se, jnp.std(alpha) / np.sqrt(n)))
    assert 0 < float(weighted.rbar_se) < 0.01
    assert abs(rate - float(weighted.rbar)) < 4 * se, (rate, weighted, se)


def test_nan_weights_are_rejected():
    alpha = rejection.acceptance_probability(jnp.array([jnp.nan, -jnp.inf, 3.0]), 0.0)
    assert alpha.tolist() == [0.0, 0.0, 1.0]
    layer = rejection.fit_rejection(jnp.array([jnp.nan, 0.0, 1.0, 2.0, -1.0]), 0.2)
    assert np.isfinite(float(layer.log_c))


def _corrected_density(log_c):
    alpha = lambda x: min(1.0, np.exp(float(log_g(jnp.array([x]))) - log_p(x) - log_c))
    r_true = 1.0 - integrate.quad(lambda x: np.exp(log_p(x)) * alpha(x), -12, 12)[0]
    return (lambda x: np.exp(log_p(x)) * (alpha(x) + r_true)), r_true


def test_rejection_layer_density_integrates_to_one_and_matches_draws(key):
    # One rejection layer on the latent: its corrected density p (alpha + rbar)
    # must integrate to 1, and the law of its draws must be that density.
    chain0 = JKOChain(log_g, CNFSpec(1, 4), jnp.zeros(1), jnp.array(1.0))
    x, energy, lg = draw(jax.random.fold_in(key, 1), chain0, 20000)
    layer = rejection.fit_rejection(jnp.asarray(lg + energy), 0.2)
    density, r_true = _corrected_density(float(layer.log_c))
    total = integrate.quad(density, -12, 12, limit=200)[0]
    assert abs(total - 1.0) < 1e-6
    # The fitted rbar is a Monte Carlo estimate of r_true: sd ~ sqrt(r(1-r)/N) < 3e-3.
    assert abs(float(layer.rbar) - r_true) < 0.015

    chain = chain0._replace(
        layers=(rejection.RejectionLayer(layer.log_c, jnp.asarray(r_true)),)
    )
    draws, energy_out, _ = draw(jax.random.fold_in(key, 2), chain, 20000)
    # Tracked density equals the corrected density at the draws.
    np.testing.assert_allclose(
        np.exp(-energy_out[:200]), [density(v) for v in draws[:200, 0]], rtol=1e-4
    )
    grid = np.linspace(-8, 8, 4001)
    pdf = np.array([density(v) for v in grid])
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(grid))])
    result = stats.kstest(draws[:, 0], lambda v: np.interp(v, grid, cdf))
    # An honest level: a correct sampler fails this 0.1% of the time.
    assert result.pvalue > 1e-3
    # The draws are closer to the target than the proposal was.
    target_mean = 1.0
    assert abs(draws[:, 0].mean() - target_mean) < abs(0.0 - target_mean)
