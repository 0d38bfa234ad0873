r"""Importance rejection layers (Hertrich & Gruhlke, ICML 2025, Sec. 4).

A rejection layer with constant ``c`` takes a draw ``x ~ p`` and keeps it with
probability

.. math:: \alpha(x) = \min\bigl(1, g(x) / (c\, p(x))\bigr),

otherwise it replaces it by one fresh independent draw from ``p`` (not tested
again).  The output density is (Theorem 4.2 of the paper)

.. math:: \tilde p(x) = p(x)\,\bigl(\alpha(x) + \bar r\bigr),
          \qquad \bar r = 1 - \mathbb{E}_p[\alpha],

so each particle's energy ``E = -log p`` is updated by ``E <- E - log(alpha + rbar)``.
``log c`` is chosen so that a fraction ``rate`` (0.2 in the paper) of the training
particles is rejected, by bracketing and then bisection in ``log c``, and ``rbar`` is
the in-sample rejection rate at that ``c``.

Everything here works on log-weights ``log w = log g - log p`` and is jit-able.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "RejectionLayer",
    "acceptance_probability",
    "rejection_rate",
    "fit_rejection",
    "energy_update",
]


class RejectionLayer(NamedTuple):
    """Constants of one fitted rejection layer.

    Attributes
    ----------
    log_c : Array
        Log of the rejection constant ``c``.
    rbar : Array
        Estimated rejection probability ``1 - E_p[alpha]`` at that constant.
    rbar_se : Array
        Monte Carlo standard error of ``rbar`` (``std(alpha) / sqrt(n)``): the
        layer's contribution to the uncertainty of every density after it.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> layer = RejectionLayer(log_c=0.2, rbar=0.2)
    >>> layer.rbar, layer.rbar_se
    (0.2, 0.0)
    """

    log_c: jax.Array
    rbar: jax.Array
    rbar_se: jax.Array | float = 0.0


def _finite_log_weights(log_w):
    # A NaN target density must never be accepted: treat it as g = 0 (alpha = 0),
    # which also keeps NaN out of the bisection below.
    return jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)


def acceptance_probability(log_w, log_c):
    """``alpha = min(1, exp(log_w - log_c))``, with NaN log-weights mapped to 0.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> acceptance_probability(jnp.array([0.0, -1.0, jnp.nan]), 0.0).tolist()
    [1.0, 0.3678794503211975, 0.0]
    """
    log_w = _finite_log_weights(log_w)
    return jnp.exp(jnp.minimum(log_w - log_c, 0.0))


def rejection_rate(log_w, log_c, weights=None):
    """Mean rejection probability ``mean(1 - alpha)`` at ``log_c`` (increasing in it).

    With ``weights``, the self-normalized weighted mean: the rate under the law
    that the weights reweight the particles to.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(rejection_rate(jnp.zeros(10), -1.0))
    0.0
    """
    reject = 1.0 - acceptance_probability(log_w, log_c)
    if weights is None:
        return jnp.mean(reject)
    return jnp.sum(weights * reject) / jnp.sum(weights)


def fit_rejection(
    log_w,
    rate: float = 0.2,
    tol: float = 1e-4,
    max_iter: int = 200,
    weights=None,
):
    """Choose ``log c`` so that a fraction ``rate`` of the particles is rejected.

    Follows the reference code: start at the mean finite log-weight, widen a
    bracket by doubling steps of ``log 2``, then bisect until the rejection rates at
    the bracket ends differ by at most ``tol``.

    Parameters
    ----------
    log_w : Array, shape (n,)
        ``log g - log p`` of the training particles.
    rate : float
        Target rejection rate.
    tol : float
        Stop when the bracket's rates differ by less than this.
    max_iter : int
        Cap on bracketing and on bisection steps.
    weights : Array, shape (n,), optional
        Importance weights (any positive scale) when the particles are draws of
        another law than the layer's input ``p``: the rate is then the
        self-normalized weighted rate, an estimate of the rate under ``p``.
        :func:`numpyro_jko.jko.fit` uses this to fit every rejection layer of a
        stack from cheap draws below the stack (see there).

    Returns
    -------
    RejectionLayer
        ``log_c`` (the last midpoint), ``rbar`` (the rate there) and its standard
        error.  Fit on draws that no earlier layer was fitted on: ``rbar`` is only
        unbiased on a fresh sample.

    Examples
    --------
    >>> import jax
    >>> log_w = jax.random.normal(jax.random.key(0), (10_000,))
    >>> layer = fit_rejection(log_w, rate=0.2)
    >>> abs(float(layer.rbar) - 0.2) < 1e-3
    True
    """
    log_w = _finite_log_weights(log_w)
    finite = jnp.isfinite(log_w)
    start = jnp.sum(jnp.where(finite, log_w, 0.0)) / jnp.maximum(jnp.sum(finite), 1)
    step0 = jnp.log(2.0).astype(log_w.dtype)
    too_low = rejection_rate(log_w, start, weights) < rate

    # Bracket: walk away from the start in growing steps until the rate crosses.
    def bracket_cond(carry):
        lo, hi, k = carry
        rate_lo = rejection_rate(log_w, lo, weights)
        rate_hi = rejection_rate(log_w, hi, weights)
        return ((rate_lo > rate) | (rate_hi < rate)) & (k < max_iter)

    def bracket_body(carry):
        lo, hi, k = carry
        shift = step0 * k
        lo = jnp.where(too_low, lo, lo - shift)
        hi = jnp.where(too_low, hi + shift, hi)
        return lo, hi, k + 1

    lo, hi, _ = jax.lax.while_loop(bracket_cond, bracket_body, (start, start, 1))

    def bisect_cond(carry):
        lo, hi, k = carry
        gap = rejection_rate(log_w, hi, weights) - rejection_rate(log_w, lo, weights)
        return (gap > tol) & (k < max_iter)

    def bisect_body(carry):
        lo, hi, k = carry
        mid = 0.5 * (lo + hi)
        above = rejection_rate(log_w, mid, weights) > rate
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi), k + 1

    lo, hi, _ = jax.lax.while_loop(bisect_cond, bisect_body, (lo, hi, 0))
    log_c = 0.5 * (lo + hi)
    alpha = acceptance_probability(log_w, log_c)
    if weights is None:
        rbar_se = jnp.std(alpha) / jnp.sqrt(alpha.shape[0])
        return RejectionLayer(log_c=log_c, rbar=1.0 - jnp.mean(alpha), rbar_se=rbar_se)
    # Self-normalized estimate and its delta-method standard error.
    w = weights / jnp.sum(weights)
    mean_alpha = jnp.sum(w * alpha)
    rbar_se = jnp.sqrt(jnp.sum((w * (alpha - mean_alpha)) ** 2))
    return RejectionLayer(log_c=log_c, rbar=1.0 - mean_alpha, rbar_se=rbar_se)


def energy_update(energy, log_w, layer: RejectionLayer):
    """New energy ``E - log(alpha + rbar)`` of a layer's output point.

    ``energy`` and ``log_w`` are those of the output point itself (for a replaced
    point: the replacement's), as in Theorem 4.2.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> layer = RejectionLayer(jnp.array(0.0), jnp.array(0.25))
    >>> float(energy_update(jnp.array(1.0), jnp.array(5.0), layer))  # alpha = 1
    0.7768564224243164
    """
    alpha = acceptance_probability(log_w, layer.log_c)
    return energy - jnp.log(alpha + layer.rbar)
