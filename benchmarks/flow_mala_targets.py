# SPDX-License-Identifier: Apache-2.0
"""Targets of ``benchmarks/flow_mala.py`` (plain JAX: importable from flowMC's venv too).

* ``dual_moon`` -- flowMC's dual-moon tutorial target (5-D): a thin shell
  ``|x| = 2`` (width 0.1) modulated along ``x0`` (two bumps at +-3, scale 0.8) and
  ``x1`` (+-3, scale 0.6). Unnormalized. It is symmetric under ``x0 -> -x0`` and
  ``x1 -> -x1``, so each sign quadrant of ``(x0, x1)`` has weight exactly 1/4.
* ``gaussian_mixture(d)`` -- the 4-mode mixture of Grenioux et al. (ICML 2023):
  unit-covariance Gaussians at sign patterns ``(+-a, ..., +-a)`` with
  ``a = 0.591 sqrt(2 log d)``, here with unequal weights (0.4, 0.3, 0.2, 0.1).
  The four patterns (our choice; the paper's code picks its own) are all plus,
  all minus, first half plus / second half minus, and the reverse, so the
  nearest modes are ``2 a sqrt(d / 2)`` apart (12.4 at d = 32, 7.9 at d = 16).
  Normalized: ``log Z = 0``.
"""

import math

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

MIXTURE_WEIGHTS = (0.4, 0.3, 0.2, 0.1)


def dual_moon_logdensity(x):
    shell = -0.5 * ((jnp.linalg.norm(x) - 2.0) / 0.1) ** 2
    bumps0 = logsumexp(-0.5 * ((x[0] + jnp.array([-3.0, 3.0])) / 0.8) ** 2)
    bumps1 = logsumexp(-0.5 * ((x[1] + jnp.array([-3.0, 3.0])) / 0.6) ** 2)
    return shell + bumps0 + bumps1


def dual_moon_mode(x):
    """Quadrant index of (x0, x1), each of weight 1/4 by symmetry."""
    x = np.asarray(x)
    return (x[..., 0] > 0).astype(int) * 2 + (x[..., 1] > 0).astype(int)


def mixture_means(dim):
    a = 0.591 * math.sqrt(2.0 * math.log(dim))
    half = np.arange(dim) < dim // 2
    signs = np.stack(
        [
            np.ones(dim),
            -np.ones(dim),
            np.where(half, 1.0, -1.0),
            np.where(half, -1.0, 1.0),
        ]
    )
    return a * signs


def make_mixture(dim):
    means = jnp.asarray(mixture_means(dim))
    log_w = jnp.log(jnp.asarray(MIXTURE_WEIGHTS))
    norm = 0.5 * dim * math.log(2 * math.pi)

    def logdensity(x):
        return logsumexp(log_w - 0.5 * jnp.sum((x - means) ** 2, axis=-1)) - norm

    def mode(x):
        x = np.asarray(x)
        d2 = ((x[..., None, :] - np.asarray(means)) ** 2).sum(-1)
        return d2.argmin(-1)

    return logdensity, mode
