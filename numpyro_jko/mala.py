# SPDX-License-Identifier: Apache-2.0
"""Flow-assisted MALA: pure, blackjax-style kernel and its helpers.

One transition of the kernel is ``num_local_steps`` Metropolis-adjusted
Langevin (MALA) steps followed by one independent Metropolis–Hastings move whose
proposal is drawn from a normalizing flow (Gabrié, Rotskoff & Vanden-Eijnden,
PNAS 2022). With the global move disabled the same kernel is plain MALA.

The kernel acts on one walker (a flat position of shape ``(dim,)``); run an
ensemble with ``jax.vmap`` over the key and state, sharing the flow parameters
and the step size. The state caches the log density *and its gradient* at the
current position, so each MALA step costs one ``value_and_grad`` of the target
(flowMC recomputes the gradient at the current point, i.e. two per step).

Helpers used around the kernel during warmup, all pure:

* :func:`dual_averaging_init` / :func:`dual_averaging_update`: step-size
  adaptation towards MALA's optimal acceptance 0.574;
* :func:`replay_buffer_init` / :func:`replay_buffer_insert` /
  :func:`replay_buffer_sample`: a fixed-size circular buffer of walker positions
  to train the flow on;
* :func:`flow_importance_weights`: log target and log flow densities of flow
  draws, for an importance-sampling estimate of the evidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from numpyro_jko.flows import (
    CouplingFlow,
    FlowParams,
    flow_forward,
    flow_log_prob,
    flow_sample,
)

__all__ = [
    "FlowMALAState",
    "FlowMALAInfo",
    "init",
    "build_kernel",
    "mala_step",
    "independent_mh_step",
    "DualAveragingState",
    "dual_averaging_init",
    "dual_averaging_update",
    "ReplayBuffer",
    "replay_buffer_init",
    "replay_buffer_insert",
    "replay_buffer_sample",
    "flow_importance_weights",
]

Array = jax.Array
PRNGKey = jax.Array
LogDensityFn = Callable[[Array], Array]

#: Optimal MALA acceptance rate in high dimension (Roberts & Rosenthal 1998).
MALA_TARGET_ACCEPTANCE = 0.574


class FlowMALAState(NamedTuple):
    """State of one walker.

    Attributes
    ----------
    position
        Current position, shape ``(dim,)``.
    logdensity
        ``logdensity_fn(position)``.
    logdensity_grad
        Gradient of ``logdensity_fn`` at ``position``; cached so that a MALA
        step needs only the gradient at the proposal.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_jko import mala
    >>> state = mala.init(jnp.ones(2), lambda x: -0.5 * jnp.sum(x**2))
    >>> state.logdensity_grad.tolist()
    [-1.0, -1.0]
    """

    position: Array
    logdensity: Array
    logdensity_grad: Array


class FlowMALAInfo(NamedTuple):
    """Diagnostics of one transition (not carried forward).

    Attributes
    ----------
    local_acceptance
        Metropolis–Hastings acceptance probability of the MALA proposals,
        averaged over the ``num_local_steps`` local steps (0 if there are none).
        This is the quantity step-size adaptation targets.
    local_accepted
        Fraction of the local steps whose proposal was accepted (for one local
        step: 1.0 or 0.0).
    global_acceptance
        Acceptance probability of the flow proposal (0 when the global move is
        disabled).
    global_accepted
        Whether the flow proposal was accepted (False when disabled).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko import mala
    >>> logdensity_fn = lambda x: -0.5 * jnp.sum(x**2)
    >>> kernel = mala.build_kernel(None)  # plain MALA
    >>> _, info = kernel(jax.random.key(0), mala.init(jnp.zeros(2), logdensity_fn),
    ...                  logdensity_fn, None, 0.5)
    >>> sorted(info._asdict())  # doctest: +NORMALIZE_WHITESPACE
    ['global_acceptance', 'global_accepted', 'local_acceptance', 'local_accepted']
    """

    local_acceptance: Array
    local_accepted: Array
    global_acceptance: Array
    global_accepted: Array


def init(position: Array, logdensity_fn: LogDensityFn) -> FlowMALAState:
    """Create the state of one walker at ``position``.

    Parameters
    ----------
    position
        Flat position, shape ``(dim,)``. Must have a finite log density: a
        walker started where the target is NaN never moves (every acceptance
        ratio is NaN and NaN is always rejected).
    logdensity_fn
        Log density of the target (unnormalized), mapping ``(dim,)`` to a scalar.

    Returns
    -------
    FlowMALAState

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko import mala
    >>> logdensity_fn = lambda x: -0.5 * jnp.sum(x**2)
    >>> positions = jnp.zeros((8, 3))  # an ensemble of 8 walkers
    >>> states = jax.vmap(mala.init, in_axes=(0, None))(positions, logdensity_fn)
    >>> states.logdensity.shape
    (8,)
    """
    position = jnp.asarray(position)
    logdensity, logdensity_grad = jax.value_and_grad(logdensity_fn)(position)
    return FlowMALAState(position, logdensity, logdensity_grad)


def _metropolis_accept(rng_key, log_ratio):
    """Acceptance probability and decision for a log MH ratio.

    A NaN ratio comes from a NaN target value or gradient at the proposal (or a
    NaN flow density); it carries no information about the target, so it is
    treated as ratio 0, i.e. always rejected. ``log u < NaN`` would also be
    False, but the explicit replacement keeps the reported acceptance
    probability 0 rather than NaN, so averaged diagnostics stay finite.
    """
    log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
    acceptance = jnp.exp(jnp.minimum(log_ratio, 0.0))
    accepted = jnp.log(jax.random.uniform(rng_key, dtype=acceptance.dtype)) < log_ratio
    return acceptance, accepted


def _is_valid_proposal(position, logdensity, logdensity_grad):
    """Whether a proposed point may be accepted at all.

    Rejecting a proposal with a non-finite position, value or gradient restricts
    the chain to the set where the target and its gradient are defined; MH with
    this extra rejection is exact for the target restricted to that set, which
    is the whole target whenever the bad set has probability zero. Accepting
    such a point would instead poison every later step (a NaN gradient makes all
    later MALA proposals NaN), and +inf "density" is a bug in the target, not a
    mode.
    """
    return (
        jnp.all(jnp.isfinite(position))
        & jnp.isfinite(logdensity)
        & jnp.all(jnp.isfinite(logdensity_grad))
    )


def _select(accepted, new: FlowMALAState, old: FlowMALAState) -> FlowMALAState:
    return FlowMALAState(
        position=jnp.where(accepted, new.position, old.position),
        logdensity=jnp.where(accepted, new.logdensity, old.logdensity),
        logdensity_grad=jnp.where(accepted, new.logdensity_grad, old.logdensity_grad),
    )


def _mala_step(rng_key, state: FlowMALAState, logdensity_fn, step_size):
    """One MALA step, ``x' = x + (eps^2 / 2) grad log pi(x) + eps * xi``."""
    key_noise, key_accept = jax.random.split(rng_key)
    position = state.position
    noise = jax.random.normal(key_noise, position.shape, position.dtype)
    half_squared = 0.5 * step_size**2
    proposal_position = position + half_squared * state.logdensity_grad
    proposal_position = proposal_position + step_size * noise
    proposal_logdensity, proposal_grad = jax.value_and_grad(logdensity_fn)(
        proposal_position
    )
    # Gaussian proposal kernels without their normalizing constants: these
    # cancel in the ratio because the (possibly per-dimension) step size is the
    # same in both directions. Forward residual (x' - x - h grad(x)) / eps = xi.
    log_forward = -0.5 * jnp.sum(noise**2)
    backward_residual = (
        position - proposal_position - half_squared * proposal_grad
    ) / step_size
    log_backward = -0.5 * jnp.sum(backward_residual**2)
    log_ratio = proposal_logdensity - state.logdensity + log_backward - log_forward
    valid = _is_valid_proposal(proposal_position, proposal_logdensity, proposal_grad)
    log_ratio = jnp.where(valid, log_ratio, -jnp.inf)
    acceptance, accepted = _metropolis_accept(key_accept, log_ratio)
    proposal = FlowMALAState(proposal_position, proposal_logdensity, proposal_grad)
    return _select(accepted, proposal, state), acceptance, accepted


