"""A trained importance-corrected JKO chain: drawing from it and evaluating its density.

A chain is a Gaussian latent followed by layers, each either a CNF
(:class:`CNFLayer`) or an importance rejection layer
(:class:`~numpyro_jko.rejection.RejectionLayer`).  Every draw carries its energy
``E = -log p`` (``p`` the chain's normalized density) and the target's log density
``log g``, so importance weights ``log g + E`` come for free.

Sampling through rejection layers has data-dependent sizes (a rejected point is
replaced by a fresh draw from the layer below).  We keep every compiled function on
a fixed chunk shape: each level of the chain is a *stream* with a small host-side
buffer; a rejection layer takes a chunk of candidates from the stream below,
counts its rejections ``k``, takes exactly ``k`` more draws from that stream as
replacements (padded to the chunk shape), and fills them in.  A rejection level
takes only as many candidates as its request still needs (padded to the chunk
shape, the padding never rejected), so the levels below are asked for about
``prod(1 + r)`` draws per output and only the fused bottom, where the solves are,
rounds up to whole chunks.  Leftovers stay in the buffer for the next request, so
nothing recompiles.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_jko import cnf as cnf_lib
from numpyro_jko import defensive
from numpyro_jko.defensive import DefensiveLayer
from numpyro_jko.rejection import RejectionLayer, acceptance_probability, energy_update
from numpyro_jko.sharding import constrain

__all__ = [
    "CNFLayer",
    "JKOChain",
    "latent_energy",
    "layer_kind",
    "eval_logdensity",
    "draw",
    "sample",
    "log_prob",
    "traced_log_prob",
    "chain_to_dict",
    "chain_from_dict",
]

DEFAULT_CHUNK = 4096
MIN_CHUNK = 4096


class CNFLayer(NamedTuple):
    """Parameters of one trained CNF layer (its shape is the chain's ``spec``).

    Examples
    --------
    >>> import jax
    >>> from numpyro_jko.cnf import CNFSpec, init_velocity
    >>> layer = CNFLayer(init_velocity(jax.random.key(0), CNFSpec(dim=2, hidden=8)))
    >>> type(layer).__name__
    'CNFLayer'
    """

    params: Any


class JKOChain(NamedTuple):
    """A trained chain of CNF and rejection layers over a Gaussian latent.

    Attributes
    ----------
    logdensity_fn : callable
        Unnormalized target log density of one flat vector; the rejection layers
        evaluate it at sampling time.
    spec : CNFSpec
        Shape and solver shared by every CNF layer.
    latent_mean : Array, shape (d,)
    latent_scale : Array, scalar
    layers : tuple
        ``CNFLayer``, ``RejectionLayer`` and
        :class:`~numpyro_jko.defensive.DefensiveLayer` entries, bottom (latent
        side) first.
    density_divergence : None or Hutchinson
        How CNF log-determinants are computed when drawing: ``None`` is the exact
        log-determinant of the solver map (see :func:`numpyro_jko.cnf.push_forward`).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_jko.cnf import CNFSpec
    >>> chain = JKOChain(lambda x: -0.5 * x @ x, CNFSpec(2, 8), jnp.zeros(2),
    ...                  jnp.array(1.0), ())
    >>> chain.dim
    2
    """

    logdensity_fn: Callable
    spec: cnf_lib.CNFSpec
    latent_mean: jax.Array
    latent_scale: jax.Array
    layers: tuple = ()
    density_divergence: Any = None

    @property
    def dim(self) -> int:
        """Dimension of the flat vectors drawn (``spec.dim``).

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from numpyro_jko.cnf import CNFSpec
        >>> JKOChain(lambda x: -x @ x, CNFSpec(3, 8), jnp.zeros(3), jnp.array(1.0)).dim
        3
        """
        return self.spec.dim

    @property
    def num_cnf(self) -> int:
        """Number of CNF layers.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from numpyro_jko.cnf import CNFSpec
        >>> chain = JKOChain(lambda x: -x @ x, CNFSpec(2, 8), jnp.zeros(2),
        ...                  jnp.array(1.0), (CNFLayer(None),))
        >>> chain.num_cnf
        1
        """
        return sum(isinstance(layer, CNFLayer) for layer in self.layers)

    @property
    def num_rejection(self) -> int:
        """Number of rejection layers.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from numpyro_jko.cnf import CNFSpec
        >>> chain = JKOChain(lambda x: -x @ x, CNFSpec(2, 8), jnp.zeros(2),
        ...                  jnp.array(1.0), (RejectionLayer(0.0, 0.2),))
        >>> chain.num_rejection
        1
        """
        return sum(isinstance(layer, RejectionLayer) for layer in self.layers)

    def sampling_cost(self, rate: float | None = None) -> tuple[float, float]:
        """Expected (latent draws, CNF solves) per output draw: ``1.2**#R`` growth.

        Uses each layer's fitted ``rbar`` unless ``rate`` is given.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from numpyro_jko.cnf import CNFSpec
        >>> from numpyro_jko.rejection import RejectionLayer
        >>> layers = (CNFLayer(None),) + (RejectionLayer(0.0, 0.2),) * 3
        >>> chain = JKOChain(lambda x: -0.5 * x @ x, CNFSpec(2, 8), jnp.zeros(2),
        ...                  jnp.array(1.0), layers)
        >>> chain.num_cnf, chain.num_rejection
        (1, 3)
        >>> [round(v, 3) for v in chain.sampling_cost()]  # 1.2 ** 3 of each
        [1.728, 1.728]
        >>> # The reference's mustache stack, C x 6 then [C R R R] x 6: about 221
        >>> # solves per draw (neural_jko_ic.md, section 1.3).
        >>> block = (CNFLayer(None),) + (RejectionLayer(0.0, 0.2),) * 3
        >>> chain = chain._replace(layers=(CNFLayer(None),) * 6 + block * 6)
        >>> round(chain.sampling_cost()[1])
        221
        """
        # Bottom up, per draw leaving each level: a CNF adds its one solve, a
        # rejection layer multiplies everything below by the draws it consumes.
        latent, solves = 1.0, 0.0
        for k, layer in enumerate(self.layers):
            if isinstance(layer, CNFLayer):
                solves += 1.0
            elif isinstance(layer, DefensiveLayer):
                # A proposal draw (counted as a latent draw) costs a pull-back
                # through every CNF below (a reverse solve, counted as one each).
                below = sum(isinstance(lay, CNFLayer) for lay in self.layers[:k])
                w = float(layer.weight)
                latent = latent * (1 - w) + w
                solves = solves * (1 - w) + w * below
            else:
                factor = 1.0 + (float(layer.rbar) if rate is None else rate)
                latent, solves = latent * factor, solves * factor
        return latent, solves


def latent_energy(x, mean, scale):
    """``-log N(x; mean, diag(scale)^2)`` per row of ``x``.

    ``scale`` is a scalar or a vector of per-coordinate scales.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> round(float(latent_energy(jnp.zeros((1, 2)), jnp.zeros(2), 1.0)[0]), 4)
    1.8379
    """
    dim = x.shape[-1]
    eps = (x - mean) / scale
    log_scale = jnp.sum(jnp.broadcast_to(jnp.log(scale), (dim,)))
    return (
        0.5 * jnp.sum(eps * eps, axis=-1)
        + 0.5 * dim * math.log(2 * math.pi)
        + log_scale
    )


def eval_logdensity(logdensity_fn, x):
    """Target log density of each row of ``x``; NaN is mapped to ``-inf``.

    A NaN density can only come from a numerical failure of the target; treating it
    as zero density means rejection layers never keep such a point and importance
    weights give it weight 0.  Callers that must *report* such points compare with
    ``jnp.isfinite``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> eval_logdensity(lambda v: -jnp.sum(v**2), jnp.ones((2, 3))).tolist()
    [-3.0, -3.0]
    """
    values = jax.vmap(logdensity_fn)(x)
    return jnp.where(jnp.isnan(values), -jnp.inf, values)


# ----------------------------------------------------------------------------------
# Jitted per-chunk operations. Static arguments are hashable (functions by identity,
# specs by value), so every chunk of every call reuses one compiled program.


@partial(jax.jit, static_argnames=("logdensity_fn", "dim", "size"))
def _latent_chunk(rng_key, mean, scale, *, logdensity_fn, dim, size):
    eps = constrain(jax.random.normal(rng_key, (size, dim), dtype=mean.dtype))
    x = mean + scale * eps
    energy = latent_energy(x, mean, scale)
    return x, energy, eval_logdensity(logdensity_fn, x)


@partial(jax.jit, static_argnames=("logdensity_fn", "spec", "divergence"))
def _cnf_chunk(rng_key, params, x, energy, *, logdensity_fn, spec, divergence):
    x, energy = constrain(x), constrain(energy)
    y, logdet = cnf_lib.push_forward(spec, params, x, divergence, rng_key)
    return y, energy + logdet, eval_logdensity(logdensity_fn, y)


@partial(
    jax.jit,
    static_argnames=("logdensity_fn", "spec", "divergence", "size", "defensive_layer"),
)
def _base_chunk(
    rng_key,
    mean,
    scale,
    params,
    *,
    logdensity_fn,
    spec,
    divergence,
    size,
    defensive_layer=None,
):
    # The latent and every CNF under the first rejection layer in one program: no
    # host round trip between them, and the target is evaluated once, at the top
    # (each intermediate evaluation is wasted work, costly for expensive models).
    eps = jax.random.normal(
        jax.random.fold_in(rng_key, 0), (size, spec.dim), dtype=mean.dtype
    )
    x = mean + scale * constrain(eps)
    if defensive_layer is not None:
        # A defensive mixture right over the latent: its density below is the
        # latent's, known in closed form, so no pull-back is needed.  (Its key is
        # a fold apart from the latent's, 0, and the CNFs', 1 and up.)
        key_q = jax.random.fold_in(rng_key, -1 % 2**31)
        x_q = defensive.proposal_sample(key_q, defensive_layer, mean, scale, size)
        from_q = jax.random.bernoulli(
            jax.random.fold_in(key_q, 1), defensive_layer.weight, (size,)
        )
        x = constrain(jnp.where(from_q[:, None], x_q, x))
    energy = latent_energy(x, mean, scale)
    if defensive_layer is not None:
        energy = defensive.energy_update(energy, x, defensive_layer, mean, scale)
    for i, layer_params in enumerate(params):
        x, logdet = cnf_lib.push_forward(
            spec, layer_params, x, divergence, jax.random.fold_in(rng_key, i + 1)
        )
        energy = energy + logdet
    return x, energy, eval_logdensity(logdensity_fn, x)


@jax.jit
def _rejection_mask(rng_key, energy, log_g, log_c):
    alpha = acceptance_probability(log_g + energy, log_c)
    return jax.random.uniform(rng_key, alpha.shape, alpha.dtype) >= alpha


@jax.jit
def _rejection_fill(candidates, replacements, rejected, layer):
    # The j-th rejected candidate takes the j-th replacement (replacements are
    # i.i.d., so any fixed assignment is valid).
    index = jnp.clip(jnp.cumsum(rejected) - 1, 0, None)
    out = [
        jnp.where(rejected.reshape((-1,) + (1,) * (c.ndim - 1)), r[index], c)
        for c, r in zip(candidates, replacements, strict=True)
    ]
    x, energy, log_g = out
    return x, energy_update(energy, log_g + energy, layer), log_g


def _pad(arrays, size: int):
    # Pad with host-side zeros to the chunk shape: slicing device arrays to a
    # data-dependent length compiled a new slice for every length (half of all
    # sampling time, measured).
    return tuple(
        jnp.asarray(
            np.concatenate([a, np.zeros((size - len(a),) + a.shape[1:], a.dtype)])
        )
        for a in arrays
    )


class _Stream:
    """Host-side buffer of draws from one level of a chain (see module docstring)."""

    def __init__(self, chain: JKOChain, level: int, rng_key, size: int, below):
        self.chain, self.level, self.size, self.below = chain, level, size, below
        self.key = jax.random.fold_in(rng_key, level)
        self.count = 0
        self.buffer = None
        self.proposal = None  # the proposal draws of a defensive level

    def _next_key(self):
        self.count += 1
        return jax.random.fold_in(self.key, self.count)

    def _produce(self, need: int):
        chain, size = self.chain, self.size
        if self.below is None and self.level > 0:
            # The fused bottom of the chain: latent, a defensive mixture right over
            # it, and the leading CNFs together.
            bottom = chain.layers[: self.level]
            defensive_layer = None
            if isinstance(bottom[0], DefensiveLayer):
                defensive_layer, bottom = bottom[0], bottom[1:]
            return _base_chunk(
                self._next_key(),
                chain.latent_mean,
                chain.latent_scale,
                tuple(layer.params for layer in bottom),
                logdensity_fn=chain.logdensity_fn,
                spec=chain.spec,
                divergence=chain.density_divergence,
                size=size,
                defensive_layer=defensive_layer,
            )
        if self.level == 0:
            return _latent_chunk(
                self._next_key(),
                chain.latent_mean,
                chain.latent_scale,
                logdensity_fn=chain.logdensity_fn,
                dim=chain.dim,
                size=size,
            )
        layer = chain.layers[self.level - 1]
        if isinstance(layer, DefensiveLayer):
            return self._produce_defensive(need, layer)
        if isinstance(layer, CNFLayer):
            # A solve costs the same on a padded chunk: take a whole one.
            candidates = self.below.take(size)
            return _cnf_chunk(
                self._next_key(),
                layer.params,
                *(jnp.asarray(a) for a in candidates[:2]),
                logdensity_fn=chain.logdensity_fn,
                spec=chain.spec,
                divergence=chain.density_divergence,
            )
        # Only about the candidates this request needs: a whole chunk here would
        # make every level below over-produce in turn (measured: 4096 draws through
        # nine layers cost 61 440 bottom draws instead of 21 000).  At least an
        # eighth of a chunk, so that small top-ups are served from the buffer.
        num_valid = min(size, max(need, size // 8))
        # One request below for the candidates and their expected replacements:
        # asking twice (candidates, then replacements) doubled the calls at every
        # level down, 2**R calls through R layers.
        self.below.fill(num_valid + round(num_valid * float(layer.rbar)))
        candidates = _pad(self.below.take(num_valid), size)
        rejected = np.array(  # a writable host copy
            _rejection_mask(self._next_key(), candidates[1], candidates[2], layer.log_c)
        )
        rejected[num_valid:] = False
        num_rejected = int(rejected.sum())
        replacements = _pad(self.below.take(num_rejected), size)
        filled = _rejection_fill(candidates, replacements, jnp.asarray(rejected), layer)
        # Trim on the host (a device slice would compile once per length).
        return tuple(np.asarray(a)[:num_valid] for a in filled)

    def _produce_defensive(self, need: int, layer: DefensiveLayer):
        # Each draw comes from the proposal with probability ``weight``: the
        # proposal's draws (with ``p_in`` at them, a pull-back through the layers
        # below) come from their own buffer, made a whole chunk at a time, so that
        # the pull-backs cost in proportion to the proposal draws used.
        chain, size = self.chain, self.size
        num_valid = min(size, max(need, size // 8))
        from_q = np.asarray(
            jax.random.bernoulli(self._next_key(), layer.weight, (num_valid,))
        )
        num_q = int(from_q.sum())
        if self.proposal is None:
            self.proposal = _ProposalStream(chain, self.level, self.key, size)
        from_below = self.below.take(num_valid - num_q)
        from_proposal = self.proposal.take(num_q)
        mixed = []
        for below, proposal in zip(from_below, from_proposal, strict=True):
            out = np.empty((num_valid,) + below.shape[1:], below.dtype)
            out[~from_q], out[from_q] = below, proposal
            mixed.append(out)
        x, energy_in, log_g = mixed
        energy = _defensive_update(
            jnp.asarray(energy_in),
            jnp.asarray(x),
            layer,
            chain.latent_mean,
            chain.latent_scale,
        )
        return x, np.asarray(energy), log_g

    def fill(self, n: int):
        """Produce until at least ``n`` draws are buffered."""
        while self.buffer is None or len(self.buffer[0]) < n:
            have = 0 if self.buffer is None else len(self.buffer[0])
            chunk = tuple(np.asarray(a) for a in self._produce(n - have))
            if self.buffer is None:
                self.buffer = chunk
            else:
                self.buffer = tuple(
                    np.concatenate([b, c])
                    for b, c in zip(self.buffer, chunk, strict=True)
                )

    def take(self, n: int):
        self.fill(n)
        out = tuple(b[:n] for b in self.buffer)
        self.buffer = tuple(b[n:] for b in self.buffer)
        return out


class _ProposalStream(_Stream):
    """Draws of a defensive layer's proposal, with the density below at each."""

    def __init__(self, chain: JKOChain, level: int, rng_key, size: int):
        super().__init__(
            chain, level, jax.random.fold_in(rng_key, 1_000_003), size, None
        )

    def _produce(self, need: int):
        chain, layer = self.chain, self.chain.layers[self.level - 1]
        x = defensive.proposal_sample(
            self._next_key(), layer, chain.latent_mean, chain.latent_scale, self.size
        )
        below = chain._replace(layers=chain.layers[: self.level - 1])
        energy = -log_prob(below, x, chunk_size=self.size, rng_key=self._next_key())
        log_g = _logdensity_chunk(chain.logdensity_fn, x)
        return x, energy, log_g


_defensive_update = jax.jit(defensive.energy_update)


def _chunk_shape(n: int, chunk_size: int | None) -> int:
    # One compiled shape per chain by default (MIN_CHUNK = chunk size = 4096): each
    # new shape compiles every layer's solve again (15-40 s on a 2-core CPU), while
    # a chunk of 4096 2-D draws per layer costs a fraction of a second.  (Powers of
    # two from 256 made the quickstart compile four shapes for four request sizes.)
    # 4096 is also the fastest chunk measured: 50k draws of a 2-CNF, 12-rejection
    # chain took 10.2 s on one core vs 12.3 s (8192), 11.3 s (2048), 19.9 s (16384).
    limit = int(chunk_size or DEFAULT_CHUNK)
    return min(limit, max(MIN_CHUNK, 1 << max(int(n) - 1, 0).bit_length()))


def draw(rng_key, chain: JKOChain, num_samples: int, chunk_size: int | None = None):
    """Draw ``(x, energy, log_g)`` as NumPy arrays: positions, ``-log p``, ``log g``.

    The workhorse behind :func:`~numpyro_jko.chain.sample`; ``log_g`` is returned so that importance
    weights need no second evaluation of the target.  Memory is bounded by a few
    chunks per layer plus the output.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko.cnf import CNFSpec
    >>> chain = JKOChain(lambda x: -0.5 * x @ x, CNFSpec(2, 8), jnp.zeros(2),
    ...                  jnp.array(1.0))
    >>> x, energy, log_g = draw(jax.random.key(0), chain, 5)
    >>> x.shape, energy.shape, log_g.shape
    ((5, 2), (5,), (5,))
    """
    size = _chunk_shape(num_samples, chunk_size)
    # Levels up to the first rejection layer form one fused stream (with a
    # defensive layer if it is the first, a mixture taken in the latent).
    layers = chain.layers
    base = 1 if layers and isinstance(layers[0], DefensiveLayer) else 0
    while base < len(layers) and isinstance(layers[base], CNFLayer):
        base += 1
    stream = _Stream(chain, base, rng_key, size, None)
    for level in range(base + 1, len(chain.layers) + 1):
        stream = _Stream(chain, level, rng_key, size, stream)
    return stream.take(num_samples)


def _warn_nonfinite(log_g) -> int:
    bad = int(np.sum(~np.isfinite(log_g)))
    if bad:
        warnings.warn(
            f"{bad} of {len(log_g)} draws have a non-finite target log density (NaN "
            "or -inf); they are returned (they are valid draws of the chain) but get "
            "zero importance weight. Check the target where the chain puts mass.",
            RuntimeWarning,
            stacklevel=3,
        )
    return bad


def sample(rng_key, chain: JKOChain, num_samples: int, chunk_size: int | None = None):
    """Draw i.i.d. samples and the chain's normalized log density at each.

    Parameters
    ----------
    rng_key : jax.random key
    chain : JKOChain
    num_samples : int
    chunk_size : int, optional
        Draws processed per compiled call (default 4096): bounds memory, so 10**6
        draws work.

    Returns
    -------
    x : Array, shape (num_samples, d)
    log_p : Array, shape (num_samples,)
        ``log p(x)`` of the chain (the rejection-layer corrections included).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko.cnf import CNFSpec
    >>> chain = JKOChain(lambda x: -0.5 * x @ x, CNFSpec(2, 8), jnp.zeros(2),
    ...                  jnp.array(1.0))
    >>> x, log_p = sample(jax.random.key(0), chain, 1000)
    >>> x.shape, log_p.shape
    ((1000, 2), (1000,))
    """
    x, energy, log_g = draw(rng_key, chain, num_samples, chunk_size)
    _warn_nonfinite(log_g)
    return jnp.asarray(x), -jnp.asarray(energy)


_logdensity_chunk = jax.jit(eval_logdensity, static_argnums=0)


@partial(jax.jit, static_argnames=("spec",))
def _pull_back_chunk(params, y, *, spec):
    return cnf_lib.pull_back(spec, params, constrain(y))


@partial(jax.jit, static_argnames=("spec", "divergence"))
def _logdet_chunk(rng_key, params, x, *, spec, divergence):
    return cnf_lib.push_forward(spec, params, constrain(x), divergence, rng_key)[1]


def log_prob(chain: JKOChain, x, chunk_size: int | None = None, rng_key=None):
    """The chain's normalized log density at arbitrary points ``x`` of shape (n, d).

    Pulls ``x`` back through every CNF (reverse solve plus Newton refinement, see
    :func:`numpyro_jko.cnf.pull_back`), then accumulates forward: the latent energy,
    each CNF's log-determinant and each rejection layer's ``-log(alpha + rbar)``.
    Agrees with the ``log_p`` returned by :func:`~numpyro_jko.chain.sample` at the same points.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko.cnf import CNFSpec
    >>> chain = JKOChain(lambda x: -0.5 * x @ x, CNFSpec(2, 8), jnp.zeros(2),
    ...                  jnp.array(1.0))
    >>> round(float(log_prob(chain, jnp.zeros((1, 2)))[0]), 4)
    -1.8379
    """
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[-1] != chain.dim:
        raise ValueError(f"x must have shape (n, {chain.dim}); got {x.shape}.")
    n = x.shape[0]
    size = _chunk_shape(n, chunk_size)
    key = jax.random.key(0) if rng_key is None else rng_key
    out = []
    for start in range(0, n, size):
        block = x[start : start + size]
        pad = size - block.shape[0]
        block = jnp.concatenate([block, jnp.repeat(block[:1], pad, axis=0)])
        out.append(_compose_log_prob(chain, block, key, _JITTED_OPS)[: size - pad])
    return jnp.concatenate(out)


def traced_log_prob(chain: JKOChain, x, rng_key=None):
    """:func:`log_prob` as one traceable function, for use inside ``jax.jit``.

    The same composition without host-side chunking, so that it can run inside a
    jitted MCMC step (:class:`numpyro_jko.flow_mala.JKOProposal`).  Calling
    :func:`log_prob` from a ``jax.pure_callback`` instead deadlocks on a one-core
    CPU: the callback waits for a computation that cannot be scheduled while the
    outer one holds the executor.

    Examples
    --------
    A bare standard-normal latent in one dimension, evaluated under ``jax.jit``:

    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko.cnf import CNFSpec
    >>> normal = JKOChain(lambda v: -0.5 * v @ v, CNFSpec(1, 4), jnp.zeros(1), 1.0)
    >>> at_zero = jax.jit(lambda v: traced_log_prob(normal, v))(jnp.zeros((1, 1)))
    >>> round(float(at_zero[0]), 4)  # -log(2 pi) / 2
    -0.9189
    """
    key = jax.random.key(0) if rng_key is None else rng_key
    return _compose_log_prob(chain, x, key, _TRACED_OPS)


class _LayerOps(NamedTuple):
    """How :func:`_compose_log_prob` runs each layer's piece: jitted per call
    (host loop over chunks, compiled once per shape) or plain (inside a trace)."""

    pull_back: Callable  # (params, y, spec) -> input of the CNF
    log_det: Callable  # (key, params, x, spec, divergence) -> log det of the CNF
    defensive_update: Callable  # defensive.energy_update
    logdensity: Callable  # (logdensity_fn, x) -> log g


def _compose_log_prob(chain, x, key, ops):
    # Pull back through every CNF from the top, then accumulate the energy from
    # the latent upward: each layer's update needs its own input point.
    positions = [x]
    for layer in reversed(chain.layers):
        if isinstance(layer, CNFLayer):
            positions.append(ops.pull_back(layer.params, positions[-1], chain.spec))
        else:
            positions.append(positions[-1])
    positions.reverse()  # positions[i] is the input of layer i
    energy = latent_energy(positions[0], chain.latent_mean, chain.latent_scale)
    for i, layer in enumerate(chain.layers):
        if isinstance(layer, CNFLayer):
            energy = energy + ops.log_det(
                jax.random.fold_in(key, i),
                layer.params,
                positions[i],
                chain.spec,
                chain.density_divergence,
            )
        elif isinstance(layer, DefensiveLayer):
            energy = ops.defensive_update(
                energy, positions[i], layer, chain.latent_mean, chain.latent_scale
            )
        else:
            log_g = ops.logdensity(chain.logdensity_fn, positions[i])
            energy = energy_update(energy, log_g + energy, layer)
    return -energy


_JITTED_OPS = _LayerOps(
    pull_back=lambda params, y, spec: _pull_back_chunk(params, y, spec=spec),
    log_det=lambda key, params, x, spec, div: _logdet_chunk(
        key, params, x, spec=spec, divergence=div
    ),
    defensive_update=_defensive_update,
    logdensity=_logdensity_chunk,
)
_TRACED_OPS = _LayerOps(
    pull_back=lambda params, y, spec: cnf_lib.pull_back(spec, params, y),
    log_det=lambda key, params, x, spec, div: cnf_lib.push_forward(
        spec, params, x, div, key
    )[1],
    defensive_update=defensive.energy_update,
    logdensity=eval_logdensity,
)


def layer_kind(layer) -> str:
    """``"C"`` (CNF), ``"D"`` (defensive) or ``"R"`` (rejection): a layer's letter.

    The letters of :attr:`JKOInfo.layer_kinds <numpyro_jko.jko.JKOInfo>` and of
    :func:`chain_to_dict`.

    Examples
    --------
    >>> layer_kind(RejectionLayer(0.0, 0.2)), layer_kind(DefensiveLayer(0.1, 3.0))
    ('R', 'D')
    """
    if isinstance(layer, CNFLayer):
        return "C"
    return "D" if isinstance(layer, DefensiveLayer) else "R"


def chain_to_dict(chain: JKOChain) -> dict:
    """Everything needed to rebuild ``chain`` except ``logdensity_fn``, as NumPy data.

    Pickle the result (``JKOSampler.save`` does); rebuild with :func:`chain_from_dict`
    and the same target: draws and log densities are then bit-identical for a key.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_jko.cnf import CNFSpec
    >>> chain = JKOChain(lambda x: -x @ x, CNFSpec(2, 8), jnp.zeros(2), jnp.array(1.0))
    >>> sorted(chain_to_dict(chain))[:3]
    ['density_divergence', 'format', 'latent_mean']
    """
    layers = []
    for layer in chain.layers:
        if isinstance(layer, CNFLayer):
            data = jax.tree.map(np.asarray, layer.params)
        else:
            data = tuple(float(v) for v in layer)
        layers.append((layer_kind(layer), data))
    return {
        "format": 1,
        "spec": chain.spec,
        "latent_mean": np.asarray(chain.latent_mean),
        "latent_scale": np.asarray(chain.latent_scale),
        "layers": layers,
        "density_divergence": chain.density_divergence,
    }


def chain_from_dict(state: dict, logdensity_fn) -> JKOChain:
    """Inverse of :func:`chain_to_dict`, given the target's ``logdensity_fn``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_jko.cnf import CNFSpec
    >>> fn = lambda x: -x @ x
    >>> chain = JKOChain(fn, CNFSpec(2, 8), jnp.zeros(2), jnp.array(1.0))
    >>> chain_from_dict(chain_to_dict(chain), fn).dim
    2
    """
    if state.get("format") != 1:
        raise ValueError(f"Unknown chain format {state.get('format')!r}.")
    layers = []
    for kind, data in state["layers"]:
        if kind == "C":
            layers.append(CNFLayer(jax.tree.map(jnp.asarray, data)))
        elif kind == "D":
            layers.append(DefensiveLayer(*data))
        else:
            layers.append(RejectionLayer(*data))
    return JKOChain(
        logdensity_fn=logdensity_fn,
        spec=state["spec"],
        latent_mean=jnp.asarray(state["latent_mean"]),
        latent_scale=jnp.asarray(state["latent_scale"]),
        layers=tuple(layers),
        density_divergence=state["density_divergence"],
    )
