# SPDX-License-Identifier: Apache-2.0
"""Tests of the NumPyro ensemble kernel numpyro_jko.FlowMALA."""

import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC
from numpyro.infer.initialization import init_to_sample

from numpyro_jko import CouplingFlowProposal, FlowMALA, init_to_spread
from numpyro_jko.flow_mala import SpreadInit, to_inference_data

NUM_WALKERS = 32
WEIGHTS = (0.8, 0.2)
CENTRES = ((-2.5, 0.0), (2.5, 0.0))
SMALL_FLOW = CouplingFlowProposal(num_layers=2, hidden=(16,))


def bimodal_model():
    """Normalized 2-D mixture (log Z = 0), modes 10 standard deviations apart."""
    mixture = dist.MixtureSameFamily(
        dist.Categorical(jnp.array(WEIGHTS)),
        dist.Normal(jnp.array(CENTRES), 0.5).to_event(1),
    )
    numpyro.sample("x", mixture)


def split_init():
    """Half the walkers in each mode, as in Gabrié et al.'s mixture experiment.

    With this start the walkers' initial mode fractions (0.5, 0.5) are wrong,
    and a chain can only correct them by crossing a barrier of ~25 nats.
    """
    centres = jnp.array(CENTRES)
    half = NUM_WALKERS // 2
    return {
        "x": jnp.concatenate(
            [jnp.tile(centres[:1], (half, 1)), jnp.tile(centres[1:], (half, 1))]
        )
    }


def run_bimodal(global_every, num_warmup=300, num_samples=300, seed=0):
    kernel = FlowMALA(
        bimodal_model,
        proposal=SMALL_FLOW,
        global_every=global_every,
        init_strategy=init_to_sample,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=NUM_WALKERS,
        chain_method="vectorized",
        progress_bar=False,
    )
    key_warmup, key_run = jax.random.split(jax.random.key(seed))
    mcmc.warmup(key_warmup, init_params=split_init())
    post_warmup = mcmc.post_warmup_state
    mcmc.run(key_run, extra_fields=("accept_prob", "global_accept_prob"))
    return kernel, mcmc, post_warmup


@pytest.fixture(scope="module")
def flow_run():
    return run_bimodal(global_every=1)


@pytest.fixture(scope="module")
def mala_run():
    return run_bimodal(global_every=0)


def left_mode_indicator(mcmc):
    x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    return (x[..., 0] < 0).astype(np.float64)  # (walkers, draws)


def test_mode_weights_flow_mala_recovers(flow_run):
    _, mcmc, _ = flow_run
    indicator = left_mode_indicator(mcmc)
    weight = indicator.mean()
    # Honest error budget: Monte Carlo standard error of the mode fraction from
    # the multi-chain ESS of the indicator, and a check that the test has power
    # (an MCSE of at most ~0.012, so a 4-MCSE band excludes MALA's 0.5).
    ess = float(effective_sample_size(indicator[..., None])[0])
    mcse = np.sqrt(weight * (1 - weight) / ess)
    assert ess > 1000, ess
    assert abs(weight - WEIGHTS[0]) < 4 * mcse, (weight, mcse)


def test_mode_weights_plain_mala_fails(mala_run):
    # Plain MALA with the same start and step-size adaptation never crosses the
    # barrier: every walker stays in its starting mode, the estimate stays 0.5.
    _, mcmc, _ = mala_run
    indicator = left_mode_indicator(mcmc)
    assert np.all(indicator.min(axis=1) == indicator.max(axis=1))
    assert abs(indicator.mean() - WEIGHTS[0]) > 0.25
    assert 0.45 < float(mcmc.last_state.mean_accept_prob) < 0.7