def independent_mh_step(
    rng_key: PRNGKey,
    state: FlowMALAState,
    logdensity_fn: LogDensityFn,
    proposal_position: Array,
    proposal_log_q: Array,
    current_log_q: Array,
) -> tuple[FlowMALAState, Array, Array]:
    r"""Independent Metropolis–Hastings move of one walker to a given proposal.

    The proposal :math:`\hat x \sim q` is drawn by the caller (from a flow, a
    pool of pre-drawn points, ...), which also supplies both proposal
    densities; the move is accepted with probability
    :math:`\min\{1, \pi(\hat x) q(x) / (\pi(x) q(\hat x))\}`. Splitting the
    draw from the move lets an ensemble draw every walker's proposal in one
    batched call and lets proposals that are not jittable be drawn outside the
    kernel.

    Parameters
    ----------
    rng_key
        Key for the accept/reject decision only.
    state
        Current walker.
    logdensity_fn
        Unnormalized log target of a flat vector.
    proposal_position
        Proposed point, shape ``(dim,)``.
    proposal_log_q, current_log_q
        ``log q`` at the proposal and at ``state.position`` (any constant common
        to both cancels, so ``q`` need not be normalized here).

    Returns
    -------
    state : FlowMALAState
        New walker, with value and gradient cached at its position (the
        gradient at the proposal is computed whether or not it is accepted, so
        that the next MALA step needs only one gradient).
    acceptance : Array
        Acceptance probability (0 for a NaN or non-finite proposal).
    accepted : Array
        Whether the proposal was accepted.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko import mala
    >>> logdensity_fn = lambda x: -0.5 * jnp.sum(x**2)
    >>> state = mala.init(jnp.zeros(2), logdensity_fn)
    >>> # q = pi: every proposal is accepted.
    >>> new, acceptance, accepted = mala.independent_mh_step(
    ...     jax.random.key(0), state, logdensity_fn, jnp.ones(2),
    ...     logdensity_fn(jnp.ones(2)), logdensity_fn(jnp.zeros(2)))
    >>> float(acceptance), new.position.tolist()
    (1.0, [1.0, 1.0])
    """
    proposal_logdensity, proposal_grad = jax.value_and_grad(logdensity_fn)(
        proposal_position
    )
    log_ratio = proposal_logdensity - state.logdensity + current_log_q - proposal_log_q
    # A current point where q underflows to -inf gives ratio -inf: correct,
    # since q can never propose the reverse move.
    valid = _is_valid_proposal(proposal_position, proposal_logdensity, proposal_grad)
    valid = valid & jnp.isfinite(proposal_log_q)
    log_ratio = jnp.where(valid, log_ratio, -jnp.inf)
    acceptance, accepted = _metropolis_accept(rng_key, log_ratio)
    proposal = FlowMALAState(proposal_position, proposal_logdensity, proposal_grad)
    return _select(accepted, proposal, state), acceptance, accepted


