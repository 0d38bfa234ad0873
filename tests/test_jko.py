import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_jko import cnf, evidence, jko, metrics, targets
from numpyro_jko.chain import CNFLayer, JKOChain, draw
from numpyro_jko.cnf import CNFSpec, init_velocity
from numpyro_jko.rejection import fit_rejection

TINY = jko.JKOConfig(
    num_particles=1024,
    num_cnf=1,
    num_blocks=1,
    rejections_per_block=2,
    num_iterations=20,
    batch_size=128,
    iterations_per_update=10,
    min_cnf_gain=0.0,  # keep the CNF: these tests need one in the chain
    min_elbo_gain=1e-4,
)


def _random_chain(dim, logdensity_fn, with_rejection, key, latent_scale=1.0):
    """A chain with random (non-identity) CNFs and fitted rejection layers."""
    spec = CNFSpec(dim=dim, hidden=16)
    layers = []
    for i in range(2):
        params = init_velocity(jax.random.fold_in(key, i), spec)
        params = jax.tree.map(
            lambda a: (
                a + 0.1 * jax.random.normal(jax.random.fold_in(key, 10 + i), a.shape)
            ),
            params,
        )
        layers.append(CNFLayer(params))
    scale = jnp.asarray(latent_scale, jnp.float32)
    chain = JKOChain(logdensity_fn, spec, jnp.zeros(dim), scale, tuple(layers))
    if with_rejection:
        for j in range(2):
            x, energy, log_g = draw(jax.random.fold_in(key, 100 + j), chain, 4096)
            layer = fit_rejection(jnp.asarray(log_g + energy), 0.2)
            chain = chain._replace(layers=chain.layers + (layer,))
    return chain


@pytest.mark.parametrize("dim", [2, 10])
@pytest.mark.parametrize("with_rejection", [False, True])
def test_log_prob_matches_sample(key, dim, with_rejection):
    target = targets.gaussian_mixture(jnp.stack([jnp.ones(dim), -jnp.ones(dim)]), 0.5)
    chain = _random_chain(dim, target.logdensity_fn, with_rejection, key)
    x, log_p = jko.sample(jax.random.fold_in(key, 7), chain, 300)
    np.testing.assert_allclose(jko.log_prob(chain, x), log_p, rtol=1e-4, atol=5e-4)


def test_hutchinson_densities_are_unbiased_for_the_exact_ones(key):
    # Above exact_density_max_dim draws carry integrated Hutchinson log-determinants:
    # noisy, but unbiased for the exact ones at the same points (CNFs only: a
    # rejection layer would pass the noise through a nonlinearity).
    dim = 6
    target = targets.gaussian_mixture(jnp.stack([jnp.ones(dim), -jnp.ones(dim)]), 0.5)
    chain = _random_chain(dim, target.logdensity_fn, False, key)
    x, log_p = jko.sample(jax.random.fold_in(key, 1), chain, 2000)
    noisy = chain._replace(density_divergence=cnf.Hutchinson(5, per_stage=True))
    diff = jko.log_prob(noisy, x, rng_key=jax.random.fold_in(key, 2)) - log_p
    spread = float(jnp.std(diff))
    assert spread > 0.0  # an estimate, not the exact value
    assert abs(float(jnp.mean(diff))) < 5 * spread / np.sqrt(diff.size) + 1e-4


def test_fit_uses_per_stage_probes_above_the_exact_dimension(key):
    config = TINY._replace(exact_density_max_dim=2)
    chain, _ = jko.fit(
        key, lambda x: -0.5 * jnp.sum(x**2), 3, config, progress_bar=False
    )
    assert chain.density_divergence == cnf.Hutchinson(5, per_stage=True)
    x, log_p = jko.sample(jax.random.fold_in(key, 1), chain, 500)
    assert np.isfinite(np.asarray(x)).all() and np.isfinite(np.asarray(log_p)).all()


def test_sample_is_normalized_density(key):
    # The tracked density of a random chain integrates to 1: importance sampling of
    # a normalized target from it gives log Z = 0 within its standard error.
    target = targets.gaussian_mixture(jnp.array([[0.5, 0.0], [-0.5, 0.5]]), 0.5)
    chain = _random_chain(2, target.logdensity_fn, True, key)
    x, energy, log_g = draw(jax.random.fold_in(key, 3), chain, 40000)
    est = evidence.log_evidence(log_g, -energy)
    assert abs(est.log_Z) < 4 * est.log_Z_se + 1e-3