def test_step_size_and_flow_frozen_after_warmup(flow_run):
    kernel, mcmc, post_warmup = flow_run
    last = mcmc.last_state
    assert int(post_warmup.i) == 300 and int(last.i) == 600
    assert float(last.step_size) == float(post_warmup.step_size)
    frozen, final = post_warmup.proposal_state, last.proposal_state
    for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(final), strict=True):
        np.testing.assert_array_equal(a, b)
    # The flow did train during warmup (it is not the identity any more)...
    assert int(final.num_updates) > 100
    # ...and the kernel recorded the frozen flow itself.
    recorded = kernel.frozen_proposal_state()
    np.testing.assert_array_equal(recorded.params.shift, final.params.shift)
    # Adapted towards MALA's 0.574; the flow proposal is accepted often.
    assert 0.45 < float(last.mean_accept_prob) < 0.7
    assert float(last.mean_global_accept_prob) > 0.2


def test_diagnostics_string(flow_run):
    kernel, mcmc, _ = flow_run
    text = kernel.get_diagnostics_str(mcmc.last_state)
    match = re.fullmatch(
        r"local acc\. (\d\.\d\d), global acc\. (\d\.\d\d), step size (\S+)", text
    )
    assert match, text
    assert float(match.group(1)) == pytest.approx(
        float(mcmc.last_state.mean_accept_prob), abs=0.006
    )


def test_evidence_of_normalized_target_within_3_se(flow_run):
    kernel, mcmc, _ = flow_run
    est = kernel.log_evidence(num_samples=20000, rng_key=jax.random.key(7))
    assert est.pareto_k < 0.7 and est.ess > 1000, est
    assert abs(est.log_Z - 0.0) < 3 * est.log_Z_se, est
    # The same from an explicit state.
    same = kernel.log_evidence(
        mcmc.last_state, rng_key=jax.random.key(7), num_samples=20000
    )
    assert same.log_Z == pytest.approx(est.log_Z)


def test_extra_fields_have_walker_axis(flow_run):
    _, mcmc, _ = flow_run
    fields = mcmc.get_extra_fields(group_by_chain=True)
    assert fields["accept_prob"].shape == (NUM_WALKERS, 300)
    assert fields["global_accept_prob"].shape == (NUM_WALKERS, 300)
    assert np.all((fields["accept_prob"] >= 0) & (fields["accept_prob"] <= 1))


def test_inference_data_carries_evidence(flow_run):
    _, mcmc, _ = flow_run
    idata = to_inference_data(mcmc, num_samples=2000)
    assert idata.posterior["x"].shape == (NUM_WALKERS, 300, 2)
    for name in ("log_evidence", "log_evidence_se", "weight_ess", "pareto_k"):
        assert np.isfinite(idata.attrs[name]), name