def mala_step(
    rng_key: PRNGKey,
    state: FlowMALAState,
    logdensity_fn: LogDensityFn,
    step_size: float | Array,
) -> tuple[FlowMALAState, Array, Array]:
    """One MALA step of one walker (one ``value_and_grad`` of the target).

    Parameters
    ----------
    rng_key
        Key.
    state
        Current walker (its cached gradient is used, not recomputed).
    logdensity_fn
        Unnormalized log target of a flat vector.
    step_size
        Scalar or per-dimension array.

    Returns
    -------
    state, acceptance, accepted
        As for :func:`independent_mh_step`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko import mala
    >>> logdensity_fn = lambda x: -0.5 * jnp.sum(x**2)
    >>> state = mala.init(jnp.zeros(2), logdensity_fn)
    >>> state, acceptance, accepted = mala.mala_step(
    ...     jax.random.key(0), state, logdensity_fn, 0.5)
    >>> acceptance.shape
    ()
    """
    step_size = jnp.asarray(step_size, state.position.dtype)
    return _mala_step(rng_key, state, logdensity_fn, step_size)


def _global_step(rng_key, state: FlowMALAState, logdensity_fn, flow, flow_params):
    """Independent MH move with the flow as proposal."""
    key_flow, key_accept = jax.random.split(rng_key)
    position = state.position
    base = jax.random.normal(key_flow, position.shape, position.dtype)
    proposal_position, log_det = flow_forward(flow, flow_params, base)
    # log q(x_hat) from the same pass that produced x_hat: no inverse needed.
    proposal_flow_logdensity = (
        -0.5 * jnp.sum(base**2) - 0.5 * base.shape[-1] * math.log(2 * math.pi)
    ) - log_det
    current_flow_logdensity = flow_log_prob(flow, flow_params, position)
    return independent_mh_step(
        key_accept,
        state,
        logdensity_fn,
        proposal_position,
        proposal_flow_logdensity,
        current_flow_logdensity,
    )


