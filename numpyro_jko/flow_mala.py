# SPDX-License-Identifier: Apache-2.0
r"""Flow-assisted MALA as a NumPyro ensemble :class:`~numpyro.infer.mcmc.MCMCKernel`.

:class:`FlowMALA` runs ``num_chains`` walkers (NumPyro "chains") as one
ensemble, with ``MCMC(..., chain_method="vectorized")``. One MCMC iteration
moves every walker by

1. an independent Metropolis–Hastings move whose proposal is drawn from a
   *global proposal* shared by all walkers (every ``global_every`` iterations);
2. ``num_local_steps`` MALA steps with a step size shared by all walkers.

During ``num_warmup`` the step size is adapted by dual averaging towards
acceptance 0.574 and the global proposal is trained on a replay buffer of recent
walker positions (Gabrié, Rotskoff & Vanden-Eijnden, PNAS 2022). At the end of
warmup both are frozen, so the sampling phase is a fixed, :math:`\pi`-invariant
Markov kernel: R-hat and ESS apply, and the frozen proposal gives an
importance-sampling evidence estimate (:meth:`FlowMALA.log_evidence`).

Global proposals are strategy objects:

* :class:`CouplingFlowProposal` (default): a RealNVP flow
  (:mod:`numpyro_jko.flows`) trained by forward KL, all inside the jitted step;
* :class:`JKOProposal`: an importance-corrected neural JKO chain
  (:func:`numpyro_jko.jko.fit`) trained once before sampling, with exact draws
  and densities; its sampler is host-side, so draws come from a pool refilled
  through :func:`jax.pure_callback`.

Walkers must start in every mode: :func:`init_to_spread` (prior draws, then a
few hundred Adam steps on the potential) spreads them over the modes reachable
from the prior.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from numpyro.infer.ensemble_util import batch_ravel_pytree
from numpyro.infer.initialization import init_to_sample
from numpyro.infer.mcmc import MCMCKernel
from numpyro.infer.util import initialize_model
from numpyro.util import identity, is_prng_key

from numpyro_jko import chain as chain_lib
from numpyro_jko import mala
from numpyro_jko.evidence import Evidence, log_evidence
from numpyro_jko.flows import (
    CouplingFlow,
    FlowParams,
    flow_log_prob,
    flow_sample,
    init_flow,
    make_train_step,
)

__all__ = [
    "FlowMALA",
    "FlowMALAKernelState",
    "GlobalProposal",
    "ProposalFns",
    "CouplingFlowProposal",
    "CouplingFlowState",
    "JKOProposal",
    "SpreadInit",
    "init_to_spread",
    "to_inference_data",
]

Array = jax.Array
PRNGKey = jax.Array


# --------------------------------------------------------------------------
# Global proposals (strategy objects)
# --------------------------------------------------------------------------


class ProposalFns(NamedTuple):
    """Functions of a global proposal bound to one target and ensemble.

    Built by :meth:`GlobalProposal.build`; every function but
    ``evidence_draws`` is traced inside the jitted MCMC step.

    Attributes
    ----------
    init
        ``init(rng_key, positions) -> state`` with ``positions`` of shape
        ``(num_walkers, dim)``; runs eagerly, once, in :meth:`FlowMALA.init`.
    sample
        ``sample(rng_key, state, n) -> (state, x, log_q)``: ``n`` independent
        draws of shape ``(n, dim)`` and their normalized log density. The state
        is returned because a pool-based proposal advances an index.
    log_prob
        ``log_prob(state, x) -> log_q`` for points of shape ``(n, dim)``.
    update
        ``update(rng_key, state, positions, iteration) -> state``: one warmup
        adaptation step given the walkers' current positions.
    evidence_draws
        ``evidence_draws(rng_key, state, n) -> (log_g, log_q)`` as NumPy arrays
        (host side, not traced): target and proposal log densities at ``n``
        fresh draws.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko.flow_mala import CouplingFlowProposal
    >>> fns = CouplingFlowProposal(num_layers=2, hidden=(8,)).build(
    ...     lambda x: -0.5 * jnp.sum(x**2), dim=2, num_walkers=4, num_warmup=10)
    >>> state = fns.init(jax.random.key(0), jnp.zeros((4, 2)))
    >>> state, x, log_q = fns.sample(jax.random.key(1), state, 3)
    >>> x.shape, log_q.shape
    ((3, 2), (3,))
    """

    init: Callable
    sample: Callable
    log_prob: Callable
    update: Callable
    evidence_draws: Callable


class GlobalProposal(abc.ABC):
    """Abstract global proposal of :class:`FlowMALA` (a strategy object).

    Subclasses are final, frozen dataclasses holding configuration only; the
    trained parameters live in the kernel state, as a pytree returned by
    ``build(...).init``.

    Examples
    --------
    >>> from numpyro_jko.flow_mala import CouplingFlowProposal, GlobalProposal
    >>> isinstance(CouplingFlowProposal(), GlobalProposal)
    True
    """

    #: Default ``FlowMALA(global_every=None)`` for this proposal.
    default_global_every: int = 1

    @abc.abstractmethod
    def build(
        self, logdensity_fn: Callable, dim: int, num_walkers: int, num_warmup: int
    ) -> ProposalFns:
        """Bind the proposal to a target and an ensemble; see :class:`ProposalFns`.

        :meth:`FlowMALA.init` calls it with the flat log density, the dimension,
        the number of walkers and the number of warmup iterations.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from numpyro_jko.flow_mala import CouplingFlowProposal, ProposalFns
        >>> fns = CouplingFlowProposal(num_layers=2, hidden=(8,)).build(
        ...     lambda x: -0.5 * jnp.sum(x**2), 2, 4, 10)
        >>> isinstance(fns, ProposalFns)
        True
        """


class CouplingFlowState(NamedTuple):
    """Warmup state of :class:`CouplingFlowProposal`.

    Attributes
    ----------
    params
        :class:`~numpyro_jko.flows.FlowParams` of the flow.
    opt_state
        optax state of the optimizer (on ``params.network``).
    buffer
        :class:`~numpyro_jko.mala.ReplayBuffer` of recent walker positions.
    loss
        Forward-KL loss of the last training batch (``nan`` before any).
    num_updates
        Optimizer steps taken.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko.flow_mala import CouplingFlowProposal
    >>> fns = CouplingFlowProposal(num_layers=2, hidden=(8,)).build(
    ...     lambda x: -0.5 * jnp.sum(x**2), dim=2, num_walkers=4, num_warmup=10)
    >>> int(fns.init(jax.random.key(0), jnp.zeros((4, 2))).num_updates)
    0
    """

    params: FlowParams
    opt_state: Any
    buffer: mala.ReplayBuffer
    loss: Array
    num_updates: Array


def _buffer_moments(buffer: mala.ReplayBuffer) -> tuple[Array, Array]:
    """Mean and standard deviation of the filled rows of a replay buffer."""
    capacity = buffer.positions.shape[0]
    filled = (jnp.arange(capacity) < buffer.num_filled).astype(buffer.positions.dtype)
    count = jnp.maximum(jnp.sum(filled), 1.0)
    mean = filled @ buffer.positions / count
    var = filled @ (buffer.positions - mean) ** 2 / count
    return mean, jnp.sqrt(var)


def _standardize(params: FlowParams, mean: Array, std: Array) -> FlowParams:
    dtype = params.shift.dtype
    mean, std = mean.astype(dtype), std.astype(dtype)
    # A coordinate with no spread (all walkers equal) keeps scale 1 so that the
    # flow density stays finite.
    negligible = std <= 8 * jnp.finfo(dtype).eps * (1 + jnp.abs(mean))
    return FlowParams(params.network, mean, jnp.where(negligible, 1.0, std))


@dataclasses.dataclass(frozen=True)
class CouplingFlowProposal(GlobalProposal):
    """RealNVP global proposal trained by forward KL during warmup (default).

    Each warmup iteration inserts the walkers' positions into a replay buffer
    holding the last ``history`` iterations; every ``train_every`` iterations
    the flow's standardisation is reset to the buffer's mean and standard
    deviation and ``train_steps`` optimizer steps are taken on batches drawn
    from the buffer. Nothing changes after warmup.

    Parameters
    ----------
    num_layers, hidden, log_scale_bound
        Architecture (:class:`~numpyro_jko.flows.CouplingFlow`).
    optimizer
        An optax ``GradientTransformation``; ``None`` builds the default,
        global-norm clipping at 1 followed by Adam whose learning rate decays
        from ``learning_rate`` to 10% of it by cosine over the warmup: a
        decaying rate makes the flow that gets frozen the average of the last
        few hundred updates rather than one noisy iterate. A user-supplied
        optimizer cannot be pickled with the kernel (optax closures).
    learning_rate
        Peak learning rate of the default optimizer.
    batch_size
        Training batch size (drawn with replacement from the buffer).
    train_every, train_steps
        Training schedule: ``train_steps`` optimizer steps every
        ``train_every`` warmup iterations.
    history
        Warmup iterations kept in the buffer (its capacity is
        ``history * num_walkers`` positions).
    start_fraction
        Fraction of the warmup without training: walkers started at modes by
        an optimizer need some MALA steps before they look like draws.

    Examples
    --------
    >>> from numpyro_jko.flow_mala import CouplingFlowProposal
    >>> proposal = CouplingFlowProposal(num_layers=4, hidden=(32, 32))
    >>> proposal.batch_size
    256
    """

    num_layers: int = 6
    hidden: tuple[int, ...] = (64, 64)
    log_scale_bound: float = 3.0
    optimizer: Any = None
    learning_rate: float = 1e-3
    batch_size: int = 256
    train_every: int = 1
    train_steps: int = 1
    history: int = 100
    start_fraction: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.train_every < 1 or self.train_steps < 1:
            raise ValueError("train_every and train_steps must be >= 1")
        if not 0.0 <= self.start_fraction < 1.0:
            raise ValueError("start_fraction must be in [0, 1)")

    def flow(self, dim: int) -> CouplingFlow:
        """The flow architecture for dimension ``dim``.

        Examples
        --------
        >>> CouplingFlowProposal(num_layers=2).flow(3).num_layers
        2
        """
        return CouplingFlow(
            dim=dim,
            num_layers=self.num_layers,
            hidden=self.hidden,
            log_scale_bound=self.log_scale_bound,
        )

    def _num_rounds(self, num_warmup: int) -> tuple[int, int]:
        start = int(self.start_fraction * num_warmup)
        rounds = max(len(range(start, num_warmup, self.train_every)), 1)
        return start, rounds

    def default_optimizer(self, num_warmup: int) -> optax.GradientTransformation:
        """Clip-then-Adam with a cosine-decayed learning rate over the warmup.

        Examples
        --------
        >>> opt = CouplingFlowProposal().default_optimizer(100)
        >>> type(opt).__name__
        'GradientTransformationExtraArgs'
        """
        _, rounds = self._num_rounds(num_warmup)
        schedule = optax.cosine_decay_schedule(
            self.learning_rate, max(rounds * self.train_steps, 1), alpha=0.1
        )
        return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))

    def build(self, logdensity_fn, dim, num_walkers, num_warmup) -> ProposalFns:
        """The flow's functions: draws and densities, replay buffer and training.

        ``init`` initialises the flow on the walkers' positions; ``update`` is one
        warmup iteration (buffer insert, and training when due); the optimizer's
        schedule spans ``num_warmup`` iterations.

        Examples
        --------
        >>> import jax, jax.numpy as jnp
        >>> fns = CouplingFlowProposal(num_layers=2, hidden=(8,)).build(
        ...     lambda x: -0.5 * jnp.sum(x**2), dim=2, num_walkers=4, num_warmup=10)
        >>> state = fns.init(jax.random.key(0), jnp.zeros((4, 2)))
        >>> fns.log_prob(state, jnp.zeros((3, 2))).shape
        (3,)
        >>> int(state.num_updates)  # fns.update trains it, during warmup
        0
        """
        flow = self.flow(dim)
        optimizer = self.optimizer or self.default_optimizer(num_warmup)
        train_step = make_train_step(flow, optimizer)
        start, _ = self._num_rounds(num_warmup)
        capacity = max(self.history, 1) * num_walkers
        batch_size, train_every, train_steps = (
            self.batch_size,
            self.train_every,
            self.train_steps,
        )

        # Jitted: flax initialisation op by op takes seconds on a CPU.
        @jax.jit
        def init(rng_key, positions):
            params = init_flow(rng_key, flow, data=positions)
            buffer = mala.replay_buffer_init(capacity, dim, params.shift.dtype)
            buffer = mala.replay_buffer_insert(buffer, positions)
            return CouplingFlowState(
                params=params,
                opt_state=optimizer.init(params.network),
                buffer=buffer,
                loss=jnp.full((), jnp.nan, params.shift.dtype),
                num_updates=jnp.zeros((), jnp.int32),
            )

        def sample(rng_key, state, n):
            x, log_q = flow_sample(rng_key, flow, state.params, n)
            return state, x, log_q

        def log_prob(state, x):
            return flow_log_prob(flow, state.params, x)

        def train(rng_key, state):
            params = _standardize(state.params, *_buffer_moments(state.buffer))

            def one_step(carry, key):
                params, opt_state = carry
                batch = mala.replay_buffer_sample(key, state.buffer, batch_size)
                params, opt_state, loss = train_step(params, opt_state, batch)
                return (params, opt_state), loss

            keys = jax.random.split(rng_key, train_steps)
            (params, opt_state), losses = jax.lax.scan(
                one_step, (params, state.opt_state), keys
            )
            return CouplingFlowState(
                params=params,
                opt_state=opt_state,
                buffer=state.buffer,
                loss=losses[-1].astype(state.loss.dtype),
                num_updates=state.num_updates + train_steps,
            )

        def update(rng_key, state, positions, iteration):
            state = state._replace(
                buffer=mala.replay_buffer_insert(state.buffer, positions)
            )
            do_train = (iteration >= start) & ((iteration - start) % train_every == 0)
            return jax.lax.cond(do_train, train, lambda _, s: s, rng_key, state)

        def evidence_draws(rng_key, state, n):
            return _flow_evidence_draws(rng_key, flow, state.params, logdensity_fn, n)

        return ProposalFns(init, sample, log_prob, update, evidence_draws)


def _flow_evidence_draws(rng_key, flow, params, logdensity_fn, n, chunk=4096):
    """``(log_g, log_q)`` at ``n`` flow draws, in fixed-size jitted chunks."""

    @jax.jit
    def one_chunk(key, params):
        x, log_q = flow_sample(key, flow, params, chunk)
        return jax.vmap(logdensity_fn)(x), log_q

    log_g, log_q = [], []
    for c in range(-(-n // chunk)):
        g, q = one_chunk(jax.random.fold_in(rng_key, c), params)
        log_g.append(np.asarray(g))
        log_q.append(np.asarray(q))
    return np.concatenate(log_g)[:n], np.concatenate(log_q)[:n]


class _JKOPool(NamedTuple):
    x: Array
    log_q: Array
    index: Array


@dataclasses.dataclass(frozen=True)
class JKOProposal(GlobalProposal):
    """Global proposal from an importance-corrected neural JKO chain.

    The chain is trained once, on the target itself, by
    :func:`numpyro_jko.jko.fit` in :meth:`FlowMALA.init` (before the warmup), so
    it needs no replay buffer and is frozen from the start. Its draws and
    densities are exact (rejection layers included). The JKO sampler runs on the
    host and cannot be called from inside the jitted MCMC step (a
    ``jax.pure_callback`` into it deadlocks on a one-core CPU, measured), so
    ``pool_size`` draws are made up front, in :meth:`FlowMALA.init`, and each
    global move consumes ``num_walkers`` of them; once the pool is used up,
    global moves propose nothing (every one is rejected, counted with
    acceptance 0; the kernel is then plain MALA, still exact). Size the pool as ``num_walkers x`` the
    number of global moves wanted, e.g. ``num_chains * (num_warmup +
    num_samples) // global_every``. The density at the walkers' current
    positions (a reverse ODE solve and Newton refinement per CNF layer) is
    evaluated inside the step; it is the dominant cost, hence a global move
    every ``global_every = 10`` iterations by default.

    Parameters
    ----------
    config
        :class:`numpyro_jko.jko.JKOConfig` of the chain.
    pool_size
        Number of pre-drawn proposals.

    Examples
    --------
    >>> from numpyro_jko import JKOConfig
    >>> from numpyro_jko.flow_mala import JKOProposal
    >>> JKOProposal(JKOConfig(num_particles=1024), pool_size=8192).pool_size
    8192
    """

    config: Any = None
    pool_size: int = 4096
    default_global_every: int = 10

    def build(self, logdensity_fn, dim, num_walkers, num_warmup) -> ProposalFns:
        """The chain's functions; training and the pool of draws happen in ``init``.

        The pool holds ``max(pool_size, num_walkers)`` draws.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from numpyro_jko import JKOConfig
        >>> from numpyro_jko.flow_mala import JKOProposal
        >>> proposal = JKOProposal(JKOConfig(num_particles=512), pool_size=64)
        >>> fns = proposal.build(lambda x: -0.5 * jnp.sum(x**2), 2, 4, 10)
        >>> fns._fields[:3]  # nothing trained yet: fns.init trains the chain
        ('init', 'sample', 'log_prob')
        """
        from numpyro_jko import jko

        config = self.config if self.config is not None else jko.JKOConfig()
        pool_size = max(int(self.pool_size), num_walkers)
        holder: dict[str, Any] = {}
        dtype = jnp.result_type(float)

        def init(rng_key, positions):
            key_fit, key_pool = jax.random.split(rng_key)
            chain, _ = jko.fit(key_fit, logdensity_fn, dim, config, progress_bar=False)
            holder["chain"] = chain
            x, energy, _ = jko.draw(key_pool, chain, pool_size)
            return _JKOPool(
                jnp.asarray(x, dtype),
                jnp.asarray(-energy, dtype),
                jnp.zeros((), jnp.int32),
            )

        def sample(rng_key, state, n):
            del rng_key  # the pool was drawn with the init key
            exhausted = state.index + n > state.x.shape[0]
            start = jnp.minimum(state.index, state.x.shape[0] - n)
            x = jax.lax.dynamic_slice_in_dim(state.x, start, n)
            log_q = jax.lax.dynamic_slice_in_dim(state.log_q, start, n)
            # An exhausted pool proposes nothing (log q = -inf: always rejected)
            # rather than reusing draws, which would break independence.
            log_q = jnp.where(exhausted, jnp.nan, log_q)
            return state._replace(index=state.index + n), x, log_q

        def log_prob(state, x):
            del state
            return chain_lib.traced_log_prob(holder["chain"], x).astype(dtype)

        def update(rng_key, state, positions, iteration):
            del rng_key, positions, iteration
            return state  # trained once, before the warmup

        def evidence_draws(rng_key, state, n):
            del state
            _, energy, log_g = jko.draw(rng_key, holder["chain"], n)
            return np.asarray(log_g), -np.asarray(energy)

        return ProposalFns(init, sample, log_prob, update, evidence_draws)


# --------------------------------------------------------------------------
# Initialisation that spreads walkers over the modes
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpreadInit:
    """Init strategy: per-walker prior draws, then Adam steps on the potential.

    Built by :func:`init_to_spread`; see there.

    Attributes
    ----------
    num_steps : int
        Adam steps (0: the draws of ``site_strategy`` as they are).
    learning_rate : float
        Adam's learning rate.
    site_strategy : callable
        NumPyro init strategy of each walker's starting draw (default
        ``init_to_sample``).

    Examples
    --------
    >>> from numpyro_jko.flow_mala import SpreadInit
    >>> SpreadInit().num_steps
    300
    """

    num_steps: int = 300
    learning_rate: float = 0.05
    site_strategy: Callable = init_to_sample

    def optimize(self, logdensity_fn: Callable, positions: Array) -> Array:
        """Run the Adam steps from ``positions`` of shape ``(n, dim)``.

        A walker whose step would make the log density or its gradient
        non-finite keeps its previous position for that step.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from numpyro_jko.flow_mala import SpreadInit
        >>> x = SpreadInit(num_steps=500, learning_rate=0.1).optimize(
        ...     lambda x: -0.5 * jnp.sum((x - 3.0) ** 2), jnp.zeros((2, 1)))
        >>> bool(jnp.allclose(x, 3.0, atol=0.05))
        True
        """
        if self.num_steps <= 0:
            return positions
        optimizer = optax.adam(self.learning_rate)
        value_and_grad = jax.vmap(jax.value_and_grad(logdensity_fn))

        @jax.jit
        def run(positions):
            def step(carry, _):
                x, opt_state = carry
                value, grad = value_and_grad(x)
                ok = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad), axis=-1)
                grad = jnp.where(ok[:, None], grad, 0.0)
                # Ascent on the log density = descent on the potential.
                updates, opt_state = optimizer.update(-grad, opt_state, x)
                return (optax.apply_updates(x, updates), opt_state), None

            (x, _), _ = jax.lax.scan(
                step, (positions, optimizer.init(positions)), None, self.num_steps
            )
            value, grad = value_and_grad(x)
            ok = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad), axis=-1)
            return jnp.where(ok[:, None], x, positions)

        return run(positions)


def init_to_spread(
    num_steps: int = 300, learning_rate: float = 0.05, site_strategy=init_to_sample
) -> SpreadInit:
    """Spread walkers over the modes: prior draws, then a short optimisation.

    Each walker starts from its own draw of ``site_strategy`` (by default a
    prior draw, NumPyro's :func:`~numpyro.infer.initialization.init_to_sample`)
    and takes ``num_steps`` Adam steps of size ``learning_rate`` up the log
    density (on the unconstrained space). Walkers end near the modes whose
    basins the prior reaches, so that every such mode has walkers in it, which
    a flow trained on walker positions needs (it cannot learn a mode no walker
    visits). The fraction of walkers per mode then reflects basin sizes, not
    mode weights; the global moves correct that during warmup. With
    ``potential_fn`` (no prior) the optimisation starts from ``init_params``.

    Parameters
    ----------
    num_steps
        Adam steps (0: plain ``site_strategy``).
    learning_rate
        Adam step size; Adam moves each coordinate by at most about this much
        per step, whatever the scale of the gradient.
    site_strategy
        A NumPyro per-site init strategy for the starting points.

    Returns
    -------
    SpreadInit
        Pass as ``FlowMALA(..., init_strategy=init_to_spread())``.

    Examples
    --------
    >>> from numpyro_jko.flow_mala import init_to_spread
    >>> init_to_spread(num_steps=100).num_steps
    100
    """
    return SpreadInit(int(num_steps), float(learning_rate), site_strategy)


# --------------------------------------------------------------------------
# The NumPyro kernel
# --------------------------------------------------------------------------


class FlowMALAKernelState(NamedTuple):
    """State of :class:`FlowMALA` for the whole ensemble.

    Fields with a leading walker axis (``z``, ``walkers``, ``accept_prob``,
    ``global_accept_prob``) can be collected with ``extra_fields``; the
    others are ensemble-wide.

    Attributes
    ----------
    i
        Iteration (warmup included).
    z
        Unconstrained positions, a pytree with leading axis ``num_walkers``.
    walkers
        :class:`~numpyro_jko.mala.FlowMALAState` of every walker (flat
        position, cached log density and gradient).
    step_size
        MALA step size (frozen after warmup).
    proposal_state
        State of the global proposal (frozen after warmup).
    adapt_state
        :class:`~numpyro_jko.mala.DualAveragingState` of the step size.
    accept_prob
        Per-walker mean MALA acceptance probability of this iteration.
    global_accept_prob
        Per-walker acceptance probability of this iteration's global move
        (``nan`` on iterations without one).
    mean_accept_prob
        Running mean of ``accept_prob`` over the current phase (warmup or
        sampling).
    mean_global_accept_prob
        Running mean of ``global_accept_prob`` over the global iterations of
        the current phase.
    rng_key
        Key of the next iteration.

    Examples
    --------
    >>> from numpyro_jko.flow_mala import FlowMALAKernelState
    >>> "global_accept_prob" in FlowMALAKernelState._fields
    True
    """

    i: Array
    z: Any
    walkers: mala.FlowMALAState
    step_size: Array
    proposal_state: Any
    adapt_state: mala.DualAveragingState
    accept_prob: Array
    global_accept_prob: Array
    mean_accept_prob: Array
    mean_global_accept_prob: Array
    rng_key: Array


class FlowMALA(MCMCKernel):
    r"""Flow-assisted MALA: an ensemble kernel with a concurrently trained flow.

    Every walker (a NumPyro chain) alternates an independent Metropolis–Hastings
    move proposed by a global proposal shared by the ensemble with
    ``num_local_steps`` MALA steps

    .. math::

        x' = x + \tfrac{\epsilon^2}{2} \nabla \log \pi(x) + \epsilon \xi.

    During warmup the step size :math:`\epsilon` is adapted towards acceptance
    ``target_accept_prob`` and the proposal is trained on recent walker
    positions; both are frozen when warmup ends, so the samples are those of a
    fixed :math:`\pi`-invariant kernel. Use with
    ``MCMC(..., num_chains=W, chain_method="vectorized")``.

    Cost of one iteration per walker: ``num_local_steps`` gradient evaluations
    plus, on global iterations, one more (the target's value and gradient at
    the proposal, so that the next MALA step needs only one), plus the flow.

    Parameters
    ----------
    model
        A NumPyro model with continuous latent sites.
    potential_fn
        Alternatively, a potential (negative log density) of one pytree shaped
        like one walker of ``init_params`` (then ``MCMC.run(...,
        init_params=...)`` with a leading walker axis is required).
    proposal
        A :class:`GlobalProposal` (default :class:`CouplingFlowProposal`).
    step_size
        Initial MALA step size; dual averaging explores up to ten times it.
    adapt_step_size
        Adapt during warmup (otherwise ``step_size`` is used throughout).
    target_accept_prob
        MALA acceptance to aim for (0.574 is optimal in high dimension).
    num_local_steps
        MALA steps per iteration.
    global_every
        A global move every this many iterations (``None``: the proposal's
        default, 1 for the coupling flow). ``0`` turns global moves and
        proposal training off: a plain MALA ensemble with the same step-size
        adaptation, the baseline the global moves are measured against.
    init_strategy
        :func:`init_to_spread` (default) or any NumPyro init strategy.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import MCMC
    >>> from numpyro_jko import FlowMALA, CouplingFlowProposal
    >>> def model():
    ...     numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    >>> kernel = FlowMALA(model, proposal=CouplingFlowProposal(num_layers=2, hidden=(8,)))
    >>> mcmc = MCMC(kernel, num_warmup=50, num_samples=50, num_chains=8,
    ...             chain_method="vectorized", progress_bar=False)
    >>> mcmc.run(jax.random.key(0))
    >>> mcmc.get_samples(group_by_chain=True)["x"].shape
    (8, 50, 2)
    >>> est = kernel.log_evidence(num_samples=2000)  # log Z = 0 here
    >>> abs(est.log_Z) < 0.2
    True
    """

    def __init__(
        self,
        model=None,
        potential_fn=None,
        *,
        proposal: GlobalProposal | None = None,
        step_size: float = 0.1,
        adapt_step_size: bool = True,
        target_accept_prob: float = mala.MALA_TARGET_ACCEPTANCE,
        num_local_steps: int = 1,
        global_every: int | None = None,
        init_strategy=None,
    ):
        if not (model is None) ^ (potential_fn is None):
            raise ValueError("Only one of `model` or `potential_fn` must be specified.")
        if num_local_steps < 1:
            raise ValueError("num_local_steps must be >= 1")
        self._model = model
        self._user_potential_fn = potential_fn
        self._proposal = CouplingFlowProposal() if proposal is None else proposal
        if not isinstance(self._proposal, GlobalProposal):
            raise TypeError("proposal must be a GlobalProposal instance")
        self._step_size = float(step_size)
        self._adapt_step_size = bool(adapt_step_size)
        self._target_accept_prob = float(target_accept_prob)
        self._num_local_steps = int(num_local_steps)
        self._global_every = int(
            self._proposal.default_global_every
            if global_every is None
            else global_every
        )
        if self._global_every < 0:
            raise ValueError("global_every must be >= 0")
        self._init_strategy = (
            init_to_spread() if init_strategy is None else init_strategy
        )
        # Set by init():
        self._num_warmup = None
        self._potential_fn = potential_fn
        self._postprocess_fn = None
        self._prototype = None
        self._build_args = None
        self._fns = None
        self._frozen = None

    # -- MCMCKernel interface ------------------------------------------------

    @property
    def model(self):
        """The NumPyro model (None with ``potential_fn``).

        Examples
        --------
        >>> import numpyro, numpyro.distributions as dist
        >>> from numpyro_jko import FlowMALA
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> FlowMALA(model).model is model
        True
        """
        return self._model

    @property
    def sample_field(self):
        """The state field that ``MCMC`` collects as samples, ``"z"`` (as in HMC).

        ``z`` holds the walkers' unconstrained positions.

        Examples
        --------
        >>> from numpyro_jko import FlowMALA
        >>> FlowMALA(potential_fn=lambda x: x @ x).sample_field
        'z'
        """
        return "z"

    @property
    def default_fields(self):
        """The fields ``MCMC`` collects by default, only ``z``.

        Add per-walker acceptances with ``extra_fields=("accept_prob",
        "global_accept_prob")`` (see :class:`FlowMALAKernelState`).

        Examples
        --------
        >>> from numpyro_jko import FlowMALA
        >>> FlowMALA(potential_fn=lambda x: x @ x).default_fields
        ('z',)
        """
        return ("z",)

    @property
    def is_ensemble_kernel(self):
        """Always ``True``, as ``MCMC``'s chains are the walkers of one ensemble.

        So run it with ``num_chains >= 2`` and ``chain_method="vectorized"``.

        Examples
        --------
        >>> from numpyro_jko import FlowMALA
        >>> FlowMALA(potential_fn=lambda x: x @ x).is_ensemble_kernel
        True
        """
        return True

    @property
    def proposal(self) -> GlobalProposal:
        """The global proposal strategy.

        Examples
        --------
        >>> from numpyro_jko import FlowMALA, JKOProposal
        >>> type(FlowMALA(potential_fn=lambda x: x @ x).proposal).__name__
        'CouplingFlowProposal'
        >>> FlowMALA(potential_fn=lambda x: x @ x, proposal=JKOProposal()).proposal
        JKOProposal(config=None, pool_size=4096, default_global_every=10)
        """
        return self._proposal

    def postprocess_fn(self, args, kwargs):
        """Unconstrained ``z`` to constrained values plus ``deterministic`` sites.

        The identity with ``potential_fn`` and before :meth:`init`.

        Examples
        --------
        >>> import jax, jax.numpy as jnp
        >>> import numpyro, numpyro.distributions as dist
        >>> from numpyro_jko import CouplingFlowProposal, FlowMALA
        >>> def model():
        ...     numpyro.sample("sigma", dist.HalfNormal(1.0))
        >>> kernel = FlowMALA(model, proposal=CouplingFlowProposal(num_layers=2,
        ...                                                        hidden=(8,)))
        >>> kernel.postprocess_fn((), {})({"sigma": 0.0})  # not initialised yet
        {'sigma': 0.0}
        >>> _ = kernel.init(jax.random.split(jax.random.key(0), 4), 10)
        >>> constrain = kernel.postprocess_fn((), {})  # sigma = exp(z)
        >>> round(float(constrain({"sigma": jnp.log(2.0)})["sigma"]), 4)
        2.0
        """
        if self._postprocess_fn is None:
            return identity
        return self._postprocess_fn(*args, **kwargs)

    def get_diagnostics_str(self, state):
        """Progress-bar postfix: mean local and global acceptance and the step size.

        The means run over the current phase (warmup or sampling).

        Examples
        --------
        >>> import jax, jax.numpy as jnp
        >>> from numpyro_jko import CouplingFlowProposal, FlowMALA
        >>> kernel = FlowMALA(potential_fn=lambda x: 0.5 * jnp.sum(x**2),
        ...                   proposal=CouplingFlowProposal(num_layers=2, hidden=(8,)))
        >>> state = kernel.init(jax.random.split(jax.random.key(0), 4), 10,
        ...                     init_params=jnp.zeros((4, 2)))
        >>> kernel.get_diagnostics_str(state)  # nothing sampled yet
        'local acc. 0.00, global acc. 0.00, step size 1.00e-01'
        """
        local = float(state.mean_accept_prob)
        global_ = float(state.mean_global_accept_prob)
        return (
            f"local acc. {local:.2f}, global acc. {global_:.2f}, "
            f"step size {float(state.step_size):.2e}"
        )

    def _logdensity(self):
        # Built lazily from picklable pieces (the potential and one walker's
        # prototype), so that an unpickled kernel can still evaluate it.
        if getattr(self, "_logdensity_fn", None) is None:
            _, unravel = ravel_pytree(self._prototype)
            potential_fn = self._potential_fn
            self._unravel = unravel
            self._logdensity_fn = lambda x: -potential_fn(unravel(x))
        return self._logdensity_fn

    def _proposal_fns(self) -> ProposalFns:
        # Rebuilt after unpickling (closures are not pickled).
        if self._fns is None:
            self._fns = self._proposal.build(self._logdensity(), *self._build_args)
        return self._fns

    def init(
        self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs=None
    ):
        """Place the walkers and initialise the proposal; ``MCMC.run`` calls it.

        ``rng_key`` is a batch of keys, one per walker (``MCMC`` passes that with
        ``chain_method="vectorized"``); ``init_params``, if given, have a leading
        walker axis.  With :func:`init_to_spread` the walkers start from prior
        draws moved by Adam steps; :class:`JKOProposal` trains its chain here.

        Examples
        --------
        >>> import jax, jax.numpy as jnp
        >>> from numpyro_jko import CouplingFlowProposal, FlowMALA
        >>> kernel = FlowMALA(potential_fn=lambda x: 0.5 * jnp.sum(x**2),
        ...                   proposal=CouplingFlowProposal(num_layers=2, hidden=(8,)))
        >>> state = kernel.init(jax.random.split(jax.random.key(0), 4), 10,
        ...                     init_params=jnp.zeros((4, 2)))
        >>> int(state.i), state.z.shape, round(float(state.step_size), 4)
        (0, (4, 2), 0.1)
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        if is_prng_key(rng_key):
            raise ValueError(
                "FlowMALA is an ensemble kernel: use MCMC(..., num_chains=W, "
                "chain_method='vectorized') with W >= 2 walkers."
            )
        num_walkers = rng_key.shape[0]
        key_state, key_model, key_proposal = jax.random.split(rng_key[0], 3)
        spread = isinstance(self._init_strategy, SpreadInit)
        if self._model is not None:
            site_strategy = (
                self._init_strategy.site_strategy if spread else self._init_strategy
            )
            params_info, potential_fn_gen, postprocess_fn, _ = initialize_model(
                jax.random.split(key_model, num_walkers),
                self._model,
                dynamic_args=True,
                init_strategy=site_strategy,
                model_args=model_args,
                model_kwargs=model_kwargs,
                validate_grad=False,
            )
            self._postprocess_fn = postprocess_fn
            self._potential_fn = potential_fn_gen(*model_args, **model_kwargs)
            if init_params is None:
                init_params = params_info[0]
        elif init_params is None:
            raise ValueError(
                "Valid value of `init_params` must be provided with `potential_fn`."
            )
        leaves = jax.tree.leaves(init_params)
        if any(jnp.shape(leaf)[:1] != (num_walkers,) for leaf in leaves):
            raise ValueError(
                "init_params must have a leading axis of size num_chains "
                f"({num_walkers})."
            )
        self._prototype = jax.tree.map(lambda a: np.asarray(a[0]), init_params)
        self._logdensity_fn = None
        logdensity_fn = self._logdensity()
        flat, batch_unravel = batch_ravel_pytree(init_params)
        flat = jnp.asarray(flat, jnp.result_type(float))
        self._batch_unravel = batch_unravel
        if spread:
            flat = self._init_strategy.optimize(logdensity_fn, flat)
        walkers = jax.jit(jax.vmap(mala.init, (0, None)), static_argnums=1)(
            flat, logdensity_fn
        )
        finite = np.asarray(jnp.isfinite(walkers.logdensity))
        if not finite.all():
            raise ValueError(
                f"The log density is not finite at {int((~finite).sum())} of "
                f"{num_walkers} initial walkers; pass init_params inside the support."
            )
        dim = flat.shape[1]
        self._num_warmup = int(num_warmup)
        # MCMC re-runs init() unless it sees a sample function (e.g. when
        # sampling after MCMC.warmup), which would redo the work above.
        self._sample_fn = self.sample
        self._build_args = (dim, num_walkers, max(self._num_warmup, 1))
        self._fns = None
        proposal_state = self._proposal_fns().init(key_proposal, flat)
        step_size = jnp.asarray(self._step_size, flat.dtype)
        self._frozen = None
        if self._num_warmup == 0:
            self._frozen = (proposal_state, step_size)
        nan = jnp.full((num_walkers,), jnp.nan, flat.dtype)
        zero = jnp.zeros((), flat.dtype)
        return FlowMALAKernelState(
            i=jnp.zeros((), jnp.int32),
            z=batch_unravel(flat),
            walkers=walkers,
            step_size=step_size,
            proposal_state=proposal_state,
            adapt_state=mala.dual_averaging_init(step_size),
            accept_prob=nan,
            global_accept_prob=nan,
            mean_accept_prob=zero,
            mean_global_accept_prob=zero,
            rng_key=key_state,
        )

    def sample(self, state, model_args, model_kwargs):
        """One iteration of the ensemble: a global move (when due), then MALA steps.

        During warmup it also adapts the step size and trains the proposal;
        ``model_args`` are those of :meth:`init` (the potential is bound there).

        Examples
        --------
        ``global_every=0`` (MALA steps only) keeps the example fast: with global
        moves, the first step also compiles the flow's training.

        >>> import jax, jax.numpy as jnp
        >>> from numpyro_jko import FlowMALA
        >>> kernel = FlowMALA(potential_fn=lambda x: 0.5 * jnp.sum(x**2),
        ...                   global_every=0)
        >>> state = kernel.init(jax.random.split(jax.random.key(0), 4), 10,
        ...                     init_params=jnp.zeros((4, 2)))
        >>> state = jax.jit(kernel.sample, static_argnums=(1, 2))(state, (), ())
        >>> int(state.i), state.accept_prob.shape
        (1, (4,))
        """
        logdensity_fn = self._logdensity()
        fns = self._proposal_fns()
        num_warmup = self._num_warmup
        walkers = state.walkers
        num_walkers, dtype = walkers.position.shape[0], walkers.position.dtype
        rng_key, key_global, key_local, key_update = jax.random.split(state.rng_key, 4)
        i = state.i
        warmup = i < num_warmup
        phase_index = jnp.where(warmup, i, i - num_warmup)

        # Global move: one independent MH proposal per walker, drawn in one
        # batch from the shared proposal.
        def global_move(operand):
            walkers, proposal_state = operand
            key_draw, key_accept = jax.random.split(key_global)
            proposal_state, x, log_q = fns.sample(key_draw, proposal_state, num_walkers)
            current_log_q = fns.log_prob(proposal_state, walkers.position)
            walkers, acceptance, _ = jax.vmap(
                mala.independent_mh_step, (0, 0, None, 0, 0, 0)
            )(
                jax.random.split(key_accept, num_walkers),
                walkers,
                logdensity_fn,
                x,
                log_q.astype(dtype),
                current_log_q.astype(dtype),
            )
            return walkers, proposal_state, acceptance.astype(dtype)

        def no_global_move(operand):
            walkers, proposal_state = operand
            return walkers, proposal_state, jnp.full((num_walkers,), jnp.nan, dtype)

        operand = (walkers, state.proposal_state)
        if self._global_every == 0:  # plain MALA ensemble
            walkers, proposal_state, global_acc = no_global_move(operand)
            is_global = jnp.zeros((), bool)
        elif self._global_every == 1:
            walkers, proposal_state, global_acc = global_move(operand)
            is_global = jnp.ones((), bool)
        else:
            is_global = phase_index % self._global_every == 0
            walkers, proposal_state, global_acc = jax.lax.cond(
                is_global, global_move, no_global_move, operand
            )

        # Local moves.
        step_size = state.step_size

        def local_step(walkers, key):
            walkers, acceptance, _ = jax.vmap(mala.mala_step, (0, 0, None, None))(
                jax.random.split(key, num_walkers), walkers, logdensity_fn, step_size
            )
            return walkers, acceptance

        walkers, local_acc = jax.lax.scan(
            local_step, walkers, jax.random.split(key_local, self._num_local_steps)
        )
        local_acc = jnp.mean(local_acc, axis=0).astype(dtype)

        # Warmup adaptation, frozen afterwards.
        adapt_state = state.adapt_state
        if self._adapt_step_size:
            adapt_state = jax.lax.cond(
                warmup,
                lambda s: mala.dual_averaging_update(
                    s, jnp.mean(local_acc), target_acceptance=self._target_accept_prob
                ),
                identity,
                adapt_state,
            )
            step_size = jnp.where(
                i == num_warmup - 1,
                jnp.exp(adapt_state.log_step_size_avg),
                jnp.where(warmup, jnp.exp(adapt_state.log_step_size), step_size),
            ).astype(dtype)
        if self._global_every > 0:  # plain MALA has nothing to train
            proposal_state = jax.lax.cond(
                warmup,
                lambda s: fns.update(key_update, s, walkers.position, i),
                identity,
                proposal_state,
            )

        def record(proposal_state, step_size):
            self._frozen = (proposal_state, step_size)

        jax.lax.cond(
            i == num_warmup - 1,
            lambda: jax.debug.callback(record, proposal_state, step_size),
            lambda: None,
        )

        # Running means over the current phase.
        n = (phase_index + 1).astype(dtype)
        mean_acc = (
            state.mean_accept_prob + (jnp.mean(local_acc) - state.mean_accept_prob) / n
        )
        n_global = (phase_index // max(self._global_every, 1) + 1).astype(dtype)
        mean_global = jnp.where(
            is_global,
            state.mean_global_accept_prob
            + (jnp.mean(global_acc) - state.mean_global_accept_prob) / n_global,
            state.mean_global_accept_prob,
        )
        return FlowMALAKernelState(
            i=i + 1,
            z=self._batch_unravel(walkers.position),
            walkers=walkers,
            step_size=step_size,
            proposal_state=proposal_state,
            adapt_state=adapt_state,
            accept_prob=local_acc,
            global_accept_prob=global_acc,
            mean_accept_prob=mean_acc,
            mean_global_accept_prob=mean_global,
            rng_key=rng_key,
        )

    def __getstate__(self):
        state = self.__dict__.copy()
        # Closures (jitted functions, optax transformations, unravel maps) are
        # rebuilt by init(); the frozen proposal state is kept as NumPy arrays.
        for name in (
            "_fns",
            "_logdensity_fn",
            "_unravel",
            "_batch_unravel",
            "_sample_fn",
        ):
            state[name] = None
        if state.get("_frozen") is not None:
            state["_frozen"] = jax.tree.map(np.asarray, state["_frozen"])
        return state

    # -- Evidence --------------------------------------------------------------

    def frozen_proposal_state(self, state: FlowMALAKernelState | None = None):
        """The proposal state frozen at the end of warmup.

        Parameters
        ----------
        state
            A post-warmup kernel state (e.g. ``mcmc.last_state``); ``None``
            uses the one recorded by the last warmup this kernel ran.

        Returns
        -------
        pytree
            E.g. a :class:`CouplingFlowState` (its ``params`` are the flow).

        Examples
        --------
        See :meth:`log_evidence`.
        """
        if state is not None:
            return state.proposal_state
        jax.effects_barrier()  # the warmup-end callback may still be in flight
        if self._frozen is None:
            raise RuntimeError(
                "No frozen proposal: run MCMC (with this kernel) first, or pass "
                "state=mcmc.last_state."
            )
        return self._frozen[0]

    def log_evidence(
        self,
        state: FlowMALAKernelState | None = None,
        rng_key: PRNGKey | None = None,
        num_samples: int = 20000,
    ) -> Evidence:
        r"""Importance-sampling evidence from the frozen global proposal.

        :math:`\log Z \approx \log \frac1n \sum_i g(x_i) / q(x_i)` with
        :math:`x_i \sim q` fresh draws of the proposal frozen at the end of
        warmup and :math:`g = \exp(-\text{potential})`, so for a model this is
        the model's marginal likelihood (constraint Jacobians included).

        Parameters
        ----------
        state
            Post-warmup kernel state, default: the one recorded at the end of
            the last warmup.
        rng_key
            Key for the draws (default ``jax.random.key(0)``); use a key not
            used for training.
        num_samples
            Number of proposal draws.

        Returns
        -------
        Evidence
            ``log_Z``, its standard error ``log_Z_se``, ELBO, weight ESS and
            PSIS ``pareto_k`` (above 0.7 the standard error is unreliable).

        Examples
        --------
        >>> import jax, jax.numpy as jnp
        >>> from numpyro.infer import MCMC
        >>> from numpyro_jko import FlowMALA, CouplingFlowProposal
        >>> potential_fn = lambda x: 0.5 * jnp.sum((x - 1.0) ** 2)  # Z = 2 pi
        >>> kernel = FlowMALA(potential_fn=potential_fn,
        ...                   proposal=CouplingFlowProposal(num_layers=2, hidden=(8,)))
        >>> mcmc = MCMC(kernel, num_warmup=100, num_samples=10, num_chains=8,
        ...             chain_method="vectorized", progress_bar=False)
        >>> mcmc.run(jax.random.key(0), init_params=jnp.zeros((8, 2)))
        >>> est = kernel.log_evidence(mcmc.last_state, num_samples=4000)
        >>> bool(abs(est.log_Z - jnp.log(2 * jnp.pi)) < 4 * est.log_Z_se + 0.02)
        True
        """
        proposal_state = self.frozen_proposal_state(state)
        if self._prototype is None:
            raise RuntimeError("The kernel has not been initialised (run MCMC first).")
        rng_key = jax.random.key(0) if rng_key is None else rng_key
        log_g, log_q = self._proposal_fns().evidence_draws(
            rng_key, proposal_state, num_samples
        )
        return log_evidence(log_g, log_q)


# --------------------------------------------------------------------------
# ArviZ
# --------------------------------------------------------------------------


def to_inference_data(
    mcmc,
    evidence: Evidence | None = None,
    *,
    model_args: tuple | None = None,
    model_kwargs: dict | None = None,
    **evidence_kwargs,
):
    """ArviZ ``InferenceData`` of a :class:`FlowMALA` run, with evidence attrs.

    Built by :func:`numpyro_jko.inference_data.to_inference_data`, so it has the
    same layout and (``InferenceData``-level) attributes as the JKO sampler's:
    ``log_evidence``,
    ``log_evidence_se``, ``weight_ess`` and ``pareto_k`` (computed by
    :meth:`FlowMALA.log_evidence` unless ``evidence`` is given), the pointwise
    log likelihood of a model's observed sites, and ``sample_stats.lp`` when the
    run collected ``extra_fields=("walkers.logdensity",)``.

    Parameters
    ----------
    mcmc
        A ``numpyro.infer.MCMC`` that ran a :class:`FlowMALA` kernel.
    evidence
        Precomputed :class:`~numpyro_jko.evidence.Evidence`.
    model_args, model_kwargs
        The model's arguments (default: those of the last ``mcmc.run``).
    **evidence_kwargs
        Passed to :meth:`FlowMALA.log_evidence` (``num_samples``, ``rng_key``).

    Returns
    -------
    arviz.InferenceData

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro.infer import MCMC
    >>> from numpyro_jko import FlowMALA, CouplingFlowProposal
    >>> from numpyro_jko.flow_mala import to_inference_data
    >>> kernel = FlowMALA(potential_fn=lambda x: 0.5 * jnp.sum(x**2),
    ...                   proposal=CouplingFlowProposal(num_layers=2, hidden=(8,)))
    >>> mcmc = MCMC(kernel, num_warmup=50, num_samples=20, num_chains=4,
    ...             chain_method="vectorized", progress_bar=False)
    >>> mcmc.run(jax.random.key(0), init_params=jnp.zeros((4, 2)))
    >>> idata = to_inference_data(mcmc, num_samples=1000)
    >>> sorted(k for k in idata.attrs if "evidence" in k)
    ['log_evidence', 'log_evidence_se']
    """
    from numpyro_jko.inference_data import to_inference_data as build

    kernel = mcmc.sampler
    if evidence is None:
        evidence = kernel.log_evidence(mcmc.last_state, **evidence_kwargs)
    samples = mcmc.get_samples()
    if not isinstance(samples, dict):
        samples = {"x": samples}
    lp = mcmc.get_extra_fields().get("walkers.logdensity")
    return build(
        samples,
        lp=None if lp is None else np.asarray(lp),
        model=kernel.model,
        model_args=tuple(getattr(mcmc, "_args", ()))
        if model_args is None
        else model_args,
        model_kwargs=dict(getattr(mcmc, "_kwargs", {}))
        if model_kwargs is None
        else model_kwargs,
        evidence=evidence,
        num_chains=mcmc.num_chains,
    )