def test_stacked_rejection_layers_fitted_by_reweighting_are_normalized(key):
    # Layers 2-4 of the stack are fitted on draws under the stack, reweighted: the
    # chain's density must still integrate to 1, within the error its own rbar
    # estimates carry (JKOInfo.log_z_se_rbar) plus the IS standard error.
    target = targets.gaussian_mixture(jnp.array([[0.5, 0.0], [-0.5, 0.5]]), 0.5)
    config = TINY._replace(
        rejections_per_block=4, num_particles=4096, min_elbo_gain=0.0
    )
    chain, info = jko.fit(key, target.logdensity_fn, 2, config, progress_bar=False)
    assert info.layer_kinds == ("C", "R", "R", "R", "R")
    assert len(info.rbar_se) == 4 and all(0 < se < 0.01 for se in info.rbar_se)
    x, energy, log_g = draw(jax.random.fold_in(key, 3), chain, 40000)
    est = evidence.log_evidence(log_g, -energy)
    assert abs(est.log_Z) < 4 * np.hypot(est.log_Z_se, info.log_z_se_rbar)


def test_diagonal_latent_scale_is_normalized_and_consistent(key):
    # A per-coordinate latent scale: the density still integrates to 1 and the
    # pull-back agrees with the tracked density.
    target = targets.gaussian_mixture(jnp.array([[0.5, 0.0], [-0.5, 2.0]]), 0.5)
    chain = _random_chain(2, target.logdensity_fn, True, key, latent_scale=(0.7, 2.0))
    x, energy, log_g = draw(jax.random.fold_in(key, 3), chain, 40000)
    est = evidence.log_evidence(log_g, -energy)
    assert abs(est.log_Z) < 4 * est.log_Z_se + 1e-3
    x, log_p = jko.sample(jax.random.fold_in(key, 4), chain, 300)
    np.testing.assert_allclose(jko.log_prob(chain, x), log_p, rtol=1e-4, atol=5e-4)


def test_latent_scale_of_wrong_length_is_rejected(key):
    config = TINY._replace(latent_scale=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="latent_scale"):
        jko.fit(key, lambda x: -jnp.sum(x**2), 2, config, progress_bar=False)


def test_same_key_same_draws(key):
    target = targets.shifted_eight_modes()
    chain, _ = jko.fit(key, target.logdensity_fn, 2, TINY, progress_bar=False)
    a = jko.sample(jax.random.key(3), chain, 500)
    b = jko.sample(jax.random.key(3), chain, 500)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = jko.sample(jax.random.key(4), chain, 500)
    assert not np.array_equal(a[0], c[0])
    chain2, _ = jko.fit(key, target.logdensity_fn, 2, TINY, progress_bar=False)
    np.testing.assert_array_equal(jko.sample(jax.random.key(3), chain2, 500)[0], a[0])


def test_training_and_sampling_do_not_retrace(key):
    def counted():
        traces = []

        def logdensity_fn(x):
            traces.append(1)  # runs once per trace, never per evaluation
            return -0.5 * jnp.sum(x**2)

        return logdensity_fn, traces

    # A fresh function per fit, so module-level compile caches cannot hide traces.
    fn2, traces2 = counted()
    jko.fit(key, fn2, 2, TINY._replace(num_cnf=2, num_blocks=0), progress_bar=False)
    fn4, traces4 = counted()
    chain, _ = jko.fit(
        key, fn4, 2, TINY._replace(num_cnf=4, num_blocks=0), progress_bar=False
    )
    assert len(traces2) == len(traces4)  # more CNFs of the same shape: no new trace
    before = len(traces4)
    jko.sample(jax.random.key(1), chain, 1000)
    first = len(traces4)
    jko.sample(jax.random.key(2), chain, 1000)
    assert len(traces4) == first and first - before <= 2


def test_wrong_shape_is_rejected_before_training(key):
    with pytest.raises(ValueError, match=r"to a scalar; it returned shape \(2,\)"):
        jko.fit(key, lambda x: -(x**2), 2, TINY, progress_bar=False)


def test_nonfinite_everywhere_is_rejected(key):
    with pytest.raises(ValueError, match="not finite at any"):
        jko.fit(key, lambda x: jnp.nan * jnp.sum(x), 2, TINY, progress_bar=False)


def test_nonfinite_draws_are_reported(key):
    # Zero density on a half-plane: draws there are counted and reported.
    def logdensity_fn(x):
        return jnp.where(x[0] > -0.5, -0.5 * jnp.sum(x**2), -jnp.inf)

    chain = JKOChain(logdensity_fn, CNFSpec(2, 8), jnp.zeros(2), jnp.array(1.0))
    with pytest.warns(RuntimeWarning, match="non-finite target log density"):
        jko.sample(key, chain, 2000)
    x, energy, log_g = draw(key, chain, 2000)
    with pytest.warns(RuntimeWarning, match="NaN log weight"):
        est = evidence.log_evidence(
            np.where(np.isfinite(log_g), log_g, np.nan), -energy
        )
    assert est.num_nan == int(np.sum(~np.isfinite(log_g))) and np.isfinite(est.log_Z)


