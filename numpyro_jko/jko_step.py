r"""One JKO step: train a CNF that moves the particles toward the target.

Given particles ``x ~ p_k`` with energies ``E = -log p_k(x)``, the CNF ``T_theta``
minimises (Hertrich & Gruhlke, eq. (6)-(7); reference code constants)

.. math::

    L(\theta) = \mathbb{E}\Bigl[-\log g(z(1)) - \ell(1) - E(x)\Bigr]
              + \frac{1}{\tau}\,\mathbb{E}\bigl[\omega(1)\bigr],

where ``z' = v(t, z)``, ``omega' = |v|^2`` and ``ell' = div v``.  The first term is
``KL(T#p_k || g/Z) - log Z``; the second is the Benamou--Brenier kinetic energy, so
this is one JKO step of size ``tau/2`` in the usual ``F + W2^2/(2h)`` convention
(there is no factor 1/2 on the penalty in the reference code).

The training loop is a :func:`jax.lax.scan` over minibatch Adam steps, compiled once
per (spec, batch, optimizer) and reused for every CNF of a chain: ``tau`` and the
particles are traced arguments, so a new JKO step never retraces.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from numpyro_jko import cnf as cnf_lib
from numpyro_jko.sharding import constrain

__all__ = [
    "JKOStepState",
    "JKOStepInfo",
    "init",
    "loss_fn",
    "build_train_chunk",
    "score_tau",
]


class JKOStepState(NamedTuple):
    """Parameters and optimizer state of the CNF being trained.

    Examples
    --------
    >>> import jax, optax
    >>> from numpyro_jko.cnf import CNFSpec
    >>> state = init(jax.random.key(0), CNFSpec(2, 8), optax.adam(1e-3))
    >>> int(state.iteration)
    0
    """

    params: Any
    opt_state: Any
    iteration: jax.Array


class JKOStepInfo(NamedTuple):
    """Per-iteration diagnostics: total loss, KL part (``KL - log Z``) and kinetic.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> JKOStepInfo(jnp.zeros(3), jnp.zeros(3), jnp.zeros(3)).loss.shape
    (3,)
    """

    loss: jax.Array
    kl: jax.Array
    kinetic: jax.Array


def init(rng_key, spec: cnf_lib.CNFSpec, optimizer: optax.GradientTransformation):
    """A fresh CNF (the identity map) and its optimizer state.

    Examples
    --------
    >>> import jax, optax
    >>> from numpyro_jko.cnf import CNFSpec
    >>> state = init(jax.random.key(0), CNFSpec(2, 8), optax.adam(1e-3))
    >>> type(state).__name__
    'JKOStepState'
    """
    params = cnf_lib.init_velocity(rng_key, spec)
    return JKOStepState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def loss_fn(params, x, energy, tau, probe, *, logdensity_fn, spec, divergence):
    """JKO loss on a minibatch; returns ``(loss, (kl, kinetic))``.

    Non-finite target values are left out of the mean (and would otherwise turn the
    whole loss into NaN); the caller counts them.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko.cnf import CNFSpec, ExactTrace, init_velocity
    >>> spec = CNFSpec(2, 8)
    >>> params = init_velocity(jax.random.key(0), spec)
    >>> x = jnp.zeros((4, 2)); energy = jnp.full(4, 1.8378770)
    >>> loss, (kl, kin) = loss_fn(params, x, energy, 1.0, None,
    ...     logdensity_fn=lambda v: -0.5 * v @ v - 1.8378770, spec=spec,
    ...     divergence=ExactTrace())
    >>> round(float(kl), 5)  # identical densities: KL = 0
    0.0
    """
    z1, kinetic, ell = cnf_lib.integrate_with_kinetic(
        spec, params, x, divergence, probe
    )
    log_g = jax.vmap(logdensity_fn)(z1)
    finite = jnp.isfinite(log_g)
    kl_terms = jnp.where(finite, -log_g - ell - energy, 0.0)
    num_finite = jnp.maximum(jnp.sum(finite), 1)
    kl = jnp.sum(kl_terms) / num_finite
    kinetic = jnp.mean(kinetic)
    return kl + kinetic / tau, (kl, kinetic)


def build_train_chunk(
    logdensity_fn,
    spec: cnf_lib.CNFSpec,
    optimizer: optax.GradientTransformation,
    divergence,
    batch_size: int,
    num_iterations: int,
):
    """Compile ``num_iterations`` minibatch steps into one jitted call.

    Returns ``train_chunk(rng_key, state, x, energy, tau) -> (state, JKOStepInfo)``.
    The driver calls it repeatedly (updating the progress bar in between); shapes and
    static configuration are the same for every CNF, so it compiles once.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, optax
    >>> from numpyro_jko.cnf import CNFSpec, Hutchinson
    >>> spec, opt = CNFSpec(2, 8), optax.adam(1e-2)
    >>> step = build_train_chunk(lambda v: -0.5 * v @ v, spec, opt, Hutchinson(), 16, 5)
    >>> x = jax.random.normal(jax.random.key(1), (64, 2)) + 1.0
    >>> state, info = step(jax.random.key(2), init(jax.random.key(0), spec, opt),
    ...                    x, jnp.zeros(64), 1.0)
    >>> info.loss.shape
    (5,)
    """
    loss = partial(
        loss_fn, logdensity_fn=logdensity_fn, spec=spec, divergence=divergence
    )

    def one_iteration(carry, rng_key):
        state, x, energy, tau = carry
        key_batch, key_probe = jax.random.split(rng_key)
        index = jax.random.randint(key_batch, (batch_size,), 0, x.shape[0])
        # The minibatch is split over the local devices (data parallelism; the
        # identity on one device): the loss's mean becomes an all-reduce.
        xb, eb = constrain(x[index]), constrain(energy[index])
        probe = None
        if divergence.needs_probe():
            probe = divergence.draw_probe(key_probe, xb.shape, xb.dtype)
        (value, (kl, kinetic)), grads = jax.value_and_grad(loss, has_aux=True)(
            state.params, xb, eb, tau, probe
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = JKOStepState(params, opt_state, state.iteration + 1)
        return (new_state, x, energy, tau), JKOStepInfo(value, kl, kinetic)

    @jax.jit
    def train_chunk(rng_key, state, x, energy, tau):
        keys = jax.random.split(rng_key, num_iterations)
        tau = jnp.asarray(tau, x.dtype)
        (state, _, _, _), info = jax.lax.scan(
            one_iteration, (state, x, energy, tau), keys
        )
        return state, info

    return train_chunk


def score_tau(logdensity_fn, x, latent_mean, latent_scale, scale: float = 25.0):
    r"""A first JKO step size from the target: ``scale`` times a squared length.

    The length is that of the score mismatch between the latent ``p0`` and the
    target at the latent draws ``x``,

    .. math::

        \tau_0 = \kappa\,\frac{d}{\exp \overline{\log
            \lVert \nabla \log g(x_i) - \nabla \log p_0(x_i) \rVert^2}},

    a geometric mean over the draws (robust to the few draws where the gradient is
    huge, such as the mustache's far tails).  ``tau`` has the units of a squared
    length (the JKO penalty is ``W2^2 / tau``), and one step displaces a particle by
    about ``tau`` times the score mismatch, so ``tau0`` scales with the square of the
    length over which the mismatch changes.  The reference code tunes ``tau0`` per
    problem by hand: 0.05, 0.01, 0.01 and 0.0025 on shifted 8 modes, 8 peaky,
    mustache and GMM-10.  With ``kappa = 25`` and the tempered latent this rule gives
    0.034, 0.0081, 0.012 and 0.0024, within a factor 1.5 of each over a factor 20
    in ``tau0``.  On funnel-10 it gives 31 where the reference uses 5: a
    single-mode target, whose reference steps grow to 1.3e6 anyway
    (``benchmarks/results/jko_levers.md``).

    Draws where the gradient is not finite or the mismatch is zero are left out;
    if no gradient is finite, a ``ValueError`` says so.  The step is capped at
    ``kappa`` times the latent's mean squared scale: where the latent already is
    the target the mismatch vanishes and the rule alone would give no bound.

    Parameters
    ----------
    logdensity_fn : callable
        Unnormalized log density of a flat vector (differentiable).
    x : Array, shape (n, d)
        Draws from the latent ``N(latent_mean, latent_scale^2)``.
    latent_mean, latent_scale : Array, shape (d,) or scalar
    scale : float
        The constant ``kappa``.

    Returns
    -------
    float

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (4096, 2))
    >>> tau = score_tau(lambda v: -0.5 * jnp.sum(v**2) / 0.01, x, 0.0, 1.0)
    >>> round(tau, 3)  # N(0, 0.01 I) from N(0, I): mismatch 99 |x|
    0.004
    """
    x = jnp.asarray(x)
    dim = x.shape[-1]
    grad_g = jax.jit(jax.vmap(jax.grad(logdensity_fn)))(x)
    grad_p0 = -(x - latent_mean) / jnp.asarray(latent_scale) ** 2
    mismatch = jnp.sum((grad_g - grad_p0) ** 2, axis=-1)
    finite = jnp.isfinite(mismatch)
    if not bool(jnp.any(finite)):
        raise ValueError(
            "cannot choose tau0 from the target: the gradient of logdensity_fn is "
            "not finite at any latent draw; set JKOConfig.tau0 explicitly"
        )
    # Where the latent already is the target the mismatch vanishes (up to round-off)
    # and the rule's step would be unbounded: cap it at the latent's own squared
    # scale (times kappa), which no paper target comes near (8 modes: 14 vs 0.034).
    cap = scale * float(jnp.mean(jnp.asarray(latent_scale) ** 2))
    usable = finite & (mismatch > 0)
    if not bool(jnp.any(usable)):
        return cap
    mean_log = jnp.sum(jnp.where(usable, jnp.log(mismatch), 0.0)) / jnp.sum(usable)
    return min(float(scale * dim * jnp.exp(-mean_log)), cap)
