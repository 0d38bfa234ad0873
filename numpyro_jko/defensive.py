"""Defensive mixture layer: a heavy-tailed component under the rejection layers.

A rejection layer can only thin its input: where the chain below puts no mass, no
number of rejection layers puts any there.  A CNF trained by reverse KL tends to
leave such holes in a target's tails, because pulling a tail particle inward is a
cheaper way to raise ``log g`` than carrying it outward along a curved arm.
Measured (``benchmarks/results/jko_levers.md``): six CNFs on the mustache leave no
draw at ``|x1| > 2.5`` where the target has 1.2 % of its mass, and on funnel-10
none at ``v > 6.4`` (2.3 %); those holes alone put the energy distance at 1e-2.

The defensive layer (defensive importance sampling, Hesterberg 1995) mixes a
density with a wide Student-t proposal ``q``:

    p_out(x) = (1 - w) p_in(x) + w q(x),

so that every point where ``q > 0`` can be reached, and the rejection layers above
thin the mixture toward the target.  ``q`` is centred on the chain's latent mean,
with the latent's per-coordinate scale times ``scale_factor``; its ``df`` sets how
heavy its tails are.  :func:`numpyro_jko.jko.fit` adds it once the plain CNFs are
trained, in one of two places (``JKOConfig.defensive_position``):

* ``"latent"`` (the default): first in the chain, so the mixture is taken in the
  latent and pushed through the CNFs.  ``p_in`` is the Gaussian latent, known in
  closed form, so a draw costs nothing extra; and the CNFs, being deterministic
  maps, keep the chain's density exact while they carry the proposal's tails out
  along the geometry they learned.  Measured with weight 0.1 and the same CNFs
  (``benchmarks/results/jko_levers.md`` and
  ``paper_targets_funnel10_defensive.md``, session 10): energy distance 6.3e-3
  against 1.0e-2 over the CNFs on the mustache, 3.8e-3 against 4.7e-3 on
  funnel-10, whose draws then cost a third as much.
* ``"above_cnfs"``: over the CNFs.  A draw of ``q`` then needs ``p_in`` at that
  point, a pull-back through the CNFs (:func:`numpyro_jko.chain.log_prob`), and
  lands in the latent's coordinates, where the target may be far away (funnel-10:
  ELBO -1485 right after the layer, against -0.76 in the latent).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

__all__ = ["DefensiveLayer", "proposal_logpdf", "proposal_sample", "energy_update"]


class DefensiveLayer(NamedTuple):
    """A mixture ``(1 - weight) p_in + weight q`` with ``q`` a Student-t proposal.

    Attributes
    ----------
    weight : float
        Probability that a draw comes from ``q`` (in ``(0, 1)``).
    df : float
        Degrees of freedom of ``q``; smaller is heavier-tailed.
    scale_factor : float
        ``q``'s scale is this times the chain's latent scale.

    Examples
    --------
    >>> DefensiveLayer(0.1, 3.0, 1.0).weight
    0.1
    """

    weight: float
    df: float
    scale_factor: float = 1.0


def _standardize(x, mean, scale):
    dim = x.shape[-1]
    scale = jnp.broadcast_to(jnp.asarray(scale, x.dtype), (dim,))
    return (x - mean) / scale, jnp.sum(jnp.log(scale))


def proposal_logpdf(x, layer: DefensiveLayer, mean, scale):
    """``log q(x)`` per row of ``x``: a multivariate Student-t over the latent.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> lp = proposal_logpdf(jnp.zeros((1, 1)), DefensiveLayer(0.1, 1.0), jnp.zeros(1), 1.0)
    >>> round(float(lp[0]), 4)  # the Cauchy density at 0 is 1 / pi
    -1.1447
    """
    dim = x.shape[-1]
    z, log_scale = _standardize(x, mean, scale * layer.scale_factor)
    df = jnp.asarray(layer.df, x.dtype)
    norm = gammaln((df + dim) / 2) - gammaln(df / 2) - 0.5 * dim * jnp.log(df * math.pi)
    return norm - log_scale - 0.5 * (df + dim) * jnp.log1p(jnp.sum(z * z, -1) / df)


def proposal_sample(rng_key, layer: DefensiveLayer, mean, scale, num: int):
    """``num`` draws of ``q``: a Gaussian over the square root of a scaled chi-square.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> proposal_sample(jax.random.key(0), DefensiveLayer(0.1, 3.0), jnp.zeros(2),
    ...                 1.0, 4).shape
    (4, 2)
    """
    dim = mean.shape[-1]
    key_normal, key_gamma = jax.random.split(rng_key)
    normal = jax.random.normal(key_normal, (num, dim), mean.dtype)
    # chi2_df / df = 2 Gamma(df / 2) / df
    mix = jax.random.gamma(key_gamma, layer.df / 2, (num, 1), mean.dtype) * (
        2.0 / layer.df
    )
    scale = jnp.broadcast_to(jnp.asarray(scale, mean.dtype), (dim,))
    return mean + scale * layer.scale_factor * normal / jnp.sqrt(mix)


def energy_update(energy, x, layer: DefensiveLayer, mean, scale):
    """``-log p_out`` from ``energy = -log p_in`` at the same points ``x``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> layer = DefensiveLayer(0.5, 1.0)
    >>> e = energy_update(jnp.array([1.1447]), jnp.zeros((1, 1)), layer, jnp.zeros(1), 1.0)
    >>> round(float(e[0]), 3)  # both components have density 1 / pi at 0
    1.145
    """
    log_q = proposal_logpdf(x, layer, mean, scale)
    weight = jnp.asarray(layer.weight, energy.dtype)
    return -jnp.logaddexp(jnp.log1p(-weight) - energy, jnp.log(weight) + log_q)
