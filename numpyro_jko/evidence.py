r"""Evidence (``log Z``) from draws that carry their own normalized log density.

With i.i.d. draws ``x_i ~ q`` and log-weights ``log w_i = log g(x_i) - log q(x_i)``:

* ``log_Z`` is the importance-sampling estimate ``log mean w`` (unbiased for ``Z``);
* ``log_Z_se`` its delta-method standard error, ``std(w) / (mean(w) sqrt(n))``;
* ``elbo`` the ELBO-type estimate ``mean log w = log Z - KL(q || g/Z)`` (the
  reference code's estimator; a lower bound in expectation);
* ``ess`` the weight effective sample size ``(sum w)^2 / sum w^2``;
* ``pareto_k`` the PSIS shape estimate (ArviZ's :func:`arviz.psislw`): above 0.7 the
  variance of the weights is effectively infinite and ``log_Z_se`` cannot be trusted.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

__all__ = ["Evidence", "log_evidence", "pareto_k"]


class Evidence(NamedTuple):
    """Evidence estimate and its diagnostics (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> est = log_evidence(np.zeros(100), np.zeros(100))
    >>> est.log_Z, est.log_Z_se, est.ess
    (0.0, 0.0, 100.0)
    """

    log_Z: float
    log_Z_se: float
    elbo: float
    ess: float
    pareto_k: float
    num_draws: int
    num_nan: int

    def __str__(self) -> str:
        return (
            f"log Z = {self.log_Z:.4f} ± {self.log_Z_se:.2g} (IS), ELBO = "
            f"{self.elbo:.4f}, weight ESS = {self.ess:.0f}/{self.num_draws}, "
            f"PSIS k = {self.pareto_k:.2f}"
        )


def pareto_k(log_weights) -> float:
    """PSIS ``k-hat`` of importance log-weights, by ArviZ (``nan`` if undefined).

    Undefined (``nan``) for fewer than 20 finite weights, and when a tenth or more
    of the tail PSIS fits (its ``min(n / 5, 3 sqrt(n))`` largest weights) ties with
    the largest weight to 1e-6 in log.  Stacked rejection layers cap the weights
    this way.  A generalized Pareto fit to a tail of ties is degenerate: ArviZ
    returns ``inf`` for normal log-weights capped at their 90 % quantile, and
    -0.2 once the ties are broken by a 1e-6 jitter.  A capped tail has finite
    variance; ``log_Z_se`` and the ESS describe such weights.

    Examples
    --------
    >>> import numpy as np
    >>> log_w = np.random.default_rng(0).normal(size=2000) * 0.1
    >>> pareto_k(log_w) < 0.5
    True
    >>> pareto_k(np.minimum(log_w, np.quantile(log_w, 0.9)))  # capped: ties
    nan
    """
    import arviz as az

    log_weights = np.asarray(log_weights, dtype=np.float64)
    log_weights = log_weights[np.isfinite(log_weights)]
    if log_weights.size < 20:
        return float("nan")
    tail = int(min(0.2 * log_weights.size, 3 * np.sqrt(log_weights.size)))
    ties = np.sum(log_weights >= log_weights.max() - 1e-6)
    if ties >= max(2, 0.1 * tail):
        return float("nan")
    with warnings.catch_warnings():
        # ArviZ warns on large k; we report k and let callers warn with context.
        warnings.simplefilter("ignore")
        _, k = az.psislw(log_weights)
    return float(k)


def log_evidence(log_g, log_p) -> Evidence:
    """Importance-sampling evidence from target and proposal log densities.

    Parameters
    ----------
    log_g : array, shape (n,)
        Unnormalized target log density at the draws.  ``-inf`` is a draw of zero
        target density (weight 0, kept in the count).  ``NaN`` is a numerical failure:
        such draws are excluded and counted in ``num_nan`` (never silently).
    log_p : array, shape (n,)
        Normalized log density of the sampler at the same draws.

    Returns
    -------
    Evidence

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (4000,))
    >>> log_q = -0.5 * x**2 - 0.5 * jnp.log(2 * jnp.pi)
    >>> log_g = log_q + jnp.log(3.0)  # Z = 3
    >>> est = log_evidence(log_g, log_q)
    >>> round(est.log_Z, 4) == round(float(jnp.log(3.0)), 4)
    True
    """
    log_g = np.asarray(log_g, dtype=np.float64).reshape(-1)
    log_p = np.asarray(log_p, dtype=np.float64).reshape(-1)
    if log_g.shape != log_p.shape:
        raise ValueError(
            f"log_g and log_p differ in shape: {log_g.shape} vs {log_p.shape}"
        )
    log_w = log_g - log_p
    nan = np.isnan(log_w)
    num_nan = int(nan.sum())
    if num_nan:
        warnings.warn(
            f"{num_nan} of {log_w.size} draws have a NaN log weight (target or sampler "
            "density failed); they are excluded from the evidence.",
            RuntimeWarning,
            stacklevel=2,
        )
    log_w = log_w[~nan]
    n = log_w.size
    if n == 0 or not np.any(np.isfinite(log_w)):
        return Evidence(-math.inf, math.inf, -math.inf, 0.0, math.inf, n, num_nan)
    top = np.max(log_w)
    w = np.exp(log_w - top)
    mean_w = w.mean()
    log_z = float(top + np.log(mean_w))
    rel = w / mean_w
    se = float(np.std(rel) / math.sqrt(n))
    ess = float(w.sum() ** 2 / np.sum(w * w))
    elbo = float(np.mean(log_w))
    return Evidence(log_z, se, elbo, ess, pareto_k(log_w), n, num_nan)