def build_kernel(
    flow: CouplingFlow | None, num_local_steps: int = 1
) -> Callable[..., tuple[FlowMALAState, FlowMALAInfo]]:
    r"""Build the flow-assisted MALA transition kernel.

    One transition is ``num_local_steps`` MALA steps

    .. math::

        x' = x + \tfrac{\epsilon^2}{2} \nabla \log \pi(x) + \epsilon \xi,
        \qquad \xi \sim \mathcal N(0, I),

    each accepted with probability
    :math:`\min\{1, \pi(x') k(x \mid x') / (\pi(x) k(x' \mid x))\}` where
    :math:`k` is the Gaussian proposal kernel, followed by one independent MH
    move: draw :math:`\hat x \sim q` from the flow and accept with probability
    :math:`\min\{1, \pi(\hat x) q(x) / (\pi(x) q(\hat x))\}`. Both moves leave
    :math:`\pi` invariant for *fixed* flow parameters; adapting the flow while
    sampling is a warmup-only device.

    Parameters
    ----------
    flow
        Flow architecture of the global proposal, or None for plain MALA.
    num_local_steps
        MALA steps per global move (static). The default 1 interleaves one flow
        proposal per Langevin step, as in Gabrié et al.'s code; 0 gives a pure
        independent-MH sampler.

    Returns
    -------
    Callable
        ``kernel(rng_key, state, logdensity_fn, flow_params, step_size) ->
        (state, info)`` for one walker. ``flow_params=None`` (or ``flow=None``)
        skips the global move, giving plain MALA with the same code path for
        the local steps. ``step_size`` is a scalar or a per-dimension array of
        shape ``(dim,)`` (a diagonal preconditioner); it can be traced, so
        changing it does not recompile a jitted kernel. Cost of one
        transition: ``num_local_steps + 1`` evaluations of
        ``value_and_grad(logdensity_fn)`` (one with the global move off), plus
        one flow sample and one flow density evaluation.

    Examples
    --------
    Plain MALA on one walker, then a jitted flow-assisted ensemble step:

    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko import mala
    >>> from numpyro_jko.flows import CouplingFlow, init_flow
    >>> logdensity_fn = lambda x: -0.5 * jnp.sum(x**2)
    >>> state = mala.init(jnp.zeros(2), logdensity_fn)
    >>> kernel = mala.build_kernel(None)
    >>> state, info = kernel(jax.random.key(0), state, logdensity_fn, None, 0.8)
    >>> flow = CouplingFlow(dim=2, num_layers=2, hidden=(8,))
    >>> flow_params = init_flow(jax.random.key(1), flow)
    >>> kernel = mala.build_kernel(flow)
    >>> @jax.jit
    ... def ensemble_step(keys, states, flow_params, step_size):
    ...     step = lambda k, s: kernel(k, s, logdensity_fn, flow_params, step_size)
    ...     return jax.vmap(step)(keys, states)
    >>> states = jax.vmap(mala.init, (0, None))(jnp.zeros((16, 2)), logdensity_fn)
    >>> keys = jax.random.split(jax.random.key(2), 16)
    >>> states, infos = ensemble_step(keys, states, flow_params, 0.8)
    >>> infos.global_acceptance.shape
    (16,)
    """
    num_local_steps = int(num_local_steps)
    if num_local_steps < 0:
        raise ValueError(f"num_local_steps must be >= 0, got {num_local_steps}")

    def kernel(
        rng_key: PRNGKey,
        state: FlowMALAState,
        logdensity_fn: LogDensityFn,
        flow_params: FlowParams | None,
        step_size: float | Array,
    ) -> tuple[FlowMALAState, FlowMALAInfo]:
        key_local, key_global = jax.random.split(rng_key)
        dtype = state.position.dtype
        step_size = jnp.asarray(step_size, dtype)

        if num_local_steps > 0:

            def one_local_step(carry, key):
                new_state, acceptance, accepted = _mala_step(
                    key, carry, logdensity_fn, step_size
                )
                return new_state, (acceptance, accepted)

            keys = jax.random.split(key_local, num_local_steps)
            state, (acceptances, accepteds) = jax.lax.scan(one_local_step, state, keys)
            local_acceptance = jnp.mean(acceptances)
            local_accepted = jnp.mean(accepteds.astype(dtype))
        else:
            local_acceptance = jnp.zeros((), dtype)
            local_accepted = jnp.zeros((), dtype)

        if flow is None or flow_params is None:
            global_acceptance = jnp.zeros((), dtype)
            global_accepted = jnp.zeros((), bool)
        else:
            state, global_acceptance, global_accepted = _global_step(
                key_global, state, logdensity_fn, flow, flow_params
            )

        info = FlowMALAInfo(
            local_acceptance=local_acceptance,
            local_accepted=local_accepted,
            global_acceptance=global_acceptance,
            global_accepted=global_accepted,
        )
        return state, info

    return kernel