def test_chunked_sampling_handles_many_draws(key):
    chain = _random_chain(2, targets.shifted_eight_modes().logdensity_fn, True, key)
    x, log_p = jko.sample(key, chain, 20000, chunk_size=1024)
    assert x.shape == (20000, 2) and bool(jnp.all(jnp.isfinite(log_p)))


@pytest.mark.slow
def test_mixture_log_z_and_mode_weights(key):
    """Normalized 3-mode mixture: log Z = 0 within 3 se (IS and rbar); mode weights within MC error."""
    means = jnp.array([[-1.5, 0.0], [1.5, 0.0], [0.0, 1.5]])
    target = targets.gaussian_mixture(means, 0.09, weights=jnp.array([0.5, 0.3, 0.2]))
    config = jko.JKOConfig(
        **jko.TWO_STEP, num_particles=8192, num_iterations=400, num_blocks=3
    )
    chain, info = jko.fit(key, target.logdensity_fn, 2, config, progress_bar=False)
    x, energy, log_g = draw(jax.random.fold_in(key, 1), chain, 40000)
    est = evidence.log_evidence(log_g, -energy)
    # The fitted rejection rates put an error on the chain's normalization that the
    # IS se cannot see (flat weights: se 3e-5); the budget holds both.
    budget = 3 * np.hypot(est.log_Z_se, info.log_z_se_rbar) + 1e-3
    assert abs(est.log_Z) < budget, (est, info.log_z_se_rbar)
    w = np.asarray(metrics.mode_weights(x, means))
    sd = np.sqrt(np.array([0.5, 0.3, 0.2]) * (1 - np.array([0.5, 0.3, 0.2])) / len(x))
    np.testing.assert_array_less(np.abs(w - np.array([0.5, 0.3, 0.2])), 4 * sd + 0.01)


def test_save_load_round_trip_gives_identical_draws(key, tmp_path):
    import pickle

    from numpyro_jko.chain import chain_from_dict, chain_to_dict

    target = targets.shifted_eight_modes()
    chain = _random_chain(2, target.logdensity_fn, True, key)
    path = tmp_path / "chain.pkl"
    path.write_bytes(pickle.dumps(chain_to_dict(chain)))
    loaded = chain_from_dict(pickle.loads(path.read_bytes()), target.logdensity_fn)
    a = jko.sample(jax.random.key(5), chain, 700)
    b = jko.sample(jax.random.key(5), loaded, 700)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_tempered_latent_search_finds_the_mustache_arms():
    """The tempered search covers the arms (x2 sd 7.3) that plain adaptive IS misses."""
    from numpyro_jko.target import match_latent_moments, tempered_latent_moments

    target = targets.mustache()
    key = jax.random.key(0)
    tempered = tempered_latent_moments(key, target.logdensity_fn, jnp.zeros(2), 1.0)
    plain = match_latent_moments(key, target.logdensity_fn, jnp.zeros(2), 1.0)
    # Measured (seed 0): tempered (1.25, 5.4) at beta 0.008, plain (0.83, 1.10).
    assert float(tempered.scale[1]) > 4.0 > 2.0 > float(plain.scale[1])
    assert 0.0 < tempered.beta < 1.0
    assert float(tempered.scale[0]) > 1.0  # wider than the target's sd of x1


def test_tempered_latent_search_ignores_nonfinite_regions():
    """A half-space target (-inf below 0): the latent lands on its moments."""
    from numpyro_jko.target import tempered_latent_moments

    def logdensity_fn(x):
        return jnp.where(x[0] > 0, -0.5 * jnp.sum(x**2), -jnp.inf)

    fit = tempered_latent_moments(jax.random.key(1), logdensity_fn, jnp.zeros(2), 1.0)
    # Half-normal in x1: mean sqrt(2/pi) = 0.798, sd 0.603; x2 ~ N(0, 1).
    assert np.all(np.isfinite(np.asarray(fit.scale)))
    np.testing.assert_allclose(fit.mean[0], 0.798, atol=0.05)
    np.testing.assert_allclose(fit.scale, [0.603, 1.0], atol=0.06)


def test_a_cnf_that_lowers_the_elbo_is_dropped(key):
    """The latent is the target and the step is mistrained: it adds KL, so it goes.

    Kept (``drop_worse_cnf=False``), the same step measured an ELBO below -0.005.
    """
    import optax

    target = targets.gaussian_mixture(jnp.zeros((1, 2)), 1.0)
    # Adam at 0.1 overshoots: measured ELBO -0.03 after the step, 0 before it.
    config = TINY._replace(
        latent_moments=0,
        num_cnf=1,
        num_blocks=1,
        rejections_per_block=1,
        optimizer=optax.adam(0.1),
    )
    chain, info = jko.fit(key, target.logdensity_fn, 2, config, progress_bar=False)
    assert info.dropped_taus == (info.tau0,)
    assert info.layer_kinds == ("R",) and len(chain.layers) == 1
    x, log_p = jko.sample(jax.random.fold_in(key, 1), chain, 2000)
    np.testing.assert_allclose(log_p, jko.log_prob(chain, x), rtol=1e-5, atol=1e-5)