def test_pickled_kernel_and_mcmc(flow_run):
    kernel, mcmc, _ = flow_run
    restored = pickle.loads(pickle.dumps(mcmc))
    np.testing.assert_array_equal(restored.get_samples()["x"], mcmc.get_samples()["x"])
    # The unpickled kernel rebuilds its closures: evidence from the recorded
    # frozen flow is unchanged.
    key = jax.random.key(3)
    assert restored.sampler.log_evidence(
        rng_key=key, num_samples=1000
    ).log_Z == pytest.approx(
        kernel.log_evidence(rng_key=key, num_samples=1000).log_Z, abs=1e-5
    )
    # A fresh kernel survives pickling before use and still runs.
    # (Plain MALA mode: it exercises the same pickling with a smaller compile.)
    fresh = pickle.loads(
        pickle.dumps(
            FlowMALA(bimodal_model, global_every=0, init_strategy=init_to_sample)
        )
    )
    run = MCMC(
        fresh,
        num_warmup=5,
        num_samples=5,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    run.run(jax.random.key(0))
    assert run.get_samples()["x"].shape == (20, 2)


def test_potential_fn_route():
    mean = jnp.array([1.0, -2.0, 0.5])
    potential_fn = lambda x: 0.5 * jnp.sum((x - mean) ** 2)  # Z = (2 pi)^(3/2)
    kernel = FlowMALA(
        potential_fn=potential_fn, proposal=SMALL_FLOW, init_strategy=init_to_sample
    )
    mcmc = MCMC(
        kernel,
        num_warmup=200,
        num_samples=300,
        num_chains=16,
        chain_method="vectorized",
        progress_bar=False,
    )
    init = jax.random.normal(jax.random.key(1), (16, 3))
    mcmc.run(jax.random.key(2), init_params=init)
    draws = np.asarray(mcmc.get_samples(group_by_chain=True))
    assert draws.shape == (16, 300, 3)
    ess = effective_sample_size(draws)
    z = (draws.mean(axis=(0, 1)) - np.asarray(mean)) / np.sqrt(1.0 / ess)
    assert np.all(np.abs(z) < 4.5), z
    est = kernel.log_evidence(num_samples=5000)
    assert abs(est.log_Z - 1.5 * np.log(2 * np.pi)) < 3 * est.log_Z_se + 1e-3, est


def test_spread_init_puts_walkers_in_every_mode():
    def logdensity_fn(x):
        centres = jnp.array(CENTRES)
        sq = jnp.sum((x - centres) ** 2, axis=-1) / 0.25
        return jax.scipy.special.logsumexp(jnp.log(jnp.array(WEIGHTS)) - 0.5 * sq)

    start = 3.0 * jax.random.normal(jax.random.key(0), (64, 2))
    end = SpreadInit(num_steps=300, learning_rate=0.1).optimize(logdensity_fn, start)
    distances = jnp.linalg.norm(end[:, None, :] - jnp.array(CENTRES), axis=-1)
    assert float(jnp.max(jnp.min(distances, axis=1))) < 0.2  # all at a mode
    nearest = np.asarray(jnp.argmin(distances, axis=1))
    assert 0.2 < nearest.mean() < 0.8  # both modes populated
    assert init_to_spread().num_steps == 300


def test_requires_vectorized_ensemble():
    mcmc = MCMC(
        FlowMALA(bimodal_model),
        num_warmup=2,
        num_samples=2,
        num_chains=1,
        progress_bar=False,
    )
    with pytest.raises(ValueError, match="ensemble kernel"):
        mcmc.run(jax.random.key(0))
    with pytest.raises(ValueError, match="Only one of"):
        FlowMALA()


@pytest.mark.slow
def test_jko_proposal_end_to_end():
    """JKO chain as the global proposal: exact densities, mode weights, evidence."""
    from numpyro_jko import JKOConfig, JKOProposal, jko
    from numpyro_jko.flow_mala import _jko_log_prob_traced

    def potential_fn(x):
        centres = jnp.array(CENTRES)
        sq = jnp.sum((x - centres) ** 2, axis=-1) / 0.25
        log_p = jax.scipy.special.logsumexp(jnp.log(jnp.array(WEIGHTS)) - 0.5 * sq)
        return -(log_p - jnp.log(2 * jnp.pi * 0.25))  # normalized: log Z = 0

    config = JKOConfig(
        num_particles=1024,
        num_cnf=2,
        num_blocks=1,
        num_iterations=100,
        batch_size=256,
        latent_scale=3.0,
    )
    num_warmup = num_samples = 300
    kernel = FlowMALA(
        potential_fn=potential_fn,
        proposal=JKOProposal(config, pool_size=NUM_WALKERS * 600 // 5),
        global_every=5,
        init_strategy=init_to_sample,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=NUM_WALKERS,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(0), init_params=split_init()["x"])
    state = mcmc.last_state
    pool = state.proposal_state
    assert int(pool.index) <= pool.x.shape[0]
    draws = np.asarray(mcmc.get_samples(group_by_chain=True))
    weight = (draws[..., 0] < 0).mean()
    ess = float(effective_sample_size((draws[..., :1] < 0).astype(float))[0])
    assert abs(weight - WEIGHTS[0]) < 4 * np.sqrt(0.16 / ess) + 0.01, (weight, ess)
    est = kernel.log_evidence(num_samples=2048)
    assert abs(est.log_Z) < 4 * est.log_Z_se + 0.02, est
    # Traced density against the reference implementation.
    trained = jko.fit(
        jax.random.key(1), lambda v: -potential_fn(v), 2, config, progress_bar=False
    )[0]
    points = jnp.array([[-2.5, 0.1], [2.4, -0.2], [0.0, 0.0]])
    np.testing.assert_allclose(
        _jko_log_prob_traced(trained, points), jko.log_prob(trained, points), atol=1e-4
    )
