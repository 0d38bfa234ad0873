"""The defensive mixture layer: its density, its draws, and where it sits in a fit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from numpyro_jko import chain as chain_lib
from numpyro_jko import defensive, jko
from numpyro_jko.chain import JKOChain, draw, log_prob
from numpyro_jko.cnf import CNFSpec
from numpyro_jko.defensive import DefensiveLayer
from numpyro_jko.rejection import RejectionLayer


def test_proposal_is_scipys_student_t(key):
    layer = DefensiveLayer(0.1, 3.0, 2.0)
    x = jnp.linspace(-20.0, 20.0, 41)[:, None]
    ours = defensive.proposal_logpdf(x, layer, jnp.array([1.0]), jnp.array(1.5))
    np.testing.assert_allclose(
        ours, stats.t.logpdf(np.asarray(x[:, 0]), 3.0, loc=1.0, scale=3.0), rtol=1e-5
    )
    draws = defensive.proposal_sample(key, layer, jnp.array([1.0]), 1.5, 20000)
    # Kolmogorov-Smirnov against the same law; 20 000 draws, alpha 1e-3.
    assert (
        stats.kstest(np.asarray(draws[:, 0]), stats.t(3.0, 1.0, 3.0).cdf).pvalue > 1e-3
    )


def test_mixture_density_integrates_to_one_and_matches_draws(key):
    # Latent N(0, 1) under a defensive layer (weight 0.3, Cauchy): the chain's
    # density is 0.7 N(0, 1) + 0.3 Cauchy; the draws follow it.
    layer = DefensiveLayer(0.3, 1.0)
    chain = JKOChain(
        lambda x: -0.5 * x @ x, CNFSpec(1, 8), jnp.zeros(1), jnp.array(1.0), (layer,)
    )

    def density(t):
        return float(jnp.exp(log_prob(chain, jnp.array([[t]]))[0]))

    total, _ = integrate.quad(density, -np.inf, np.inf, limit=200)
    assert abs(total - 1.0) < 1e-4
    x, energy, _ = draw(key, chain, 20000)
    mix = 0.7 * stats.norm.pdf(x[:, 0]) + 0.3 * stats.cauchy.pdf(x[:, 0])
    np.testing.assert_allclose(-energy, np.log(mix), rtol=1e-4, atol=1e-5)
    cdf = lambda t: 0.7 * stats.norm.cdf(t) + 0.3 * stats.cauchy.cdf(t)  # noqa: E731
    assert stats.kstest(x[:, 0], cdf).pvalue > 1e-3
    # Under a rejection layer, the density of the draws still agrees with log_prob.
    chain = chain._replace(layers=(layer, RejectionLayer(0.0, 0.3)))
    x, energy, _ = draw(key, chain, 4096)
    np.testing.assert_allclose(log_prob(chain, x), -energy, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "position, kinds",
    [("latent", ("D", "C", "R", "R", "R")), ("above_cnfs", ("C", "D", "R", "R", "R"))],
)
def test_fit_places_it_under_the_rejection_layers_and_keeps_every_contract(
    key, position, kinds
):
    config = jko.JKOConfig(
        defensive_position=position,
        num_particles=2048,
        num_cnf=1,
        num_blocks=1,
        num_iterations=50,
        batch_size=256,
        min_cnf_gain=-np.inf,
        min_elbo_gain=0.0,
        defensive_weight=0.2,
    )

    def logdensity_fn(x):
        return -0.5 * jnp.sum((x - 1.0) ** 2) / 0.25

    chain, info = jko.fit(key, logdensity_fn, 2, config, progress_bar=False)
    assert info.layer_kinds == kinds
    assert tuple(chain_lib.layer_kind(layer) for layer in chain.layers) == kinds
    x, energy, log_g = draw(jax.random.key(1), chain, 5000)
    # Exact log densities at the draws (above the CNFs the proposal's come
    # through a pull-back; in the latent, through the CNFs' log-determinants).
    np.testing.assert_allclose(log_prob(chain, x[:512]), -energy[:512], atol=1e-4)
    # Same key, same draws; save and load, same draws and densities.
    again = draw(jax.random.key(1), chain, 5000)
    loaded = chain_lib.chain_from_dict(chain_lib.chain_to_dict(chain), logdensity_fn)
    reloaded = draw(jax.random.key(1), loaded, 5000)
    for a, b, c in zip((x, energy, log_g), again, reloaded, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    # log Z = log(2 pi 0.25).  Budget: 5 se, the IS error of the draws together
    # with the error the fitted rates put on every density (log_z_se_rbar).
    log_w = np.asarray(log_g + energy, np.float64)
    w = np.exp(log_w - log_w.max())
    log_z = np.log(w.mean()) + log_w.max()
    se = np.hypot(w.std() / w.mean() / np.sqrt(len(w)), info.log_z_se_rbar)
    assert abs(log_z - np.log(2 * np.pi * 0.25)) < 5 * se


@pytest.mark.parametrize(
    "bad",
    [
        {"defensive_weight": 1.0},
        {"defensive_df": 0.0},
        {"defensive_scale": -1.0},
        {"defensive_position": "top"},
    ],
)
def test_bad_defensive_settings_fail_before_training(bad):
    with pytest.raises(ValueError, match="defensive"):
        jko.fit(jax.random.key(0), lambda x: -x @ x, 2, jko.JKOConfig(**bad))