def test_score_tau_is_the_squared_length_of_the_score_mismatch():
    """N(0, s^2 I) from N(0, I) in d = 4: the mismatch is (1/s^2 - 1)^2 |x|^2.

    ``E log |x|^2 = log 2 + digamma(d / 2)``, so the rule has a closed form; 20 000
    draws put a standard error of 0.6 % on the geometric mean (tolerance 3 %).
    """
    from scipy.special import digamma

    from numpyro_jko.jko_step import score_tau

    dim, s = 4, 0.1
    x = jax.random.normal(jax.random.key(3), (20_000, dim))
    tau = score_tau(lambda v: -0.5 * jnp.sum(v**2) / s**2, x, 0.0, 1.0, scale=25.0)
    expected = 25.0 * dim / ((1 / s**2 - 1) ** 2 * np.exp(np.log(2) + digamma(dim / 2)))
    np.testing.assert_allclose(tau, expected, rtol=0.03)


@pytest.mark.parametrize(
    "name, reference_tau0",
    # The reference code's hand-tuned tau0 (mustache: 0.01 through its config typo).
    [("shifted_eight_modes", 0.05), ("shifted_eight_peaky", 0.01),
     ("mustache", 0.01), ("gmm10", 0.0025), ("funnel10", 5.0)],
)  # fmt: skip
def test_score_tau_lands_near_the_reference_step_sizes(name, reference_tau0):
    """From the tempered latent, the rule is within a factor 2 of each hand-tuned value.

    Measured (seed 1): 0.034, 0.0081, 0.012, 0.0024; the funnel (one mode, where
    the reference's steps grow to 1.3e6) gets 31, six times the reference's 5.
    """
    from numpyro_jko.jko_step import score_tau
    from numpyro_jko.target import tempered_latent_moments

    target = {
        "shifted_eight_modes": targets.shifted_eight_modes,
        "shifted_eight_peaky": targets.shifted_eight_peaky,
        "mustache": targets.mustache,
        "gmm10": lambda: targets.gmm(10),
        "funnel10": lambda: targets.funnel(10),
    }[name]()
    zeros = jnp.zeros(target.dim)
    latent = tempered_latent_moments(
        jax.random.key(1), target.logdensity_fn, zeros, 1.0, num_draws=16384
    )
    x = latent.mean + latent.scale * jax.random.normal(
        jax.random.key(0), (16384, target.dim)
    )
    tau = score_tau(target.logdensity_fn, x, latent.mean, latent.scale)
    upper = 10 * reference_tau0 if name == "funnel10" else 2 * reference_tau0
    assert reference_tau0 / 2 < tau < upper


def test_score_tau_rejects_a_target_without_a_usable_gradient():
    from numpyro_jko.jko_step import score_tau

    x = jax.random.normal(jax.random.key(0), (64, 2))
    with pytest.raises(ValueError, match="tau0"):
        score_tau(lambda v: jnp.sum(v) * jnp.nan, x, 0.0, 1.0)
    # The latent is the target: no mismatch, so the cap (kappa * scale^2).
    assert score_tau(lambda v: -0.5 * jnp.sum(v**2), x, 0.0, 1.0, scale=25.0) == 25.0


def test_a_stalled_plain_step_ends_the_plain_steps(key):
    """The latent already fits N(0, I): the first CNF gains nothing, the rest are skipped."""

    from numpyro_jko.progress import ProgressMeter

    class Recorder(ProgressMeter):
        def start(self, total, description):
            self.total, self.done, self.layers = total, 0, []

        def update(self, n, **diagnostics):
            self.done += n
            self.layers.append(diagnostics.get("layer"))

        def close(self):
            pass

    target = targets.gaussian_mixture(jnp.zeros((1, 2)), 1.0)
    config = TINY._replace(num_cnf=3, min_cnf_gain=0.01, tau0=None)
    meter = Recorder()
    chain, info = jko.fit(key, target.logdensity_fn, 2, config, progress_bar=meter)
    assert info.dropped_taus == (info.tau0,)
    assert "C" not in info.layer_kinds and len(info.layer_kinds) >= 1
    assert meter.layers.count("skip") == 2 and meter.done == meter.total
    x, log_p = jko.sample(jax.random.fold_in(key, 1), chain, 1000)
    np.testing.assert_allclose(log_p, jko.log_prob(chain, x), rtol=1e-5, atol=1e-5)
