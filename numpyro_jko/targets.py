"""Benchmark targets of the paper (Hertrich & Gruhlke, Sec. 5), with exact samplers.

Each target is a :class:`Target`: an unnormalized ``logdensity_fn`` of a flat vector,
its dimension, an exact sampler, the true ``log Z`` (0 here: all are normalized) and
the mode centres where that makes sense.  Definitions follow the reference code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

__all__ = [
    "Target",
    "mustache",
    "shifted_eight_modes",
    "shifted_eight_peaky",
    "gmm",
    "funnel",
    "gaussian_mixture",
]


class Target(NamedTuple):
    """A test distribution with known normalizer and an exact sampler.

    Examples
    --------
    >>> import jax
    >>> t = mustache()
    >>> t.dim, t.log_Z, t.sample(jax.random.key(0), 3).shape
    (2, 0.0, (3, 2))
    """

    name: str
    logdensity_fn: Callable
    dim: int
    sample: Callable
    log_Z: float
    modes: jax.Array | None


def gaussian_mixture(means, variance, weights=None, name="mixture") -> Target:
    """Mixture of isotropic Gaussians ``N(mean_k, variance I)``; normalized.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> t = gaussian_mixture(jnp.array([[-1.0], [1.0]]), 0.1)
    >>> round(float(t.logdensity_fn(jnp.array([1.0]))), 4)
    -0.4608
    """
    means = jnp.asarray(means, jnp.float32)
    k, dim = means.shape
    weights = jnp.full(k, 1.0 / k) if weights is None else jnp.asarray(weights)
    log_weights = jnp.log(weights / jnp.sum(weights))
    norm = 0.5 * dim * math.log(2 * math.pi * variance)

    def logdensity_fn(x):
        sq = jnp.sum((x - means) ** 2, axis=-1)
        return logsumexp(log_weights - 0.5 * sq / variance) - norm

    def sample(rng_key, n):
        key_c, key_n = jax.random.split(rng_key)
        comp = jax.random.categorical(key_c, log_weights, shape=(n,))
        return means[comp] + math.sqrt(variance) * jax.random.normal(key_n, (n, dim))

    return Target(name, logdensity_fn, dim, sample, 0.0, means)


def mustache() -> Target:
    """The 2-D 'mustache': ``T(x) = (x1, x2 - (x1^2 - 1)^2)`` of a correlated Gaussian.

    ``Sigma = [[1, 0.9], [0.9, 1]]`` and ``det dT = 1``, so the density is
    ``N(T(x); 0, Sigma)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> round(float(mustache().logdensity_fn(jnp.array([1.0, 0.0]))), 4)
    -3.6391
    """
    cov = jnp.array([[1.0, 0.9], [0.9, 1.0]])
    prec = jnp.linalg.inv(cov)
    log_norm = math.log(2 * math.pi * math.sqrt(0.19))

    def logdensity_fn(x):
        t = jnp.stack([x[0], x[1] - (x[0] ** 2 - 1.0) ** 2])
        return -0.5 * t @ prec @ t - log_norm

    def sample(rng_key, n):
        w = jax.random.multivariate_normal(rng_key, jnp.zeros(2), cov, (n,))
        return jnp.stack([w[:, 0], w[:, 1] + (w[:, 0] ** 2 - 1.0) ** 2], axis=-1)

    return Target("mustache", logdensity_fn, 2, sample, 0.0, None)


def _eight_centres():
    angles = 2 * np.pi * np.arange(8) / 8
    return jnp.asarray(
        np.stack([np.cos(angles) - 1.0, np.sin(angles)], -1), jnp.float32
    )


def shifted_eight_modes() -> Target:
    """Eight equal ``N(m_k, 0.01 I)`` on the unit circle centred at ``(-1, 0)``.

    Examples
    --------
    >>> shifted_eight_modes().modes.shape
    (8, 2)
    """
    return gaussian_mixture(_eight_centres(), 0.01, name="shifted_eight_modes")


def shifted_eight_peaky() -> Target:
    """As :func:`shifted_eight_modes` with covariance ``0.005 I``.

    Examples
    --------
    >>> shifted_eight_peaky().name
    'shifted_eight_peaky'
    """
    return gaussian_mixture(_eight_centres(), 0.005, name="shifted_eight_peaky")


def gmm(dim: int, seed: int = 0) -> Target:
    """Ten equal ``N(mu_k, 0.01 I)`` with ``mu_k ~ U[-1, 1]^d`` drawn from ``seed``.

    Examples
    --------
    >>> t = gmm(10)
    >>> t.modes.shape, t.name
    ((10, 10), 'gmm10')
    """
    means = jax.random.uniform(jax.random.key(seed), (10, dim), minval=-1.0, maxval=1.0)
    return gaussian_mixture(means, 0.01, name=f"gmm{dim}")


def funnel(dim: int = 10) -> Target:
    """Neal's funnel: ``v ~ N(0, 9)``, ``x_i | v ~ N(0, e^v)`` for ``i < d``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> round(float(funnel(2).logdensity_fn(jnp.zeros(2))), 4)
    -2.9365
    """

    def logdensity_fn(x):
        v, rest = x[0], x[1:]
        return (
            -(v**2) / 18.0
            - 0.5 * math.log(18 * math.pi)
            - 0.5 * jnp.exp(-v) * jnp.sum(rest**2)
            - 0.5 * (dim - 1) * v
            - 0.5 * (dim - 1) * math.log(2 * math.pi)
        )

    def sample(rng_key, n):
        key_v, key_x = jax.random.split(rng_key)
        v = 3.0 * jax.random.normal(key_v, (n, 1))
        rest = jnp.exp(0.5 * v) * jax.random.normal(key_x, (n, dim - 1))
        return jnp.concatenate([v, rest], axis=-1)

    return Target(f"funnel{dim}", logdensity_fn, dim, sample, 0.0, None)
