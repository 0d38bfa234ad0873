"""Tests of the radial-velocity model: Kepler solver, model density, loaders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer import MCMC, NUTS, Predictive
from numpyro.infer.util import initialize_model, log_density
from scipy import optimize, stats

from numpyro_jko.models import (
    RV_DATASETS,
    kepler_solve,
    keplerian_model,
    load_rv_dataset,
    rv_curve,
    true_anomaly,
)

# ---------------------------------------------------------------------------
# Kepler solver
# ---------------------------------------------------------------------------


def _grid():
    e = np.concatenate([np.linspace(0.0, 0.989, 100), [0.98999999]])
    M = np.concatenate([np.linspace(-10.0, 10.0, 1001), [1e-12, -1e-8, np.pi]])
    return np.meshgrid(M, e)


def test_kepler_residual_x64():
    Mg, eg = _grid()
    with jax.enable_x64(True):
        E = np.asarray(kepler_solve(Mg, eg))
    assert E.dtype == np.float64
    residual = np.abs(E - eg * np.sin(E) - Mg)
    assert residual.max() <= 1e-10


def test_kepler_residual_float32():
    Mg, eg = _grid()
    E = kepler_solve(jnp.asarray(Mg, jnp.float32), jnp.asarray(eg, jnp.float32))
    assert E.dtype == jnp.float32
    E = np.asarray(E, np.float64)
    # float32 round-off of M itself (|M| <= 10) is ~5e-7.
    assert np.abs(E - eg * np.sin(E) - Mg).max() < 1e-5


def test_kepler_broadcasting_and_periodicity():
    M = jnp.linspace(-3.0, 3.0, 7)
    e = jnp.array([[0.1], [0.5], [0.9]])
    E = kepler_solve(M, e)
    assert E.shape == (3, 7)
    E_shift = kepler_solve(M + 4 * jnp.pi, e)
    np.testing.assert_allclose(E_shift - E, 4 * np.pi, atol=1e-5)
    # Integer input is promoted to the default float type.
    assert kepler_solve(1, 0).dtype == jnp.zeros(()).dtype
    assert float(kepler_solve(0.0, 0.7)) == 0.0


def test_kepler_gradients_match_finite_differences_x64():
    rng = np.random.default_rng(0)
    M = rng.uniform(-10.0, 10.0, 200)
    e = rng.uniform(0.0, 0.98, 200)
    h = 1e-6
    with jax.enable_x64(True):
        f = lambda m, ecc: kepler_solve(m, ecc)
        dM, de = jax.vmap(jax.grad(f, argnums=(0, 1)))(M, e)
        fd_M = (f(M + h, e) - f(M - h, e)) / (2 * h)
        fd_e = (f(M, e + h) - f(M, e - h)) / (2 * h)
        err_M = np.max(np.abs(np.asarray(dM - fd_M)) / (1 + np.abs(np.asarray(fd_M))))
        err_e = np.max(np.abs(np.asarray(de - fd_e)) / (1 + np.abs(np.asarray(fd_e))))
        # Second derivative (the JVP rule is itself differentiable).
        d2 = jax.vmap(jax.grad(jax.grad(f)))(M, e)
        fd2 = (jax.vmap(jax.grad(f))(M + h, e) - jax.vmap(jax.grad(f))(M - h, e)) / (
            2 * h
        )
        err_2 = np.max(np.abs(np.asarray(d2 - fd2)) / (1 + np.abs(np.asarray(fd2))))
    assert err_M < 1e-6
    assert err_e < 1e-6
    assert err_2 < 1e-5


def test_kepler_jit_vmap_jvp():
    # Off-centre grid: on a symmetric one the summed dE/de cancels to ~0.
    M = jnp.linspace(-5.0, 5.0, 11) + 0.3
    e = jnp.full_like(M, 0.6)
    E = kepler_solve(M, e)
    expected_dM = 1.0 / (1.0 - e * jnp.cos(E))
    expected_de = jnp.sin(E) / (1.0 - e * jnp.cos(E))

    g = jax.jit(jax.vmap(jax.grad(kepler_solve, argnums=(0, 1))))(M, e)
    np.testing.assert_allclose(g[0], expected_dM, rtol=1e-5)
    np.testing.assert_allclose(g[1], expected_de, rtol=1e-5, atol=1e-6)

    _, tangent = jax.jit(lambda m, ecc: jax.jvp(kepler_solve, (m, ecc), (m, ecc)))(M, e)
    np.testing.assert_allclose(tangent, M * expected_dM + e * expected_de, rtol=1e-5)

    # Gradient with respect to a scalar eccentricity broadcast against M.
    g_scalar = jax.jit(jax.grad(lambda ecc: jnp.sum(kepler_solve(M, ecc))))(0.6)
    np.testing.assert_allclose(g_scalar, jnp.sum(expected_de), rtol=1e-5)


def test_true_anomaly_and_rv_curve():
    with jax.enable_x64(True):
        E = np.linspace(-3.0, 3.0, 13)
        e = 0.7
        f = np.asarray(true_anomaly(E, e))
        # Classical relations: cos f = (cos E - e)/(1 - e cos E), same for sin.
        den = 1 - e * np.cos(E)
        np.testing.assert_allclose(np.cos(f), (np.cos(E) - e) / den, atol=1e-12)
        np.testing.assert_allclose(
            np.sin(f), np.sqrt(1 - e**2) * np.sin(E) / den, atol=1e-12
        )
        # A circular orbit is a sinusoid; at periastron v = K (1 + e) cos(omega).
        t = np.linspace(0.0, 20.0, 9)
        v = rv_curve(t, 10.0, 3.0, 0.0, 0.4, 0.2, t_ref=5.0)
        np.testing.assert_allclose(
            v, 3.0 * np.cos(2 * np.pi * (t - 5.0) / 10.0 + 0.2 + 0.4), atol=1e-12
        )
        v_peri = rv_curve(0.0, 7.0, 2.0, 0.5, 1.0, 0.0)
        np.testing.assert_allclose(v_peri, 2.0 * 1.5 * np.cos(1.0), atol=1e-12)


# ---------------------------------------------------------------------------
# Model density against an independent NumPy/SciPy implementation
# ---------------------------------------------------------------------------


def _fake_data(n=30, seed=1):
    rng = np.random.default_rng(seed)
    t = 2450000.0 + np.sort(rng.uniform(0.0, 900.0, n))
    rv_err = rng.uniform(1.0, 3.0, n)
    inst = np.where(np.arange(n) % 3 == 0, "apf", "hires")
    rv = rng.normal(0.0, 10.0, n) + np.where(inst == "apf", 5.0, -2.0)
    return t, rv, rv_err, inst


def _params(num_planets, n_inst, rng):
    p = {
        "log_jitter": rng.normal(0.0, 1.0, n_inst),
        "offset": rng.normal(0.0, 3.0, n_inst),
    }
    if num_planets:
        p["log_P_spacings"] = rng.dirichlet(np.ones(num_planets + 1))
        p["ecc_vec"] = rng.normal(0.0, 0.8, (num_planets, 2))
        p["phase_vec"] = rng.normal(0.0, 1.0, (num_planets, 2))
        p["log_K"] = rng.uniform(0.0, 3.0, num_planets)
    return p


def _hand_log_density(t, rv, rv_err, inst, p, num_planets, marginal, trend_sd=()):
    """Independent implementation of the documented model (NumPy/SciPy).

    ``trend_sd``: prior sds of the drift coefficients (``p["trend"]``), one
    per power of ``t - mean(t)``; none by default.
    """
    names, codes = np.unique(inst, return_inverse=True)
    ptp = np.ptp(rv)
    t_ref = 0.5 * (t.min() + t.max())
    k_lo, k_hi = ptp / 1000.0, 10.0 * ptp
    lp = 0.0
    signal = np.zeros_like(t)
    if num_planets:
        w = p["log_P_spacings"]
        lp += stats.dirichlet.logpdf(w, np.ones(num_planets + 1))
        log_P = np.log(1.0) + np.log(1e4) * np.cumsum(w[:-1])
        lp += stats.norm.logpdf(p["ecc_vec"]).sum()
        r2 = (p["phase_vec"] ** 2).sum(-1)
        lp += (stats.gamma.logpdf(r2, a=8.0, scale=1 / 8.0) - np.log(np.pi)).sum()
        lp += stats.uniform.logpdf(
            p["log_K"], np.log(k_lo), np.log(k_hi) - np.log(k_lo)
        ).sum()
        for j in range(num_planets):
            a, b = p["ecc_vec"][j]
            e = 0.99 * (1 - np.exp(-(a * a + b * b) / 2))
            omega = np.arctan2(b, a)
            lam = np.arctan2(p["phase_vec"][j, 1], p["phase_vec"][j, 0])
            P, K = np.exp(log_P[j]), np.exp(p["log_K"][j])
            M = 2 * np.pi * (t - t_ref) / P + lam - omega
            E = np.array(
                [
                    optimize.brentq(lambda x, m=m: x - e * np.sin(x) - m, m - 1, m + 1)
                    for m in M
                ]
            )
            f = np.arctan2(np.sqrt(1 - e * e) * np.sin(E), np.cos(E) - e)
            signal += K * (np.cos(f + omega) + e * np.cos(omega))
    jit_loc = np.log([np.median(rv_err[codes == i]) for i in range(len(names))])
    lp += stats.norm.logpdf(p["log_jitter"], jit_loc, 2.0).sum()
    sd = np.sqrt(rv_err**2 + np.exp(p["log_jitter"])[codes] ** 2)
    means = np.array([rv[codes == i].mean() for i in range(len(names))])
    powers = np.arange(1, len(trend_sd) + 1)
    cols = (t - t.mean())[:, None] ** powers[None, :]
    if not marginal:
        lp += stats.norm.logpdf(p["offset"], means, ptp).sum()
        if len(trend_sd):
            lp += stats.norm.logpdf(p["trend"], 0.0, trend_sd).sum()
            signal = signal + cols @ p["trend"]
        lp += stats.norm.logpdf(rv, p["offset"][codes] + signal, sd).sum()
        return lp
    if len(trend_sd):
        # Offsets and drift coefficients integrated out together: all the data
        # are one Gaussian, covariance diag(sd^2) + X diag(prior var) X^T.
        onehot = (codes[:, None] == np.arange(len(names))).astype(float)
        X = np.concatenate([onehot, cols], 1)
        S = np.concatenate([np.full(len(names), ptp), trend_sd])
        cov = np.diag(sd**2) + (X * S**2) @ X.T
        return lp + stats.multivariate_normal.logpdf(rv, means[codes] + signal, cov)
    # Offsets integrated out: per instrument the data are jointly Gaussian with
    # covariance diag(sd^2) + ptp^2 * 11^T.
    for i in range(len(names)):
        sel = codes == i
        cov = np.diag(sd[sel] ** 2) + ptp**2
        lp += stats.multivariate_normal.logpdf(rv[sel], means[i] + signal[sel], cov)
    return lp


@pytest.mark.parametrize(
    ("num_planets", "marginal"), [(0, False), (1, False), (2, False), (2, True)]
)
def test_log_density_matches_hand_computation(num_planets, marginal):
    t, rv, rv_err, inst = _fake_data()
    rng = np.random.default_rng(num_planets)
    p = _params(num_planets, 2, rng)
    expected = _hand_log_density(t, rv, rv_err, inst, p, num_planets, marginal)
    with jax.enable_x64(True):
        model = keplerian_model(
            t, rv, rv_err, num_planets, inst, marginalize_offsets=marginal
        )
        if marginal:
            p = {k: v for k, v in p.items() if k != "offset"}
        got, _ = log_density(model, (), {}, p)
        got = float(got)
    assert model.instrument_names == ("apf", "hires")
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize(
    ("num_planets", "marginal", "degree"),
    [(0, False, 1), (1, False, 2), (1, True, 1), (2, True, 2)],
)
def test_log_density_with_trend_matches_hand_computation(num_planets, marginal, degree):
    t, rv, rv_err, inst = _fake_data()
    rv = rv + 0.02 * (t - t.mean())  # a drift of 18 m/s over the span
    rng = np.random.default_rng(10 + num_planets)
    p = _params(num_planets, 2, rng)
    p["trend"] = rng.normal(0.0, [0.02, 1e-5][:degree])
    # default prior scales: ptp / (half span)**k
    scales = np.ptp(rv) / (0.5 * np.ptp(t)) ** np.arange(1, degree + 1)
    expected = _hand_log_density(t, rv, rv_err, inst, p, num_planets, marginal, scales)
    with jax.enable_x64(True):
        model = keplerian_model(
            t, rv, rv_err, num_planets, inst, marginalize_offsets=marginal, trend=degree
        )
        if marginal:
            p = {k: v for k, v in p.items() if k not in ("offset", "trend")}
        got, _ = log_density(model, (), {}, p)
        got = float(got)
    np.testing.assert_allclose(model.trend_scale, scales)
    assert model.trend_t_ref == pytest.approx(t.mean())
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-8)


def test_marginal_trend_float32_and_conditional_mean():
    # A pure linear drift, fitted with the drift integrated out: float32 agrees
    # with float64, and the conditional mean recovers the slope.
    t, _, rv_err, _ = _fake_data(60, seed=4)
    rng = np.random.default_rng(5)
    rv = 3.0 + 0.05 * (t - t.mean()) + rng.normal(0.0, 1.0, t.shape) * rv_err
    values = {"log_jitter": np.array([-3.0])}
    model = keplerian_model(t, rv, rv_err, 0, trend=1, marginalize_offsets=True)
    lp32, _ = log_density(model, (), {}, values)
    tr = handlers_trace(model, values)
    with jax.enable_x64(True):
        lp64, _ = log_density(
            keplerian_model(t, rv, rv_err, 0, trend=1, marginalize_offsets=True),
            (), {}, values,
        )  # fmt: skip
    assert float(lp32) == pytest.approx(float(lp64), abs=2e-3)
    slope, slope_sd = tr["trend_cond_mean"][0], tr["trend_cond_sd"][0]
    assert abs(slope - 0.05) < 4 * slope_sd
    assert slope_sd < 0.01


def test_amplitude_order_same_density_up_to_its_jacobian():
    # Same physical parameters, two labellings: the log densities differ by the
    # Jacobian log(log K_max - log K_lo) of (log_K_max, log_K_fracs) -> log K,
    # the priors of the physical parameters being the same (see the docstring).
    t, rv, rv_err, inst = _fake_data()
    rng = np.random.default_rng(3)
    p = _params(2, 2, rng)
    p["log_K"] = np.array([2.5, 1.0])  # planet 1 (shorter period) is stronger
    with jax.enable_x64(True):
        by_p = keplerian_model(t, rv, rv_err, 2, inst, marginalize_offsets=True)
        by_k = keplerian_model(
            t, rv, rv_err, 2, inst, marginalize_offsets=True, order="amplitude"
        )
        q = {k: v for k, v in p.items() if k != "offset"}
        lp_p, _ = log_density(by_p, (), {}, q)
        lo_p, hi_p = np.log(by_p.period_bounds)
        log_P = lo_p + (hi_p - lo_p) * np.cumsum(p["log_P_spacings"][:-1])
        lo = np.log(by_k.K_bounds[0])
        r = {
            "log_P_frac": (log_P - lo_p) / (hi_p - lo_p),
            "log_K_max": np.float64(2.5),
            "log_K_fracs": np.array([(1.0 - lo) / (2.5 - lo)]),
            "ecc_vec": p["ecc_vec"],
            "phase_vec": p["phase_vec"],
            "log_jitter": p["log_jitter"],
        }
        lp_k, _ = log_density(by_k, (), {}, r)
    assert float(lp_k) - float(lp_p) == pytest.approx(np.log(2.5 - lo), abs=1e-9)


def test_amplitude_order_prior():
    d = load_rv_dataset("bl2009_1")
    model = keplerian_model(d.t, d.rv, d.rv_err, 3, order="amplitude")
    draws = Predictive(model, num_samples=2000)(jax.random.PRNGKey(4), rv=None)
    K, P = np.asarray(draws["K"]), np.asarray(draws["P"])
    assert np.all(np.diff(K, axis=-1) < 0)
    # (Predictive draws the sites from their own distributions and does not
    # apply the "amplitude_order" factor, so their log K are not the prior's;
    # the density test above checks the prior.)
    lo, hi = np.log(model.period_bounds)
    u = (np.log(P).ravel() - lo) / (hi - lo)
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def handlers_trace(model, values):
    tr = handlers.trace(handlers.substitute(model, data=values)).get_trace()
    return {k: np.asarray(v["value"]) for k, v in tr.items()}


@pytest.mark.parametrize(
    ("num_planets", "marginal"), [(0, False), (1, False), (2, False), (2, True)]
)
def test_initialize_model(num_planets, marginal):
    d = load_rv_dataset("hd164922")
    model = keplerian_model(
        d.t, d.rv, d.rv_err, num_planets, d.instrument, marginalize_offsets=marginal
    )
    param_info, _, postprocess_fn, _ = initialize_model(jax.random.PRNGKey(0), model)
    z = param_info.z
    assert np.isfinite(float(param_info.potential_energy))
    grads = jax.tree_util.tree_leaves(param_info.z_grad)
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert z["log_jitter"].shape == (3,)
    values = postprocess_fn(z)
    if marginal:
        assert "offset" not in z and values["offset_cond_mean"].shape == (3,)
    if num_planets:
        assert values["P"].shape == (num_planets,)
        assert np.all(np.diff(np.asarray(values["P"])) > 0)
        for name in ("e", "omega", "K", "phase"):
            assert values[name].shape == (num_planets,)
    else:
        assert "P" not in values


def test_prior_predictive_ordered_periods_and_ranges():
    d = load_rv_dataset("bl2009_2")
    model = keplerian_model(d.t, d.rv, d.rv_err, 3, period_bounds=(2.0, 500.0))
    draws = Predictive(model, num_samples=400)(jax.random.PRNGKey(3), rv=None)
    P = np.asarray(draws["P"])
    assert np.all(np.diff(P, axis=-1) > 0)
    assert P.min() > 2.0 and P.max() < 500.0
    e = np.asarray(draws["e"])
    assert e.min() >= 0.0 and e.max() < 0.99
    # e ~ Uniform(0, 0.99) and phase ~ Uniform(-pi, pi) a priori.
    assert stats.kstest(e.ravel(), stats.uniform(0, 0.99).cdf).pvalue > 1e-3
    phase = np.asarray(draws["phase"]).ravel()
    assert stats.kstest(phase, stats.uniform(-np.pi, 2 * np.pi).cdf).pvalue > 1e-3
    assert draws["obs"].shape == (400, d.t.shape[0])


def test_model_argument_validation():
    t, rv, rv_err, _ = _fake_data(5)
    with pytest.raises(ValueError, match="num_planets"):
        keplerian_model(t, rv, rv_err, -1)
    with pytest.raises(ValueError, match="rv_err"):
        keplerian_model(t, rv, -rv_err, 1)
    with pytest.raises(ValueError, match="length"):
        keplerian_model(t, rv[:-1], rv_err, 1)
    with pytest.raises(ValueError, match="period_bounds"):
        keplerian_model(t, rv, rv_err, 1, period_bounds=(10.0, 1.0))
    model = keplerian_model(t, rv, rv_err, 1, marginalize_offsets=True)
    with pytest.raises(ValueError, match="marginalize_offsets"):
        Predictive(model, num_samples=2)(jax.random.PRNGKey(0), rv=None)


@pytest.mark.slow  # 20-45 s on one core: keeps the default suite under 10 min
def test_short_nuts_run_bl2009_1():
    d = load_rv_dataset("bl2009_1")
    model = keplerian_model(d.t, d.rv, d.rv_err, 1)
    # A capped tree depth keeps the (compile-dominated) run short.
    kernel = NUTS(model, max_tree_depth=6)
    mcmc = MCMC(kernel, num_warmup=50, num_samples=50, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    samples = mcmc.get_samples()
    for value in samples.values():
        assert np.all(np.isfinite(np.asarray(value)))
    assert samples["P"].shape == (50, 1)


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", RV_DATASETS)
def test_load_rv_dataset(name):
    d = load_rv_dataset(name)
    n = d.t.shape[0]
    assert n >= 4 and d.rv.shape == (n,) and d.rv_err.shape == (n,)
    assert np.all(np.isfinite(d.t)) and np.all(d.rv_err > 0)
    assert set(d.units) == {"t", "rv"} and d.citation
    if name == "hd164922":
        assert set(d.instrument.tolist()) == {"a", "j", "k"}
    else:
        assert d.instrument is None
    expected_rows = {
        "51peg": 256,
        "bl2009_1": 34,
        "bl2009_2": 34,
        "k2-24": 32,
        "hd164922": 401,
        "joker_sparse4": 4,
    }
    assert n == expected_rows[name]


def test_load_rv_dataset_errors(tmp_path):
    with pytest.raises(KeyError, match="unknown"):
        load_rv_dataset("no-such-star")
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_rv_dataset("51peg", data_dir=tmp_path)