# --------------------------------------------------------------------------
# Step-size adaptation
# --------------------------------------------------------------------------


class DualAveragingState(NamedTuple):
    """State of Nesterov dual averaging of the log step size.

    Attributes
    ----------
    log_step_size
        Log step size to use for the next warmup step.
    log_step_size_avg
        Iterate average of ``log_step_size``; ``exp`` of it is the step size to
        freeze at the end of warmup.
    error_avg
        Running average of ``target_acceptance - acceptance``.
    iteration
        Number of updates so far.
    mu
        Shrinkage point of the log step size, ``log(10 * initial step size)``.

    Examples
    --------
    >>> from numpyro_jko import mala
    >>> state = mala.dual_averaging_init(0.1)
    >>> int(state.iteration)
    0
    """

    log_step_size: Array
    log_step_size_avg: Array
    error_avg: Array
    iteration: Array
    mu: Array


def dual_averaging_init(step_size: float | Array) -> DualAveragingState:
    """Start dual averaging at ``step_size``.

    Parameters
    ----------
    step_size
        Initial step size (scalar; an array adapts each entry with the same
        acceptance signal).

    Returns
    -------
    DualAveragingState
        With shrinkage point ``mu = log(10 * step_size)``, as in NUTS: the
        first few iterates try step sizes up to ~10x the initial one, so
        ``step_size`` should be a conservative guess.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_jko import mala
    >>> state = mala.dual_averaging_init(0.5)
    >>> round(float(jnp.exp(state.log_step_size)), 6)
    0.5
    """
    log_step_size = jnp.log(jnp.asarray(step_size, jnp.result_type(float)))
    zeros = jnp.zeros_like(log_step_size)
    return DualAveragingState(
        log_step_size=log_step_size,
        log_step_size_avg=zeros,
        error_avg=zeros,
        iteration=jnp.zeros((), jnp.int32),
        mu=log_step_size + math.log(10.0),
    )


