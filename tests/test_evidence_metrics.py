import jax
import jax.numpy as jnp
import numpy as np

from numpyro_jko import evidence, metrics


def test_log_evidence_known_answer(key):
    # q = N(0, 1), g = 5 N(0.3, 1.1^2): Z = 5. The error must sit within 4 se.
    x = jax.random.normal(key, (50000,))
    log_q = jax.scipy.stats.norm.logpdf(x)
    log_g = np.log(5.0) + jax.scipy.stats.norm.logpdf(x, 0.3, 1.1)
    est = evidence.log_evidence(log_g, log_q)
    assert abs(est.log_Z - np.log(5.0)) < 4 * est.log_Z_se
    assert est.elbo < est.log_Z  # ELBO is below log Z (Jensen)
    assert 0 < est.ess <= 50000 and est.pareto_k < 0.5


def test_heavy_weights_give_large_pareto_k(key):
    # Proposal much narrower than target: infinite-variance weights, k-hat > 0.7.
    x = 0.3 * jax.random.normal(key, (20000,))
    log_q = jax.scipy.stats.norm.logpdf(x, 0.0, 0.3)
    log_g = jax.scipy.stats.norm.logpdf(x, 0.0, 3.0)
    assert evidence.log_evidence(log_g, log_q).pareto_k > 0.7


def test_capped_weights_have_no_pareto_k():
    # Rejection layers cap the weights: a tail of ties makes the GPD fit degenerate
    # (ArviZ: inf), so k-hat is reported undefined; uncapped weights keep theirs.
    log_w = 0.1 * np.random.default_rng(1).normal(size=50000)
    assert np.isnan(evidence.pareto_k(np.minimum(log_w, np.quantile(log_w, 0.9))))
    assert evidence.pareto_k(log_w) < 0.5


def test_minus_inf_target_has_zero_weight():
    est = evidence.log_evidence(np.array([0.0, -np.inf, 0.0, 0.0]), np.zeros(4))
    assert np.isclose(est.log_Z, np.log(0.75)) and est.num_nan == 0


def test_energy_distance_matches_v_statistic(key):
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (400, 3))
    y = 1.3 * jax.random.normal(k2, (500, 3)) + 0.2
    dist = lambda a, b: jnp.mean(jnp.linalg.norm(a[:, None] - b[None], axis=-1))
    exact = dist(x, y) - 0.5 * dist(x, x) - 0.5 * dist(y, y)
    sliced = metrics.energy_distance(x, y, k3, num_projections=4000)
    np.testing.assert_allclose(sliced, exact, rtol=0.03)


def test_mode_weights_sum_to_one(key):
    centres = jnp.array([[0.0, 0.0], [3.0, 0.0]])
    w = metrics.mode_weights(jax.random.normal(key, (1000, 2)), centres)
    assert np.isclose(float(w.sum()), 1.0) and float(w[0]) > 0.9
