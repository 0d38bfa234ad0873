"""The exoplanet RV example and its benchmarks' building blocks.

Fast tests check the pieces the evidence table rests on (the whitened model keeps
the evidence, the nested-sampling model and the brute-force reference have the
example model's likelihood, a 0-planet fit matches quadrature); the slow test runs
``examples/exoplanet_rv.py --quick`` end to end.
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density
from scipy import stats

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import exoplanet_rv as ex  # noqa: E402
import joker_reference as jr  # noqa: E402
import rv_nested_sampling as rns  # noqa: E402


def _base(name, num_planets):
    data = ex.load_rv_dataset(name)
    return data, ex.build_model(data, ex.PROBLEMS[name], num_planets)


def _physical_values(model, P, e, omega, lam, K, log_jitter):
    """Site values of a Keplerian model at given physical parameters (1 planet)."""
    lo, hi = np.log(model.period_bounds)
    u = (np.log(P) - lo) / (hi - lo)
    r = np.sqrt(-2.0 * np.log1p(-e / 0.99))
    return {
        "log_P_spacings": jnp.array([u, 1.0 - u]),
        "ecc_vec": jnp.array([[r * np.cos(omega), r * np.sin(omega)]]),
        "phase_vec": jnp.array([[np.cos(lam), np.sin(lam)]]),
        "log_K": jnp.array([np.log(K)]),
        "log_jitter": jnp.array([log_jitter]),
    }


def _site_log_prob(model, values, name):
    tr = handlers.trace(handlers.substitute(model, data=values)).get_trace()
    site = tr[name]
    return float(site["fn"].log_prob(site["value"]))


def _obs_marginal(model, values):
    return _site_log_prob(model, values, "obs_marginal")


def _nested_values(model, P, e, omega, lam, K, log_jitter=None):
    """Site values of the nested-sampling model (1 planet); no jitter: integrated out."""
    lo, hi = np.log(model.period_bounds)
    values = {
        "u_log_P": jnp.array([(np.log(P) - lo) / (hi - lo)]),
        "e": jnp.array([e]),
        "omega": jnp.array([omega]),
        "lam": jnp.array([lam]),
        "log_K": jnp.array([np.log(K)]),
    }
    if log_jitter is not None:
        values["log_jitter"] = jnp.array([log_jitter])
    return values


def _nested_loglik(ns_model, values):
    return _site_log_prob(ns_model, values, "loglik")


def test_time_grid_step_finds_bl2009_grid():
    assert ex.time_grid_step(ex.load_rv_dataset("bl2009_1").t) == pytest.approx(
        6.86274, abs=1e-4
    )
    assert ex.time_grid_step(ex.load_rv_dataset("51peg").t) is None


def test_periodogram_finds_51peg():
    data = ex.load_rv_dataset("51peg")
    periods, chi2 = ex.periodogram(data, (1.0, 1e4))
    assert ex._peaks(periods, chi2, 1)[0] == pytest.approx(4.2308, rel=2e-3)


@pytest.mark.slow  # 20-45 s on one core: keeps the default suite under 10 min
def test_whitened_model_keeps_the_log_joint():
    data, model = _base("bl2009_1", 1)
    target = ex.model_target(model)
    rng = np.random.default_rng(0)
    mean = rng.normal(size=target.dim)
    a = rng.normal(size=(target.dim, target.dim))
    cov = a @ a.T / target.dim + 0.1 * np.eye(target.dim)
    wmodel = ex.whitened_model(target, mean, cov)
    z = jnp.asarray(rng.normal(size=target.dim), jnp.float32)
    lw, _ = log_density(wmodel, (), {}, {"z": z})
    x = jnp.asarray(mean, jnp.float32) + jnp.asarray(np.linalg.cholesky(cov)) @ z
    expected = target.logdensity_fn(x) + np.sum(
        np.log(np.diag(np.linalg.cholesky(cov)))
    )
    assert float(lw) == pytest.approx(float(expected), abs=1e-3)


def test_reference_and_nested_model_likelihoods_match_the_model():
    data, model = _base("joker_sparse4", 1)
    P, e, omega, lam, K, log_jit = 42.0, 0.4, 0.7, -1.2, 1.5, -0.5
    values = _physical_values(model, P, e, omega, lam, K, log_jit)
    expected = _obs_marginal(model, values)
    # brute-force reference: own float64 Kepler solver and offset marginal
    draws = {
        "log_P": np.array([np.log(P)]),
        "e": np.array([e]),
        "omega": np.array([omega]),
        "M0": np.array([lam - omega]),
        "log_K": np.array([np.log(K)]),
        "log_jitter": np.array([log_jit]),
    }
    ref = jr.log_marginal_likelihood(draws, data, model)[0]
    assert ref == pytest.approx(expected, abs=1e-3)
    # nested-sampling model: inverse-CDF sites, same likelihood
    ns_values = _nested_values(model, P, e, omega, lam, K, log_jit)
    got = _nested_loglik(rns.nested_model_for(model), ns_values)
    assert got == pytest.approx(expected, abs=1e-3)


def test_nested_model_jitter_quadrature_matches_a_fine_grid():
    # BL2009 data set 1 at its best orbit: the likelihood is flat below the quoted
    # errors and falls steeply above them, the shape the quadrature must handle.
    data, model = _base("bl2009_1", 1)
    orbit = (704.4, 0.382, -1.615, -1.137, 60.39)
    grid = np.linspace(-10.0, 5.0, 301)  # prior sd 2 around 0.72; L ~ 0 above 5
    lls = np.array(
        [_obs_marginal(model, _physical_values(model, *orbit, j)) for j in grid]
    )
    log_prior = stats.norm(model.jitter_log_loc[0], model.jitter_log_scale).logpdf(grid)
    expected = np.log(np.trapezoid(np.exp(lls + log_prior - lls.max()), grid))
    expected += lls.max()
    ns_values = _nested_values(model, *orbit)
    # Measured: 24 nodes -2.5e-2, 48 nodes -2.9e-3, 96 nodes +1e-4 (float32).
    for nodes, tol in ((48, 5e-3), (96, 1e-3)):
        ns_model = rns.nested_model_for(model, jitter_nodes=nodes)
        got = _nested_loglik(ns_model, ns_values)
        assert got == pytest.approx(expected, abs=tol), nodes


def test_is_reference_likelihood_and_aliases():
    # The evidence reference's float64 likelihood (planets as (f, log K, h, k,
    # lambda)) is the model's, for 2 planets in either order; its proposal's
    # alias copies of an orbit fit the 6.86 d grid's data as well as the orbit.
    data, model = _base("bl2009_1", 2)
    y = np.array([[1 / 704.0, 4.1, -0.03, -0.6, -1.1], [1 / 37.0, 1.0, 0.3, 0.2, 2.0]])
    log_jit = -1.0
    expected = []
    for p in ([0, 1], [1, 0]):
        yy = y[p]
        yy = yy[np.argsort(1 / yy[:, 0])]  # model: increasing period
        lo, hi = np.log(model.period_bounds)
        u = (np.log(1 / yy[:, 0]) - lo) / (hi - lo)
        e = yy[:, 2] ** 2 + yy[:, 3] ** 2
        om = np.arctan2(yy[:, 3], yy[:, 2])
        r = np.sqrt(-2.0 * np.log1p(-e / 0.99))
        values = {
            "log_P_spacings": jnp.array([u[0], u[1] - u[0], 1.0 - u[1]]),
            "ecc_vec": jnp.array(np.stack([r * np.cos(om), r * np.sin(om)], -1)),
            "phase_vec": jnp.array(np.stack([np.cos(yy[:, 4]), np.sin(yy[:, 4])], -1)),
            "log_K": jnp.array(yy[:, 1]),
            "log_jitter": jnp.array([log_jit]),
        }
        expected.append(_obs_marginal(model, values))
    got = rns.log_marginal_likelihood(
        np.stack([y, y[::-1]]), np.full(2, log_jit), data, model
    )
    np.testing.assert_allclose(got, expected, atol=2e-3)
    base1 = ex.build_model(data, ex.PROBLEMS["bl2009_1"], 1)
    # near the MAP (a poor fit magnifies the grid's 1e-3 imperfection)
    mean = np.array([1.42122e-3, 4.10104, -0.028223, -0.61662, -1.13627, -1.05726])
    step = ex.time_grid_step(data.t)
    prop = rns.ModeProposal(mean, np.eye(6) * 1e-6, data, base1, step)
    assert len(prop.means) > 6
    assert np.all(prop.means[:, 0] > 0)
    ll = rns.log_marginal_likelihood(
        prop.means[:, None, :5], prop.means[:, 5], data, base1
    )
    assert np.ptp(ll) < 0.05  # the grid is exact to 1e-3 of a step
    # mixture weights: prior mass of each copy, proportional to the period
    np.testing.assert_allclose(
        np.exp(prop.log_pi), (1 / prop.means[:, 0]) / np.sum(1 / prop.means[:, 0])
    )


def test_kepler_newton_reference_solver():
    M = np.linspace(-7.0, 7.0, 301)
    for e in (0.0, 0.5, 0.9, 0.99):
        E = jr.kepler_newton(M, np.full_like(M, e))
        assert np.max(np.abs(E - e * np.sin(E) - np.mod(M, 2 * np.pi))) < 1e-10


@pytest.mark.slow  # 20-45 s on one core: keeps the default suite under 10 min
def test_zero_planet_fit_matches_quadrature():
    # 0 planets, offset marginalized: log Z is a 1-d integral over log jitter.
    data, model = _base("bl2009_1", 0)
    grid = np.linspace(-12.0, 8.0, 20001)
    lp = jax.vmap(lambda v: log_density(model, (), {}, {"log_jitter": v[None]})[0])(
        jnp.asarray(grid, jnp.float32)
    )
    lp = np.asarray(lp, np.float64)
    m = lp.max()
    log_z = m + np.log(np.trapezoid(np.exp(lp - m), grid))
    f = ex.fit(ex.PROBLEMS["bl2009_1"], data, 0, jax.random.key(0), quick=True)
    assert abs(f.log_Z - log_z) < 4 * f.log_Z_se + 0.01


@pytest.mark.slow
def test_quick_mode_runs(tmp_path):
    ex.main(["--quick", "--outdir", str(tmp_path)])
    text = (tmp_path / "rv_evidence.md").read_text()
    assert "BL2009 data set 1" in text and "picks 1 planet" in text
    for kind in ("log_period", "orbits", "pairs"):
        assert (tmp_path / f"bl2009_1_{kind}.png").stat().st_size > 10_000


class _FakeSampler:
    """Stands in for a trained JKOSampler: fixed draws around two orbits."""

    def __init__(self, n_inst, spread):
        self.n_inst, self.spread = n_inst, spread

    def get_weighted_samples(self, rng_key, num):
        rng = np.random.default_rng(0)
        P = np.array([6.4, 720.0]) * np.exp(self.spread * rng.normal(size=(num, 2)))
        samples = {
            "P": P,
            "K": np.full((num, 2), 10.0),
            "e": np.full((num, 2), 0.2),
            "omega": np.full((num, 2), 0.5),
            "phase": rng.uniform(-np.pi, np.pi, (num, 2)),
            "offset_cond_mean": np.zeros((num, self.n_inst)),
            "jitter": np.ones((num, self.n_inst)),
            "log_joint_density": rng.normal(size=num),
        }
        return samples, jnp.zeros(num)


@pytest.mark.parametrize(("name", "spread"), [("bl2009_2", 1e-3), ("hd164922", 0.5)])
def test_plots_two_planets(tmp_path, name, spread):
    data, model = _base(name, 2)
    fake = ex.Fit(
        ex.PROBLEMS[name], data, 2, model, _FakeSampler(model.num_instruments, spread),
        0.0, 0.1, 1.0, 1, 0.0, 0.0, 1.0, (), "laplace",
    )  # fmt: skip
    ex.plot_log_period([fake], jax.random.key(0), tmp_path / "p.png")
    ex.plot_orbits(fake, jax.random.key(0), tmp_path / "o.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
    assert (tmp_path / "o.png").stat().st_size > 10_000


def test_polish_map_reaches_the_optimum_of_an_ill_conditioned_target():
    # Widths spanning 5 decades, like 51 Peg's period vs its jitter.
    scales = jnp.array([1e-5, 1e-3, 0.1, 1.0])
    centre = jnp.array([0.3, -0.2, 0.5, 1.0])

    class Target:
        @staticmethod
        def logdensity_fn(x):
            return -0.5 * jnp.sum(((x - centre) / scales) ** 2)

    x0 = np.asarray(centre) + np.array([2e-5, 0.0, 0.3, -2.0])
    lp0 = float(Target.logdensity_fn(jnp.asarray(x0, jnp.float32)))
    x, lp = ex.polish_map(Target, x0, lp0)
    assert lp0 < -4.0
    assert lp > -0.01
    # within a hundredth of a width in every direction
    assert np.all(np.abs(x - np.asarray(centre)) < 0.01 * np.asarray(scales))