def dual_averaging_update(
    state: DualAveragingState,
    acceptance: float | Array,
    *,
    target_acceptance: float = MALA_TARGET_ACCEPTANCE,
    t0: float = 10.0,
    gamma: float = 0.05,
    kappa: float = 0.75,
) -> DualAveragingState:
    """One dual-averaging update of the log step size (Hoffman & Gelman 2014).

    Parameters
    ----------
    state
        Current adaptation state.
    acceptance
        Observed MALA acceptance probability of the last step; for an ensemble
        pass the mean of ``info.local_acceptance`` over walkers. NaN is read as
        0 (the kernel never reports NaN, but a caller's average might).
    target_acceptance
        Acceptance to aim for; 0.574 is optimal for MALA.
    t0, gamma, kappa
        The usual dual-averaging constants (NUTS defaults): ``t0`` damps early
        iterations, ``gamma`` sets the shrinkage towards ``mu``, ``kappa`` the
        decay of the averaging weights.

    Returns
    -------
    DualAveragingState
        Use ``exp(log_step_size)`` for the next warmup step and
        ``exp(log_step_size_avg)`` once warmup ends.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_jko import mala
    >>> state = mala.dual_averaging_init(1.0)
    >>> low = mala.dual_averaging_update(state, 0.1)
    >>> high = mala.dual_averaging_update(state, 0.9)
    >>> bool(low.log_step_size < high.log_step_size)  # low acceptance: smaller
    True
    """
    acceptance = jnp.asarray(acceptance, state.log_step_size.dtype)
    acceptance = jnp.where(jnp.isnan(acceptance), 0.0, acceptance)
    iteration = state.iteration + 1
    t = iteration.astype(state.log_step_size.dtype)
    weight = 1.0 / (t + t0)
    error_avg = (1.0 - weight) * state.error_avg + weight * (
        target_acceptance - acceptance
    )
    log_step_size = state.mu - jnp.sqrt(t) / gamma * error_avg
    averaging = t ** (-kappa)
    log_step_size_avg = (
        averaging * log_step_size + (1.0 - averaging) * state.log_step_size_avg
    )
    return DualAveragingState(
        log_step_size=log_step_size,
        log_step_size_avg=log_step_size_avg,
        error_avg=error_avg,
        iteration=iteration,
        mu=state.mu,
    )


# --------------------------------------------------------------------------
# Replay buffer
# --------------------------------------------------------------------------


class ReplayBuffer(NamedTuple):
    """Fixed-size circular buffer of positions.

    Attributes
    ----------
    positions
        Storage, shape ``(capacity, dim)``; rows past ``num_filled`` are zeros.
    next_index
        Row the next insertion starts at.
    num_filled
        Number of valid rows (at most ``capacity``).

    Examples
    --------
    >>> from numpyro_jko import mala
    >>> buffer = mala.replay_buffer_init(100, 3)
    >>> buffer.positions.shape, int(buffer.num_filled)
    ((100, 3), 0)
    """

    positions: Array
    next_index: Array
    num_filled: Array


