# SPDX-License-Identifier: Apache-2.0
"""Tests of the flow-assisted MALA kernel and its helpers (numpyro_jko.mala)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.scipy.special import logsumexp
from numpyro.diagnostics import effective_sample_size
from scipy import stats

from numpyro_jko import mala
from numpyro_jko.flows import (
    CouplingFlow,
    FlowParams,
    init_flow,
    make_train_step,
)

# Two-sided z-score threshold: each test makes at most ~12 z-checks, so a
# per-check level of 1e-4 keeps a false alarm rate below ~0.2% per test.
Z_THRESHOLD = stats.norm.ppf(1 - 0.5e-4)


def standard_normal_logdensity(x):
    return -0.5 * jnp.sum(x**2)


def gaussian_flow_params(flow, mean, std):
    """Flow equal to N(mean, diag(std**2)): identity network, fixed standardisation."""
    params = init_flow(jax.random.key(0), flow)
    dtype = params.shift.dtype
    return FlowParams(params.network, jnp.asarray(mean, dtype), jnp.asarray(std, dtype))


@functools.partial(jax.jit, static_argnames=("kernel", "logdensity_fn", "num_steps"))
def run_ensemble(
    rng_key, states, kernel, logdensity_fn, flow_params, step_size, num_steps
):
    """Step an ensemble ``num_steps`` times; returns final states and traces."""
    num_walkers = states.position.shape[0]

    def one_step(states, key):
        keys = jax.random.split(key, num_walkers)
        step = lambda k, s: kernel(k, s, logdensity_fn, flow_params, step_size)
        states, infos = jax.vmap(step)(keys, states)
        return states, (states.position, infos)

    keys = jax.random.split(rng_key, num_steps)
    return jax.lax.scan(one_step, states, keys)


def init_ensemble(positions, logdensity_fn):
    return jax.vmap(mala.init, in_axes=(0, None))(positions, logdensity_fn)


def assert_moments_standard_normal(draws):
    """MCSE z-tests of E[x] = 0 and E[x^2] = 1 for each coordinate.

    ``draws`` has shape (walkers, steps, dim); the ESS is numpyro's multi-chain
    estimator, computed separately for x and for x^2.
    """
    draws = np.asarray(draws, np.float64)
    for statistic, expected, variance in (
        (draws, 0.0, 1.0),  # Var[x] = 1
        (draws**2, 1.0, 2.0),  # Var[x^2] = 2
    ):
        ess = effective_sample_size(statistic)
        assert np.all(ess > 500), ess  # the chains actually mixed
        estimate = statistic.mean(axis=(0, 1))
        z_scores = (estimate - expected) / np.sqrt(variance / ess)
        assert np.all(np.abs(z_scores) < Z_THRESHOLD), (estimate, ess, z_scores)


@pytest.mark.parametrize(
    "variant", ["mala", "flow_mala", "flow_mala_3_local", "independent_mh"]
)
def test_standard_normal_moments(variant):
    dim, num_walkers = 3, 512
    flow = CouplingFlow(dim=dim, num_layers=2, hidden=(8,))
    # A deliberately imperfect flow (wider and off-centre), so that the global
    # move is exercised with acceptance well below 1.
    flow_params = gaussian_flow_params(flow, 0.3 * jnp.ones(dim), 1.4 * jnp.ones(dim))
    kernel, flow_params = {
        "mala": (mala.build_kernel(None), None),
        "flow_mala": (mala.build_kernel(flow), flow_params),
        "flow_mala_3_local": (mala.build_kernel(flow, num_local_steps=3), flow_params),
        "independent_mh": (mala.build_kernel(flow, num_local_steps=0), flow_params),
    }[variant]
    # Start away from the target so that burn-in matters.
    positions = 2.0 + 0.5 * jax.random.normal(jax.random.key(0), (num_walkers, dim))
    states = init_ensemble(positions, standard_normal_logdensity)
    # Per-dimension step size, to exercise the diagonal preconditioner path.
    step_size = jnp.array([1.2, 1.1, 1.0])
    run = lambda key, states: run_ensemble(
        key, states, kernel, standard_normal_logdensity, flow_params, step_size, 150
    )
    # Burn-in and sampling phases of equal length share one compilation.
    states, _ = run(jax.random.key(1), states)
    _, (positions, infos) = run(jax.random.key(2), states)
    assert_moments_standard_normal(jnp.swapaxes(positions, 0, 1))
    if variant != "independent_mh":
        assert 0.3 < float(jnp.mean(infos.local_acceptance)) < 0.95
    if variant == "mala":
        assert float(jnp.max(infos.global_acceptance)) == 0.0
    else:
        assert 0.2 < float(jnp.mean(infos.global_acceptance)) < 0.9


def test_exact_flow_is_always_accepted():
    """Detailed-balance smoke test: IMH with q = pi accepts every proposal."""
    dim = 4
    mean = jnp.array([1.0, -2.0, 0.5, 3.0])
    std = jnp.array([0.5, 2.0, 1.0, 3.0])

    def logdensity_fn(x):
        # Unnormalized: the acceptance ratio must not depend on the constant.
        return -0.5 * jnp.sum(((x - mean) / std) ** 2) + 17.0

    flow = CouplingFlow(dim=dim, num_layers=4, hidden=(16,))
    flow_params = gaussian_flow_params(flow, mean, std)
    kernel = mala.build_kernel(flow)
    positions = mean + std * jax.random.normal(jax.random.key(0), (256, dim))
    states = init_ensemble(positions, logdensity_fn)
    _, (_, infos) = run_ensemble(
        jax.random.key(1), states, kernel, logdensity_fn, flow_params, 0.3, 10
    )
    assert float(jnp.min(infos.global_acceptance)) > 0.9999
    assert bool(jnp.all(infos.global_accepted))


@pytest.mark.parametrize(
    "num_local_steps, use_flow, call_sites",
    [(1, True, 2), (4, True, 2), (1, False, 1)],
)
def test_kernel_does_not_retrace(num_local_steps, use_flow, call_sites):
    """The target is traced once per call site, and never again.

    With the global move on there are two call sites (the MALA proposal, inside
    a scan over local steps, and the flow proposal); plain MALA has one, which
    also shows that a MALA step evaluates ``value_and_grad`` only once.
    """
    num_traces = 0

    def logdensity_fn(x):
        nonlocal num_traces
        num_traces += 1
        return -0.5 * jnp.sum(x**2)

    flow = CouplingFlow(dim=2, num_layers=2, hidden=(8,))
    kernel = mala.build_kernel(flow if use_flow else None, num_local_steps)
    states = init_ensemble(jnp.zeros((8, 2)), standard_normal_logdensity)

    @jax.jit
    def step(rng_key, states, flow_params, step_size):
        keys = jax.random.split(rng_key, 8)
        one = lambda k, s: kernel(k, s, logdensity_fn, flow_params, step_size)
        return jax.vmap(one)(keys, states)

    for i in range(6):
        # New flow parameters and step size values each call: values, not
        # structure, so they must not trigger a retrace.
        flow_params = gaussian_flow_params(flow, jnp.full(2, 0.1 * i), jnp.ones(2))
        states, _ = step(jax.random.key(i), states, flow_params, 0.5 + 0.1 * i)
        if i == 0:
            assert num_traces == call_sites
    assert num_traces == call_sites


def test_same_key_same_output():
    flow = CouplingFlow(dim=2, num_layers=2, hidden=(8,))
    flow_params = gaussian_flow_params(flow, jnp.zeros(2), 1.5 * jnp.ones(2))
    kernel = mala.build_kernel(flow, num_local_steps=2)
    states = init_ensemble(jnp.ones((16, 2)), standard_normal_logdensity)
    run = lambda key: run_ensemble(
        key, states, kernel, standard_normal_logdensity, flow_params, 0.7, 5
    )
    first, second, other = (
        run(jax.random.key(3)),
        run(jax.random.key(3)),
        run(jax.random.key(4)),
    )
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0].position, other[0].position)


def test_nan_and_inf_proposals_are_rejected():
    """The target is NaN (x0 > 1) or -inf (x1 > 1): no walker may go there."""

    def logdensity_fn(x):
        value = -0.5 * jnp.sum(x**2)
        value = jnp.where(x[1] > 1.0, -jnp.inf, value)
        return jnp.where(x[0] > 1.0, jnp.nan, value)

    flow = CouplingFlow(dim=2, num_layers=2, hidden=(8,))
    # Wide flow: a large share of its proposals land in the bad regions.
    flow_params = gaussian_flow_params(flow, jnp.zeros(2), 2.0 * jnp.ones(2))
    kernel = mala.build_kernel(flow)
    states = init_ensemble(jnp.zeros((128, 2)), logdensity_fn)
    final, (positions, infos) = run_ensemble(
        jax.random.key(0), states, kernel, logdensity_fn, flow_params, 1.5, 50
    )
    assert bool(jnp.all(positions <= 1.0))
    assert bool(jnp.all(jnp.isfinite(final.logdensity)))
    assert bool(jnp.all(jnp.isfinite(final.logdensity_grad)))
    for field in infos:
        assert bool(jnp.all(jnp.isfinite(field.astype(jnp.float32))))
    # Both moves still accept valid proposals.
    assert float(jnp.mean(infos.local_accepted)) > 0.1
    assert float(jnp.mean(infos.global_accepted)) > 0.05


def test_nan_gradient_is_rejected():
    """A finite value with a NaN gradient (x0 > 1) must not be accepted."""

    def logdensity_fn(x):
        # sqrt(1 - x0) has gradient NaN beyond 1 while the value there is made
        # finite by the where: the gradient of the unused branch leaks NaN.
        safe = jnp.sqrt(1.0 - x[0])
        return -0.5 * jnp.sum(x**2) + jnp.where(x[0] > 1.0, 0.0, 0.0 * safe)

    kernel = mala.build_kernel(None)
    states = init_ensemble(jnp.zeros((128, 2)), logdensity_fn)
    final, (positions, _) = run_ensemble(
        jax.random.key(0), states, kernel, logdensity_fn, None, 1.5, 50
    )
    assert bool(jnp.all(positions[..., 0] <= 1.0))
    assert bool(jnp.all(jnp.isfinite(final.logdensity_grad)))


# --------------------------------------------------------------------------
# Two separated modes: only the global move can fix the mode weights
# --------------------------------------------------------------------------

MODE_MEANS = jnp.array([[-4.0, -4.0], [4.0, 4.0]])
MODE_WEIGHTS = jnp.array([0.3, 0.7])


def mixture_logdensity(x):
    component = -0.5 * jnp.sum((x - MODE_MEANS) ** 2, axis=-1)
    return logsumexp(component + jnp.log(MODE_WEIGHTS)) - jnp.log(2 * jnp.pi)


@pytest.fixture(scope="module")
def mixture_flow():
    """Flow trained by forward KL on 400 draws, 200 from each mode.

    The training data have the wrong weights (1:1 instead of 3:7): the MH
    correction, not the flow, has to get the weights right.
    """
    flow = CouplingFlow(dim=2, num_layers=6, hidden=(32, 32))
    noise = jax.random.normal(jax.random.key(10), (400, 2))
    data = jnp.concatenate([MODE_MEANS[0] + noise[:200], MODE_MEANS[1] + noise[200:]])
    params = init_flow(jax.random.key(11), flow, data=data)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params.network)
    step = jax.jit(make_train_step(flow, optimizer))
    for _ in range(200):
        params, opt_state, _ = step(params, opt_state, data)
    return flow, params


def test_mode_weights_need_the_global_move(mixture_flow):
    flow, flow_params = mixture_flow
    num_walkers = 512
    # All walkers start in the light mode.
    positions = MODE_MEANS[0] + jax.random.normal(jax.random.key(0), (num_walkers, 2))
    states = init_ensemble(positions, mixture_logdensity)
    upper_fraction = {}
    for name, kernel, params in (
        ("mala", mala.build_kernel(None), None),
        ("flow_mala", mala.build_kernel(flow), flow_params),
    ):
        final, (_, infos) = run_ensemble(
            jax.random.key(1), states, kernel, mixture_logdensity, params, 1.0, 150
        )
        upper_fraction[name] = float(jnp.mean(jnp.sum(final.position, axis=-1) > 0))
    # The barrier is ~16 nats above the light mode: plain MALA essentially
    # never crosses it (77k walker-steps, crossing probability ~e^-16 each).
    assert upper_fraction["mala"] < 0.01
    # With global moves the walkers are independent draws from (approximately,
    # after 150 steps) the target: binomial error on the heavy mode's weight.
    standard_error = np.sqrt(0.7 * 0.3 / num_walkers)
    assert abs(upper_fraction["flow_mala"] - 0.7) < Z_THRESHOLD * standard_error
    assert float(jnp.mean(infos.global_acceptance[-50:])) > 0.3


def test_evidence_from_frozen_flow(mixture_flow):
    """Importance sampling with the trained flow recovers log Z."""
    flow, flow_params = mixture_flow
    log_z_true = 1.7  # the mixture is normalized; add a known offset

    def logdensity_fn(x):
        return mixture_logdensity(x) + log_z_true

    num = 4096
    log_g, log_q = mala.flow_importance_weights(
        jax.random.key(5), flow, flow_params, logdensity_fn, num
    )
    assert log_g.shape == log_q.shape == (num,)
    log_w = log_g - log_q
    log_z = float(logsumexp(log_w) - jnp.log(num))
    # Delta-method standard error of log(mean w): std(w) / (mean(w) sqrt(n)).
    weights = np.exp(np.asarray(log_w, np.float64) - float(jnp.max(log_w)))
    standard_error = weights.std() / (weights.mean() * np.sqrt(num))
    assert standard_error < 0.05  # the flow is a usable proposal
    assert abs(log_z - log_z_true) < Z_THRESHOLD * standard_error + 1e-3


# --------------------------------------------------------------------------
# Helpers: step-size adaptation, replay buffer
# --------------------------------------------------------------------------


def test_dual_averaging_reaches_target_acceptance():
    dim, num_walkers = 10, 256
    kernel = mala.build_kernel(None)
    states = init_ensemble(
        jax.random.normal(jax.random.key(0), (num_walkers, dim)),
        standard_normal_logdensity,
    )

    @jax.jit
    def warmup(rng_key, states):
        def one(carry, key):
            states, adaptation = carry
            step_size = jnp.exp(adaptation.log_step_size)
            keys = jax.random.split(key, num_walkers)
            step = lambda k, s: kernel(
                k, s, standard_normal_logdensity, None, step_size
            )
            states, infos = jax.vmap(step)(keys, states)
            adaptation = mala.dual_averaging_update(
                adaptation, jnp.mean(infos.local_acceptance)
            )
            return (states, adaptation), None

        initial = (states, mala.dual_averaging_init(0.05))
        keys = jax.random.split(rng_key, 300)
        return jax.lax.scan(one, initial, keys)[0]

    states, adaptation = warmup(jax.random.key(1), states)
    step_size = jnp.exp(adaptation.log_step_size_avg)
    _, (_, infos) = run_ensemble(
        jax.random.key(2),
        states,
        kernel,
        standard_normal_logdensity,
        None,
        step_size,
        50,
    )
    acceptance = float(jnp.mean(infos.local_acceptance))
    # 256 walkers x 50 steps average out the per-step noise (measured offsets
    # over four seeds: +0.004 to +0.009, from the finite adaptation length).
    assert abs(acceptance - 0.574) < 0.03, (acceptance, float(step_size))


def test_dual_averaging_ignores_nan_acceptance():
    state = mala.dual_averaging_update(mala.dual_averaging_init(1.0), jnp.nan)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in state)


def test_replay_buffer_wraps_and_samples_filled_rows():
    buffer = mala.replay_buffer_init(5, 2)
    batch = lambda start: jnp.stack([jnp.arange(start, start + 3.0)] * 2, axis=-1)
    insert = jax.jit(mala.replay_buffer_insert)
    buffer = insert(buffer, batch(0.0))  # rows 0, 1, 2
    assert int(buffer.num_filled) == 3 and int(buffer.next_index) == 3
    sample = mala.replay_buffer_sample(jax.random.key(0), buffer, 200)
    assert set(np.asarray(sample[:, 0]).tolist()) == {0.0, 1.0, 2.0}
    buffer = insert(buffer, batch(3.0))  # 3, 4 fill up; 5 overwrites row 0
    assert int(buffer.num_filled) == 5 and int(buffer.next_index) == 1
    np.testing.assert_array_equal(buffer.positions[:, 0], [5.0, 1.0, 2.0, 3.0, 4.0])
    sample = mala.replay_buffer_sample(jax.random.key(1), buffer, 500)
    assert set(np.asarray(sample[:, 0]).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    with pytest.raises(ValueError):
        mala.replay_buffer_insert(buffer, jnp.zeros((6, 2)))


def test_init_caches_value_and_gradient():
    state = mala.init(jnp.array([1.0, -2.0]), standard_normal_logdensity)
    np.testing.assert_allclose(state.logdensity, -2.5)
    np.testing.assert_allclose(state.logdensity_grad, [-1.0, 2.0])
