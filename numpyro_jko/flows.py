# SPDX-License-Identifier: Apache-2.0
"""Affine coupling (RealNVP) normalizing flows with a normalized density.

The flow maps a standard normal base variable ``z`` to data space in two stages,

.. math::

    u = T_\\theta(z), \\qquad x = \\mathrm{shift} + \\mathrm{scale} \\odot u,

where :math:`T_\\theta` is a stack of affine coupling layers written with
``flax.linen`` and ``shift`` / ``scale`` are a *stored, untrained* diagonal
standardisation computed from data (:func:`fit_standardization`). Both directions
are closed form, so drawing a sample together with its density
(:func:`flow_sample`) and evaluating the density of a given point
(:func:`flow_log_prob`) each cost one pass through the networks. The log-Jacobian
of the standardisation, :math:`-\\sum_i \\log \\mathrm{scale}_i`, is part of every
density, so :func:`flow_log_prob` is a normalized density in data space and can
be used for importance-sampling evidence estimates.

The API is functional: the architecture is a hashable :class:`CouplingFlow`
config, the parameters are a plain pytree (:class:`FlowParams`), and training is
an optax optimizer passed in by the caller (:func:`make_train_step`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "CouplingFlow",
    "FlowParams",
    "init_flow",
    "fit_standardization",
    "flow_forward",
    "flow_inverse",
    "flow_sample",
    "flow_log_prob",
    "forward_kl_loss",
    "make_train_step",
]

Array = jax.Array
PRNGKey = jax.Array
ArrayTree = Any


@dataclasses.dataclass(frozen=True)
class CouplingFlow:
    """Architecture of an affine coupling flow (static, hashable configuration).

    Layer ``i`` leaves the components selected by a binary mask unchanged and
    applies an elementwise affine map to the others, with shift and log-scale
    produced by an MLP of the unchanged components. Masks cycle through
    even/odd parity, odd/even parity, first half/second half and second
    half/first half, so that in any dimension every component is transformed
    and conditions every other component within four layers.

    Parameters
    ----------
    dim
        Dimension of the data space.
    num_layers
        Number of coupling layers.
    hidden
        Widths of the hidden layers of each conditioner MLP.
    log_scale_bound
        Each layer's log-scale is ``log_scale_bound * tanh(raw / log_scale_bound)``:
        the identity near zero (so training starts like an unbounded RealNVP)
        but never larger than the bound, which keeps a single bad gradient step
        from producing an overflowing Jacobian.

    Notes
    -----
    With ``dim == 1`` there is nothing to condition on, and every layer reduces
    to a learned constant affine map: the flow is then a Gaussian. Coupling
    flows need ``dim >= 2`` to represent non-Gaussian shapes.

    Examples
    --------
    >>> from numpyro_jko.flows import CouplingFlow
    >>> flow = CouplingFlow(dim=3, num_layers=4, hidden=[32, 32])
    >>> flow.hidden
    (32, 32)
    """

    dim: int
    num_layers: int = 6
    hidden: tuple[int, ...] = (64, 64)
    log_scale_bound: float = 3.0

    def __post_init__(self):
        # Frozen dataclass: normalise through object.__setattr__ so that a list
        # of widths still gives a hashable config (usable as a jit static arg).
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if not self.log_scale_bound > 0:
            raise ValueError("log_scale_bound must be positive")


class FlowParams(NamedTuple):
    """Parameters of a :class:`CouplingFlow`.

    Attributes
    ----------
    network
        flax parameter pytree of the coupling conditioners (the trained part).
    shift
        Standardisation location, shape ``(dim,)``; not trained.
    scale
        Standardisation scale, shape ``(dim,)``, positive; not trained.

    Examples
    --------
    >>> import jax
    >>> from numpyro_jko.flows import CouplingFlow, init_flow
    >>> params = init_flow(jax.random.key(0), CouplingFlow(dim=2))
    >>> params.shift.shape, params.scale.shape
    ((2,), (2,))
    """

    network: ArrayTree
    shift: Array
    scale: Array


def _default_float():
    # float64 when jax_enable_x64 is on, float32 otherwise.
    return jnp.result_type(float)


def _masks(dim: int, num_layers: int) -> np.ndarray:
    """Binary masks (1 = conditioning, left unchanged), one row per layer."""
    index = np.arange(dim)
    half = index < dim // 2
    patterns = [index % 2 == 0, index % 2 == 1, half, ~half]
    return np.stack([patterns[i % 4] for i in range(num_layers)]).astype(np.float32)


class _Conditioner(nn.Module):
    """MLP giving (shift, raw log-scale); the last layer starts at zero."""

    hidden: tuple[int, ...]
    out_dim: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        # Full-precision matmuls: on GPUs the float32 default may be TF32, and
        # then forward and inverse passes are no longer inverses to ~1e-6,
        # which would bias the flow densities entering the MH ratio. These MLPs
        # are small next to a typical target, so the cost is minor.
        dense = functools.partial(
            nn.Dense, param_dtype=self.param_dtype, precision=jax.lax.Precision.HIGHEST
        )
        for width in self.hidden:
            x = nn.silu(dense(width)(x))
        # Zero-initialised output: every layer starts as the identity, so an
        # untrained flow is exactly the standardised Gaussian.
        out = dense(
            2 * self.out_dim,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.zeros,
        )(x)
        return jnp.split(out, 2, axis=-1)


class _AffineCoupling(nn.Module):
    """Stack of affine coupling layers acting on standardised coordinates."""

    dim: int
    num_layers: int
    hidden: tuple[int, ...]
    log_scale_bound: float
    param_dtype: Any = jnp.float32

    def setup(self):
        self.conditioners = [
            _Conditioner(self.hidden, self.dim, self.param_dtype)
            for _ in range(self.num_layers)
        ]
        self.masks = _masks(self.dim, self.num_layers)

    def _shift_and_log_scale(self, layer, conditioning, free):
        shift, raw = self.conditioners[layer](conditioning)
        bound = self.log_scale_bound
        log_scale = bound * jnp.tanh(raw / bound)
        # Zero on the conditioning components, so they pass through unchanged
        # and contribute nothing to the log-determinant.
        return shift * free, log_scale * free

    def forward(self, z):
        """Base to standardised data; returns (u, log|det du/dz|)."""
        log_det = jnp.zeros(z.shape[:-1], z.dtype)
        for layer in range(self.num_layers):
            mask = jnp.asarray(self.masks[layer], z.dtype)
            shift, log_scale = self._shift_and_log_scale(layer, z * mask, 1 - mask)
            z = z * jnp.exp(log_scale) + shift
            log_det = log_det + jnp.sum(log_scale, axis=-1)
        return z, log_det

    def inverse(self, u):
        """Standardised data to base; returns (z, log|det dz/du|)."""
        log_det = jnp.zeros(u.shape[:-1], u.dtype)
        for layer in reversed(range(self.num_layers)):
            mask = jnp.asarray(self.masks[layer], u.dtype)
            shift, log_scale = self._shift_and_log_scale(layer, u * mask, 1 - mask)
            u = (u - shift) * jnp.exp(-log_scale)
            log_det = log_det - jnp.sum(log_scale, axis=-1)
        return u, log_det


def _module(flow: CouplingFlow, param_dtype=jnp.float32) -> _AffineCoupling:
    return _AffineCoupling(
        dim=flow.dim,
        num_layers=flow.num_layers,
        hidden=flow.hidden,
        log_scale_bound=float(flow.log_scale_bound),
        param_dtype=param_dtype,
    )


def _standard_normal_logpdf(z):
    return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def init_flow(
    rng_key: PRNGKey, flow: CouplingFlow, *, data: Array | None = None
) -> FlowParams:
    """Initialise flow parameters at the identity map.

    Parameters
    ----------
    rng_key
        Key for the conditioner weights.
    flow
        Architecture.
    data
        Optional array of shape ``(n, dim)``. When given, the standardisation is
        fitted to it (:func:`fit_standardization`), so the initial flow is the
        diagonal Gaussian with the data's mean and standard deviation; otherwise
        it is the standard normal.

    Returns
    -------
    FlowParams
        Parameters with zero-initialised conditioner output layers, i.e. a flow
        whose density is exactly ``N(shift, diag(scale**2))``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko.flows import CouplingFlow, init_flow, flow_log_prob
    >>> flow = CouplingFlow(dim=2, num_layers=2, hidden=(8,))
    >>> params = init_flow(jax.random.key(0), flow)
    >>> round(float(flow_log_prob(flow, params, jnp.zeros(2))), 4)  # -log(2 pi)
    -1.8379
    """
    dtype = _default_float()
    network = _module(flow, dtype).init(
        rng_key, jnp.zeros((flow.dim,), dtype), method=_AffineCoupling.forward
    )
    params = FlowParams(
        network=network,
        shift=jnp.zeros((flow.dim,), dtype),
        scale=jnp.ones((flow.dim,), dtype),
    )
    if data is not None:
        params = fit_standardization(params, data)
    return params


def fit_standardization(params: FlowParams, data: Array) -> FlowParams:
    """Set ``shift`` / ``scale`` to the mean / standard deviation of ``data``.

    Typically called on the current walker positions (or a replay buffer)
    before a round of training, as flowMC does. This changes the density of the
    flow, so call it *before* training, not between training and use.

    Parameters
    ----------
    params
        Current parameters; the network part is kept.
    data
        Finite array of shape ``(n, dim)``.

    Returns
    -------
    FlowParams
        Parameters with the new standardisation. Components whose standard
        deviation is zero (to round-off) get scale 1 instead, so that a
        collapsed coordinate cannot make the density infinite.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko.flows import CouplingFlow, init_flow, fit_standardization
    >>> params = init_flow(jax.random.key(0), CouplingFlow(dim=2))
    >>> data = jnp.array([[0.0, 1.0], [2.0, 1.0]])
    >>> new = fit_standardization(params, data)
    >>> new.shift.tolist(), new.scale.tolist()
    ([1.0, 1.0], [1.0, 1.0])
    """
    data = jnp.asarray(data)
    dtype = params.shift.dtype
    mean = jnp.mean(data, axis=0).astype(dtype)
    std = jnp.std(data, axis=0).astype(dtype)
    # A coordinate is "constant" when its spread is at round-off level.
    negligible = std <= 8 * jnp.finfo(dtype).eps * (1 + jnp.abs(mean))
    scale = jnp.where(negligible, jnp.ones_like(std), std)
    return FlowParams(network=params.network, shift=mean, scale=scale)


def flow_forward(
    flow: CouplingFlow, params: FlowParams, z: Array
) -> tuple[Array, Array]:
    """Map base points to data space.

    Parameters
    ----------
    flow, params
        The flow.
    z
        Base points, shape ``(..., dim)``.

    Returns
    -------
    x : Array
        Data-space points, shape ``(..., dim)``.
    log_det : Array
        ``log |det dx/dz|``, shape ``(...)``, including the standardisation.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko.flows import CouplingFlow, init_flow, flow_forward
    >>> flow = CouplingFlow(dim=2, num_layers=2, hidden=(8,))
    >>> params = init_flow(jax.random.key(0), flow)
    >>> x, log_det = flow_forward(flow, params, jnp.ones((5, 2)))
    >>> x.shape, log_det.shape
    ((5, 2), (5,))
    """
    u, log_det = _module(flow).apply(params.network, z, method=_AffineCoupling.forward)
    x = params.shift + params.scale * u
    return x, log_det + jnp.sum(jnp.log(params.scale))


def flow_inverse(
    flow: CouplingFlow, params: FlowParams, x: Array
) -> tuple[Array, Array]:
    """Map data-space points to the base space.

    Parameters
    ----------
    flow, params
        The flow.
    x
        Data-space points, shape ``(..., dim)``.

    Returns
    -------
    z : Array
        Base points, shape ``(..., dim)``.
    log_det : Array
        ``log |det dz/dx|``, shape ``(...)``, including the standardisation.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko.flows import (
    ...     CouplingFlow, init_flow, flow_forward, flow_inverse)
    >>> flow = CouplingFlow(dim=2, num_layers=2, hidden=(8,))
    >>> params = init_flow(jax.random.key(0), flow)
    >>> z = jnp.array([0.3, -1.2])
    >>> z_back, _ = flow_inverse(flow, params, flow_forward(flow, params, z)[0])
    >>> bool(jnp.allclose(z_back, z))
    True
    """
    u = (x - params.shift) / params.scale
    z, log_det = _module(flow).apply(params.network, u, method=_AffineCoupling.inverse)
    return z, log_det - jnp.sum(jnp.log(params.scale))


def flow_sample(
    rng_key: PRNGKey, flow: CouplingFlow, params: FlowParams, num_samples: int
) -> tuple[Array, Array]:
    """Draw samples together with their normalized log density, in one pass.

    Parameters
    ----------
    rng_key
        Key for the base draws.
    flow, params
        The flow.
    num_samples
        Number of draws (static).

    Returns
    -------
    x : Array
        Draws, shape ``(num_samples, dim)``.
    log_q : Array
        ``log q(x)``, shape ``(num_samples,)``; equal (to round-off) to
        ``flow_log_prob(flow, params, x)``.

    Examples
    --------
    >>> import jax
    >>> from numpyro_jko.flows import CouplingFlow, init_flow, flow_sample
    >>> flow = CouplingFlow(dim=2, num_layers=2, hidden=(8,))
    >>> params = init_flow(jax.random.key(0), flow)
    >>> x, log_q = flow_sample(jax.random.key(1), flow, params, 100)
    >>> x.shape, log_q.shape
    ((100, 2), (100,))
    """
    z = jax.random.normal(rng_key, (num_samples, flow.dim), params.shift.dtype)
    x, log_det = flow_forward(flow, params, z)
    return x, _standard_normal_logpdf(z) - log_det


def flow_log_prob(flow: CouplingFlow, params: FlowParams, x: Array) -> Array:
    """Normalized log density of the flow in data space.

    Parameters
    ----------
    flow, params
        The flow.
    x
        Points, shape ``(..., dim)``.

    Returns
    -------
    Array
        ``log q(x)``, shape ``(...)``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko.flows import CouplingFlow, init_flow, flow_log_prob
    >>> flow = CouplingFlow(dim=1, num_layers=1, hidden=(4,))
    >>> params = init_flow(jax.random.key(0), flow, data=jnp.array([[1.0], [3.0]]))
    >>> x = jnp.array([2.0])
    >>> round(float(flow_log_prob(flow, params, x)), 4)  # N(2, 1) at its mean
    -0.9189
    """
    z, log_det = flow_inverse(flow, params, x)
    return _standard_normal_logpdf(z) + log_det


def forward_kl_loss(flow: CouplingFlow, params: FlowParams, x: Array) -> Array:
    """Forward KL (maximum likelihood) loss, ``-mean(log q(x))``.

    Up to the constant entropy of the data distribution this is
    ``KL(p || q)`` estimated on samples ``x ~ p``; it is mass-covering, which is
    what an independent Metropolis–Hastings proposal and an importance-sampling
    proposal need.

    Parameters
    ----------
    flow, params
        The flow.
    x
        Training points, shape ``(n, dim)``.

    Returns
    -------
    Array
        Scalar loss.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko.flows import CouplingFlow, init_flow, forward_kl_loss
    >>> flow = CouplingFlow(dim=2, num_layers=2, hidden=(8,))
    >>> params = init_flow(jax.random.key(0), flow)
    >>> round(float(forward_kl_loss(flow, params, jnp.zeros((4, 2)))), 4)
    1.8379
    """
    return -jnp.mean(flow_log_prob(flow, params, x))


def make_train_step(
    flow: CouplingFlow, optimizer: optax.GradientTransformation
) -> Callable[[FlowParams, Any, Array], tuple[FlowParams, Any, Array]]:
    """Build a pure forward-KL training step for ``flow``.

    Only ``params.network`` is trained; the standardisation is data, not a
    parameter. Initialise the optimizer on the network part::

        opt_state = optimizer.init(params.network)

    Parameters
    ----------
    flow
        Architecture (closed over, so the step is jit-able with no static args).
    optimizer
        Any optax gradient transformation, e.g.
        ``optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))``.
        Wrap it in ``optax.apply_if_finite`` to skip steps whose gradient is
        not finite (e.g. a batch containing a far outlier).

    Returns
    -------
    Callable
        ``step(params, opt_state, batch) -> (params, opt_state, loss)``, where
        ``loss`` is the forward-KL loss of the batch *before* the update.

    Examples
    --------
    >>> import jax, optax
    >>> from numpyro_jko.flows import CouplingFlow, init_flow, make_train_step
    >>> flow = CouplingFlow(dim=2, num_layers=2, hidden=(8,))
    >>> data = jax.random.normal(jax.random.key(0), (256, 2))
    >>> params = init_flow(jax.random.key(1), flow, data=data)
    >>> optimizer = optax.adam(1e-3)
    >>> opt_state = optimizer.init(params.network)
    >>> step = jax.jit(make_train_step(flow, optimizer))
    >>> params, opt_state, loss = step(params, opt_state, data)
    >>> loss.shape
    ()
    """

    def loss_of_network(network, shift, scale, batch):
        return forward_kl_loss(flow, FlowParams(network, shift, scale), batch)

    def step(params: FlowParams, opt_state, batch: Array):
        loss, grads = jax.value_and_grad(loss_of_network)(
            params.network, params.shift, params.scale, batch
        )
        updates, opt_state = optimizer.update(grads, opt_state, params.network)
        network = optax.apply_updates(params.network, updates)
        return FlowParams(network, params.shift, params.scale), opt_state, loss

    return step