def replay_buffer_init(capacity: int, dim: int, dtype=None) -> ReplayBuffer:
    """Create an empty buffer.

    Parameters
    ----------
    capacity
        Number of rows kept; once full, the oldest rows are overwritten.
    dim
        Dimension of a position.
    dtype
        Storage dtype (default: jax's default float).

    Returns
    -------
    ReplayBuffer

    Examples
    --------
    >>> from numpyro_jko import mala
    >>> mala.replay_buffer_init(4, 2).positions.tolist()
    [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    return ReplayBuffer(
        positions=jnp.zeros((capacity, dim), dtype),
        next_index=jnp.zeros((), jnp.int32),
        num_filled=jnp.zeros((), jnp.int32),
    )


def replay_buffer_insert(buffer: ReplayBuffer, positions: Array) -> ReplayBuffer:
    """Insert a batch of positions, overwriting the oldest rows when full.

    Parameters
    ----------
    buffer
        Current buffer.
    positions
        Batch of shape ``(n, dim)`` with ``n <= capacity`` (e.g. all walkers'
        current positions).

    Returns
    -------
    ReplayBuffer

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_jko import mala
    >>> buffer = mala.replay_buffer_init(3, 1)
    >>> buffer = mala.replay_buffer_insert(buffer, jnp.array([[1.0], [2.0]]))
    >>> buffer = mala.replay_buffer_insert(buffer, jnp.array([[3.0], [4.0]]))
    >>> buffer.positions[:, 0].tolist(), int(buffer.num_filled)
    ([4.0, 2.0, 3.0], 3)
    """
    capacity = buffer.positions.shape[0]
    num_new = positions.shape[0]
    if num_new > capacity:
        # Several rows would map to one slot and scatter order is unspecified.
        raise ValueError(f"batch of {num_new} rows exceeds capacity {capacity}")
    rows = (buffer.next_index + jnp.arange(num_new)) % capacity
    return ReplayBuffer(
        positions=buffer.positions.at[rows].set(
            positions.astype(buffer.positions.dtype)
        ),
        next_index=(buffer.next_index + num_new) % capacity,
        num_filled=jnp.minimum(buffer.num_filled + num_new, capacity),
    )


def replay_buffer_sample(
    rng_key: PRNGKey, buffer: ReplayBuffer, batch_size: int
) -> Array:
    """Draw ``batch_size`` rows uniformly, with replacement, from the filled rows.

    Parameters
    ----------
    rng_key
        Key.
    buffer
        Buffer with at least one filled row (an empty buffer returns zeros).
    batch_size
        Number of rows (static).

    Returns
    -------
    Array
        Shape ``(batch_size, dim)``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko import mala
    >>> buffer = mala.replay_buffer_init(10, 1)
    >>> buffer = mala.replay_buffer_insert(buffer, jnp.array([[5.0], [6.0]]))
    >>> batch = mala.replay_buffer_sample(jax.random.key(0), buffer, 50)
    >>> sorted(set(batch[:, 0].tolist()))
    [5.0, 6.0]
    """
    rows = jax.random.randint(
        rng_key, (batch_size,), 0, jnp.maximum(buffer.num_filled, 1)
    )
    return buffer.positions[rows]


# --------------------------------------------------------------------------
# Evidence
# --------------------------------------------------------------------------


def flow_importance_weights(
    rng_key: PRNGKey,
    flow: CouplingFlow,
    params: FlowParams,
    logdensity_fn: LogDensityFn,
    num_samples: int,
) -> tuple[Array, Array]:
    r"""Target and flow log densities at fresh flow draws.

    With :math:`x_i \sim q`, :math:`\log Z \approx \log \frac1n \sum_i
    \exp(\log g_i - \log q_i)` where :math:`g` is the unnormalized target. This
    is unbiased for :math:`Z` (not for :math:`\log Z`) only if the flow's
    parameters are independent of the draws, so use a frozen flow and a fresh
    key. The flow must be normalized in data space, which
    :func:`numpyro_jko.flows.flow_log_prob` is.

    Parameters
    ----------
    rng_key
        Key for the flow draws.
    flow, params
        Frozen flow.
    logdensity_fn
        Unnormalized log target, ``(dim,) -> scalar``; vmapped here.
    num_samples
        Number of draws (static).

    Returns
    -------
    log_g : Array
        ``logdensity_fn`` at the draws, shape ``(num_samples,)``. NaN values are
        replaced by ``-inf`` (zero weight), the same convention as the kernel's
        rejection of NaN proposals.
    log_q : Array
        Flow log density of the draws, shape ``(num_samples,)``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from jax.scipy.special import logsumexp
    >>> from numpyro_jko import mala
    >>> from numpyro_jko.flows import CouplingFlow, init_flow
    >>> flow = CouplingFlow(dim=2, num_layers=2, hidden=(8,))
    >>> params = init_flow(jax.random.key(0), flow)
    >>> logdensity_fn = lambda x: -0.5 * jnp.sum(x**2)  # Z = 2 pi
    >>> log_g, log_q = mala.flow_importance_weights(
    ...     jax.random.key(1), flow, params, logdensity_fn, 1000)
    >>> log_z = logsumexp(log_g - log_q) - jnp.log(1000.0)
    >>> round(float(log_z), 4)  # the flow is exactly the target here
    1.8379
    """
    positions, log_q = flow_sample(rng_key, flow, params, num_samples)
    log_g = jax.vmap(logdensity_fn)(positions)
    log_g = jnp.where(jnp.isnan(log_g), -jnp.inf, log_g)
    return log_g, log_q
