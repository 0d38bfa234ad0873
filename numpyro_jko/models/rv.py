"""Radial-velocity (Keplerian orbit) models for NumPyro.

This module provides

* a vectorised, jit/vmap-friendly Kepler equation solver, :func:`kepler_solve`,
  whose derivatives come from the implicit-function theorem (the iterations are
  never differentiated),
* :func:`true_anomaly` and :func:`rv_curve`, the radial velocity of a star on a
  Keplerian orbit,
* :func:`keplerian_model`, a builder of NumPyro models for radial-velocity data
  with any number of planets (including zero) and several instruments,
* :func:`load_rv_dataset`, a loader for the example data sets shipped in the
  repository's ``examples/data`` folder.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import gammaln
from numpyro.distributions import constraints

__all__ = [
    "RV_DATASETS",
    "RVDataset",
    "kepler_solve",
    "keplerian_model",
    "load_rv_dataset",
    "rv_curve",
    "true_anomaly",
]

_PI = np.pi
_TWO_PI = 2.0 * np.pi

# ---------------------------------------------------------------------------
# Kepler's equation
# ---------------------------------------------------------------------------


def _starting_guess(M, e):
    """Markley's (1995) cubic starter for ``0 <= M <= pi``.

    It is accurate to a few 1e-4 rad over the whole (M, e) square, including the
    hard corner of small M and e close to 1, where the simple ``M + e sin M``
    guesses make Newton's method wander.
    """
    alpha = (3.0 * _PI**2 + 1.6 * _PI * (_PI - M) / (1.0 + e)) / (_PI**2 - 6.0)
    d = 3.0 * (1.0 - e) + alpha * e
    q = 2.0 * alpha * d * (1.0 - e) - M * M
    r = 3.0 * alpha * d * (d - 1.0 + e) * M + M * M * M
    # The discriminant is positive on the whole domain; the clamp only guards
    # against round-off turning a tiny positive number negative.
    w = (jnp.abs(r) + jnp.sqrt(jnp.maximum(q * q * q + r * r, 0.0))) ** (2.0 / 3.0)
    return (2.0 * r * w / (w * w + w * q + q * q) + M) / d


def _refine(E, M, e):
    """One fifth-order (Householder-type) correction step, as in Markley (1995).

    Starting from the cubic starter's ~1e-4 error, a single step reaches the
    float64 round-off level; the nested corrections reuse the same sin/cos.
    """
    se = e * jnp.sin(E)
    ce = e * jnp.cos(E)
    f0 = E - se - M
    f1 = 1.0 - ce
    f2 = se
    f3 = ce
    d3 = -f0 / (f1 - 0.5 * f0 * f2 / f1)
    d4 = -f0 / (f1 + 0.5 * d3 * f2 + d3 * d3 * f3 / 6.0)
    d5 = -f0 / (f1 + 0.5 * d4 * f2 + d4 * d4 * f3 / 6.0 - d4 * d4 * d4 * f2 / 24.0)
    return E + d5


# Jitted so that eager calls (e.g. while NumPyro traces a model) compile one
# small program instead of dispatching dozens of separate primitives.
@jax.custom_jvp
@jax.jit
def _kepler(M, e):
    # Reduce to [-pi, pi] and solve for |M| on [0, pi]: the starter is built for
    # that interval, and E(-M) = -E(M), E(M + 2 pi k) = E(M) + 2 pi k.
    M_red = M - _TWO_PI * jnp.round(M / _TWO_PI)
    M_abs = jnp.abs(M_red)
    E = _starting_guess(M_abs, e)
    E = _refine(E, M_abs, e)
    E = jnp.where(M_red < 0, -E, E)
    return E + (M - M_red)


@_kepler.defjvp
def _kepler_jvp(primals, tangents):
    # Implicit-function theorem on F(E, M, e) = E - e sin E - M = 0:
    #   dE = (dM + sin E de) / (1 - e cos E).
    # The rule is written with _kepler itself, so higher derivatives also use it.
    M, e = primals
    dM, de = tangents
    E = _kepler(M, e)
    dE = (dM + jnp.sin(E) * de) / (1.0 - e * jnp.cos(E))
    return E, dE


def kepler_solve(M, e):
    """Solve Kepler's equation ``E - e sin E = M`` for the eccentric anomaly.

    The solver uses Markley's (1995) cubic starting guess followed by one
    fifth-order Householder-type correction: a fixed amount of work with no
    loop, so it is cheap, jit-able and vmap-able. Derivatives are supplied by the
    implicit-function theorem through :func:`jax.custom_jvp`
    (``dE/dM = 1 / (1 - e cos E)``, ``dE/de = sin E / (1 - e cos E)``), so
    the iterations are never differentiated, and ``jax.grad``, ``jax.jvp``,
    ``jax.jacfwd`` and higher derivatives all work.

    Parameters
    ----------
    M : array_like
        Mean anomaly in radians; any real value (it is reduced modulo 2 pi
        internally and the multiple of 2 pi is added back to ``E``).
    e : array_like
        Eccentricity, ``0 <= e < 1``. Broadcast against ``M``. The accuracy
        is checked for ``e < 0.99`` (the residual ``|E - e sin E - M|`` is
        below 1e-10 in float64; below about 1e-6 in float32).

    Returns
    -------
    E : jax.Array
        Eccentric anomaly, with the broadcast shape of ``M`` and ``e``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_jko.models import kepler_solve
    >>> M = jnp.linspace(-3.0, 3.0, 5)
    >>> E = kepler_solve(M, 0.5)
    >>> bool(jnp.max(jnp.abs(E - 0.5 * jnp.sin(E) - M)) < 1e-5)
    True
    """
    M = jnp.asarray(M)
    e = jnp.asarray(e)
    # A Python float is weakly typed: integer inputs become the default float
    # type, while float32/float64 inputs keep their precision.
    dtype = jnp.result_type(M, e, 0.0)
    M, e = jnp.broadcast_arrays(M.astype(dtype), e.astype(dtype))
    return _kepler(M, e)


def true_anomaly(E, e):
    """True anomaly from the eccentric anomaly.

    Uses ``f = 2 atan2(sqrt(1 + e) sin(E/2), sqrt(1 - e) cos(E/2))``, which
    is accurate for all ``E`` (unlike the ``tan(f/2)`` form, it has no
    division by ``cos(E/2)``) and differentiable everywhere.

    Parameters
    ----------
    E : array_like
        Eccentric anomaly in radians.
    e : array_like
        Eccentricity, ``0 <= e < 1``; broadcast against ``E``.

    Returns
    -------
    f : jax.Array
        True anomaly in radians, in ``(-2 pi, 2 pi]``; ``f`` has the same
        ``cos``/``sin`` as the true anomaly of the orbit.

    Examples
    --------
    >>> from numpyro_jko.models import true_anomaly
    >>> round(float(true_anomaly(1.0, 0.0)), 6)
    1.0
    """
    E = jnp.asarray(E)
    e = jnp.asarray(e)
    half = 0.5 * E
    return 2.0 * jnp.arctan2(
        jnp.sqrt(1.0 + e) * jnp.sin(half), jnp.sqrt(1.0 - e) * jnp.cos(half)
    )


def rv_curve(t, period, K, e, omega, phase, t_ref=0.0):
    """Radial velocity of a star on a Keplerian orbit.

    ``v(t) = K [cos(f(t) + omega) + e cos(omega)]`` where the true anomaly ``f``
    comes from the mean anomaly ``M(t) = 2 pi (t - t_ref) / period + phase``.
    ``omega`` is the argument of periastron of the *star's* orbit (the usual
    radial-velocity convention, positive ``v`` = receding). No systemic offset
    is added. All arguments broadcast, so several planets can be evaluated at
    once with ``t[:, None]`` and parameter vectors of shape ``(num_planets,)``.

    Parameters
    ----------
    t : array_like
        Observation times (same unit as ``period``).
    period : array_like
        Orbital period, > 0.
    K : array_like
        Semi-amplitude (velocity unit of the output).
    e : array_like
        Eccentricity, ``0 <= e < 1``.
    omega : array_like
        Argument of periastron in radians.
    phase : array_like
        Mean anomaly at ``t_ref`` in radians. The time of periastron passage is
        ``t_ref - phase * period / (2 pi)``.
    t_ref : array_like, optional
        Reference epoch, default 0.

    Returns
    -------
    v : jax.Array
        Radial velocity, with the broadcast shape of the inputs.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_jko.models import rv_curve
    >>> t = jnp.linspace(0.0, 10.0, 4)
    >>> v = rv_curve(t, period=10.0, K=5.0, e=0.0, omega=0.0, phase=0.0)
    >>> bool(jnp.allclose(v, 5.0 * jnp.cos(2 * jnp.pi * t / 10.0), atol=1e-4))
    True
    """
    t = jnp.asarray(t)
    e = jnp.asarray(e)
    M = _TWO_PI * (t - t_ref) / period + phase
    E = kepler_solve(M, e)
    f = true_anomaly(E, e)
    return K * (jnp.cos(f + omega) + e * jnp.cos(omega))


# ---------------------------------------------------------------------------
# NumPyro model builder
# ---------------------------------------------------------------------------


class _IsotropicRing(dist.Distribution):
    """Isotropic distribution on R^2 whose squared radius is Gamma(k, rate=k).

    The angle ``atan2(v[1], v[0])`` is exactly uniform for any ``k``. With
    ``k > 1`` the density vanishes at the origin like ``|v|**(2k - 2)`` and the
    radius concentrates around 1 (sd about ``1 / (2 sqrt(k))``), so a
    well-constrained angle is a short, nearly straight ray segment instead of a
    wedge reaching into the origin, where it narrows to nothing (a funnel that
    makes NUTS diverge and under-explore small radii). ``k = 1`` gives
    ``Normal(0, 1/sqrt(2))`` per coordinate. ``k`` is an integer so that
    ``|v|**2`` can be drawn as a sum of ``k`` exponentials: JAX's general gamma
    sampler is a loop that takes seconds to compile.
    """

    arg_constraints = {}
    support = constraints.real_vector
    reparametrized_params = []

    def __init__(self, concentration, batch_shape=(), *, validate_args=None):
        self.concentration = int(concentration)
        super().__init__(
            batch_shape=tuple(batch_shape),
            event_shape=(2,),
            validate_args=validate_args,
        )

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        k = self.concentration
        key_r, key_a = jax.random.split(key)
        r2 = jnp.sum(jax.random.exponential(key_r, shape + (k,)), axis=-1) / k
        r = jnp.sqrt(r2)
        angle = jax.random.uniform(key_a, shape, minval=-_PI, maxval=_PI)
        return jnp.stack([r * jnp.cos(angle), r * jnp.sin(angle)], axis=-1)

    def log_prob(self, value):
        # p(v) = Gamma(|v|^2; k, k) / pi, since the area element is
        # d(|v|^2) d(angle) / 2 and the angle density is 1 / (2 pi).
        k = self.concentration
        r2 = jnp.sum(value**2, axis=-1)
        return (
            (k - 1.0) * jnp.log(r2) - k * r2 + k * np.log(k) - gammaln(k) - np.log(_PI)
        )


class _FlatDirichlet(dist.Dirichlet):
    """``Dirichlet(1, ..., 1)`` sampled as normalised exponentials.

    Same density and support as the parent class; only ``sample`` differs, to
    avoid compiling JAX's gamma sampler (seconds) when a model is first traced.
    """

    def __init__(self, dim, *, validate_args=None):
        super().__init__(jnp.ones(dim), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        x = jax.random.exponential(key, shape)
        return x / jnp.sum(x, axis=-1, keepdims=True)


# Sentinel telling the built model to use the data it was built with: ``None``
# must stay available to mean "sample the observations" (prior predictive).
_USE_DATA = object()


def _encode_instruments(instrument, n):
    """Integer codes ``0..k-1`` and the sorted unique labels of the instruments."""
    if instrument is None:
        return np.zeros(n, dtype=np.int32), ("default",)
    labels = np.asarray(instrument)
    if labels.shape != (n,):
        raise ValueError(
            f"instrument must have the shape of t, {(n,)}; got {labels.shape}"
        )
    names, codes = np.unique(labels, return_inverse=True)
    return codes.astype(np.int32).reshape(n), tuple(names.tolist())


def _as_1d(x, name, n=None):
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} must have length {n}; got {a.shape[0]}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values")
    return a


def _bounds(b, name):
    lo, hi = (float(v) for v in b)
    if not 0.0 < lo < hi:
        raise ValueError(f"{name} must satisfy 0 < low < high; got {b}")
    return lo, hi


def keplerian_model(
    t,
    rv,
    rv_err,
    num_planets,
    instrument=None,
    *,
    period_bounds=(1.0, 1e4),
    K_bounds=None,
    t_ref=None,
    offset_scale=None,
    jitter_log_scale=2.0,
    jitter_log_loc=None,
    e_max=0.99,
    phase_concentration=8,
    marginalize_offsets=False,
    trend=0,
    trend_scale=None,
    trend_t_ref=None,
    order="period",
):
    """Build a NumPyro model of radial velocities with ``num_planets`` planets.

    The data are captured in a closure: the returned ``model`` takes no
    required argument, so it plugs directly into ``MCMC(NUTS(model))``,
    :func:`numpyro.infer.util.initialize_model` or
    :func:`numpyro.infer.util.log_density` with empty ``args``/``kwargs``.
    The model is

    ``rv_n ~ Normal(offset[i_n] + drift(t_n) + sum_p v_p(t_n), sqrt(rv_err_n**2 + jitter[i_n]**2))``

    independently for each point ``n`` (inside ``numpyro.plate("data", N)``),
    where ``i_n`` is the instrument of point ``n``, ``v_p`` is
    :func:`rv_curve` for planet ``p``, evaluated at ``t_n - t_ref``, and
    ``drift(t) = sum_{k=1..trend} trend[k-1] * (t - trend_t_ref)**k`` is an
    optional polynomial drift (zero by default: ``trend=0``), e.g. the pull of
    a distant companion whose period is much longer than the time span.

    **Latent sites and priors** (every one is proper, so the model's evidence
    is well defined and comparable across ``num_planets``):

    ``log_P_spacings`` (only if ``num_planets >= 1``), shape ``(num_planets + 1,)``
        ``Dirichlet(1, ..., 1)``. The log periods are
        ``log_P = log(P_lo) + (log(P_hi) - log(P_lo)) * cumsum(spacings)[:-1]``.
        The partial sums of a flat Dirichlet are distributed exactly as the
        order statistics of ``num_planets`` i.i.d. uniforms, so ``log P`` is
        log-uniform on ``period_bounds`` for each planet, *ordered*
        (``P_1 < P_2 < ...``) to break the label-switching symmetry, with no
        Jacobian bookkeeping. Because the likelihood is symmetric under
        relabelling, the evidence equals that of the unordered model with
        i.i.d. log-uniform periods.
    ``ecc_vec``, shape ``(num_planets, 2)``
        ``Normal(0, 1)`` on each entry. With ``r2 = |ecc_vec|**2``,
        ``e = e_max * (1 - exp(-r2 / 2))`` and ``omega = atan2(ecc_vec[:, 1],
        ecc_vec[:, 0])``. Since ``r2 ~ chi2(2)``, ``e`` is uniform on
        ``(0, e_max)`` and ``omega`` uniform on ``(-pi, pi]``, independently:
        ``(sqrt(e) cos omega, sqrt(e) sin omega)`` is uniform on the disk of
        radius ``sqrt(e_max)``. The map is smooth at ``e = 0``, has no hard
        wall at ``e_max`` and no angle wrap.
    ``phase_vec``, shape ``(num_planets, 2)``
        An isotropic density on R^2 with ``|phase_vec|**2 ~ Gamma(k, rate=k)``,
        ``k = phase_concentration``, i.e. ``p(v) = Gamma(|v|**2; k, k) / pi``.
        The angle ``lambda = atan2(phase_vec[:, 1], phase_vec[:, 0])`` is
        exactly uniform on ``(-pi, pi]`` and has no wrap, as in Gabrié et al.'s
        Kepler example (an unconstrained 2-vector with a radial factor). The
        radius is a nuisance; unlike a standard-normal radius (``k = 1``,
        up to scale), ``k = 8`` keeps it near 1 and away from the origin, where
        a well-measured angle would otherwise form a narrowing wedge that makes
        NUTS diverge. ``lambda`` is the *mean longitude* at ``t_ref``,
        ``lambda = phase + omega``: sampling it instead of the mean anomaly
        removes the strong ``phase``-``omega`` correlation of nearly circular
        orbits, where only their sum is constrained.
    ``log_K``, shape ``(num_planets,)``
        ``Uniform(log(K_lo), log(K_hi))``, i.e. ``K`` log-uniform on
        ``K_bounds``.

    ``offset``, shape ``(num_instruments,)`` (absent if ``marginalize_offsets``)
        ``Normal(mean of that instrument's rv, offset_scale)``.
    ``trend``, shape ``(trend,)`` (only if ``trend >= 1``)
        Absent if ``marginalize_offsets``, which integrates it out with the
        offsets.  ``Normal(0, trend_scale[k-1])`` on the coefficient of
        ``(t - trend_t_ref)**k``: the slope (``k = 1``, velocity unit per time
        unit, e.g. m/s/day) and the curvature (``k = 2``, m/s/day**2). The
        default scales, ``ptp / (T / 2)**k`` with ``T`` the time span, make a
        one-sigma drift move the velocity by ``ptp`` between the reference
        epoch and either end of the data: wide, but proper (the evidence pays
        ``log`` of this width for each coefficient).
    ``log_jitter``, shape ``(num_instruments,)``
        ``Normal(log(median rv_err of that instrument), jitter_log_scale)`` (the
        mean can be set with ``jitter_log_loc``):
        the jitter is a priori of the order of the quoted errors, with a
        factor ``exp(2 * 2) ~ 55`` either way inside the 95% interval by
        default.

    With ``order="amplitude"`` the planets are labelled by decreasing ``K``
    instead of increasing ``P``; the prior of the (unordered) physical
    parameters and hence the evidence are the same, only the sites change:
    ``log_P_frac``, shape ``(num_planets,)``, ``Uniform(0, 1)``, with ``log_P =
    log(P_lo) + (log(P_hi) - log(P_lo)) * log_P_frac`` (i.i.d., not ordered);
    ``log_K_max``, shape ``()``, ``Uniform(log(K_lo), log(K_hi))``, the largest
    ``log K``; and, for ``num_planets >= 2``, ``log_K_fracs``, shape
    ``(num_planets - 1,)``, ``Uniform(0, 1)``, with ``log K_{j+1} = log K_lo +
    (log K_j - log K_lo) * log_K_fracs[j]``, plus the factor
    ``"amplitude_order"``, ``log(n!) - (n - 1) log(log K_hi - log K_lo) +
    sum_{j < n} log(log K_j - log K_lo)``, which makes the density of the
    ordered ``log K`` that of the order statistics of ``n`` i.i.d. uniforms.
    This labelling suits an over-complete model (2 planets where the data hold
    one): its posterior is then one connected region, the strong planet near
    its orbit and the weak one anywhere, where the period labelling splits it
    in two (the weak planet's period below or above the strong one's).
    Caveat: :class:`numpyro.infer.Predictive` draws ``log_K_max`` and
    ``log_K_fracs`` from their uniform site distributions and ignores the
    factor, so its "prior" draws of ``K`` are not the model's prior with this
    labelling (the log density, hence MCMC and the evidence, are right).

    **Deterministic sites** (physical values): ``P``, ``log_P``, ``K``, ``e``,
    ``omega``, ``phase`` (mean anomaly at ``t_ref``, in ``[-pi, pi)``; the
    time of periastron is ``t_ref - phase * P / (2 pi)``) of shape
    ``(num_planets,)``, and ``jitter`` of shape ``(num_instruments,)``.

    **Analytic offset marginalisation** (``marginalize_offsets=True``). Given
    the other parameters, each instrument's offset has a Gaussian prior and a
    Gaussian likelihood, so it is integrated out exactly: with residuals
    ``r_n = rv_n - sum_p v_p(t_n) - m_i``, weights ``w_n = 1 / sigma_n**2``,
    ``W = sum w_n``, ``rbar = sum w_n r_n / W`` and ``A = W + 1 / s**2``
    (sums over the instrument's points, ``m_i`` and ``s`` the prior mean and
    scale), the marginal log-likelihood added by ``numpyro.factor("obs_marginal",
    ...)`` is ``-1/2 [sum w_n (r_n - rbar)**2 + W rbar**2 / (s**2 A) +
    sum log(2 pi sigma_n**2) + log(s**2 A)]``, summed over instruments. The
    model's evidence is unchanged and the latent dimension drops by the number
    of instruments. The offsets' conditional posterior ``Normal(m_i + W rbar /
    A, 1 / sqrt(A))`` is reported by the deterministic sites
    ``offset_cond_mean`` and ``offset_cond_sd``; there is no ``obs`` site.

    With ``trend >= 1`` the drift coefficients are linear parameters with a
    Normal prior too, and ``marginalize_offsets=True`` integrates them out
    jointly with the offsets: with the design matrix ``X`` (one column per
    instrument, one per power ``(t - trend_t_ref)**k``), the prior
    ``Normal(m, diag(s**2))`` of the coefficients, ``G = X^T diag(w) X +
    diag(1 / s**2)`` and ``beta = G^-1 X^T (w r)``, the factor is
    ``-1/2 [sum w_n (r_n - (X beta)_n)**2 + sum (beta / s)**2 + sum log(2 pi
    sigma_n**2) + sum log(s**2) + log det G]`` (with ``X`` the instrument
    one-hot alone this is the formula above). The conditional posterior
    ``Normal(m + beta, G^-1)`` is reported by ``offset_cond_mean``,
    ``offset_cond_sd``, ``trend_cond_mean`` and ``trend_cond_sd`` (marginal
    means and standard deviations of each coefficient).

    Parameters
    ----------
    t, rv, rv_err : array_like, shape (N,)
        Observation times, radial velocities and their 1-sigma errors
        (``rv_err > 0``). Times and periods share a unit, velocities and ``K``
        share another. ``t - t_ref`` is formed in float64 NumPy before it
        reaches JAX, so large epochs (e.g. BJD) lose no precision in float32.
    num_planets : int
        Number of Keplerian signals, ``>= 0``. With 0 the model has offsets and
        jitters only (the null model for evidence comparisons).
    instrument : array_like of str or int, shape (N,), optional
        Instrument label of each point. Each distinct label (sorted, as by
        :func:`numpy.unique`) gets its own offset and jitter. ``None``: a
        single instrument.
    period_bounds : tuple of float, default (1.0, 1e4)
        Support ``(P_lo, P_hi)`` of the log-uniform period prior.
    K_bounds : tuple of float, optional
        Support ``(K_lo, K_hi)`` of the log-uniform semi-amplitude prior.
        Default: ``(ptp / 1000, 10 * ptp)`` with ``ptp = max(rv) - min(rv)``.
    t_ref : float, optional
        Reference epoch of ``phase``. Default: the middle of the time span,
        which reduces the period-phase correlation.
    offset_scale : float, optional
        Standard deviation of the offsets' Normal prior. Default: ``ptp`` (as
        above), or 1 if all velocities are equal.
    jitter_log_scale : float, default 2.0
        Standard deviation of the Normal prior on each log jitter.
    jitter_log_loc : float or array_like, optional
        Mean of the Normal prior on each log jitter (one value, or one per
        instrument). Default: the log of the instrument's median ``rv_err``.
        A low mean with a small scale (e.g. ``log(1e-3 * median rv_err)``,
        scale 0.5) all but removes the jitter, as The Joker's default prior does.
    e_max : float, default 0.99
        Upper bound of the eccentricity, ``0 < e_max < 1``.
    phase_concentration : int, default 8
        Shape ``k >= 1`` (an integer) of the Gamma law of ``|phase_vec|**2``
        (see above). It does not change the prior of any physical parameter.
    marginalize_offsets : bool, default False
        Integrate the offsets (and the trend coefficients) out analytically
        (see above).
    trend : int, default 0
        Degree of the polynomial drift: 0 (none), 1 (linear: a slope) or 2
        (linear and quadratic: slope and curvature).
    trend_scale : float or sequence of float, optional
        Standard deviations of the Normal priors on the ``trend`` coefficients
        (one value for all, or one per power), in velocity unit per time
        unit**k. Default: ``ptp / (T / 2)**k`` (see above).
    trend_t_ref : float, optional
        Reference epoch of the drift. Default: the mean observation time,
        which decorrelates the slope from the offset of a single instrument.
    order : {"period", "amplitude"}, default "period"
        How the planets are labelled: by increasing period or by decreasing
        semi-amplitude (see above). The evidence does not depend on it.

    Returns
    -------
    model : callable
        ``model(rv=<data>)``: the NumPyro model. Called without argument it
        conditions on the data it was built with; ``model(rv=None)`` samples
        the observations instead (for :class:`numpyro.infer.Predictive`; not
        available with ``marginalize_offsets=True``). It carries the attributes
        ``t_ref``, ``instrument_names``, ``num_planets``, ``num_instruments``,
        ``period_bounds``, ``K_bounds``, ``offset_loc``, ``offset_scale``,
        ``jitter_log_loc``, ``jitter_log_scale``, ``trend``, ``trend_scale``
        (array of shape ``(trend,)``), ``trend_t_ref`` and ``order``.

    Notes
    -----
    * The eccentricity prior is uniform (``(sqrt(e) cos omega, sqrt(e) sin
      omega)`` uniform on a disk); Kipping's (2013) Beta(0.867, 3.03) prior is
      not offered, since its density diverges at ``e = 0``.
    * ``omega`` and ``lambda`` are undefined when ``ecc_vec`` or ``phase_vec``
      is exactly zero (a null set; their gradients are NaN there). NUTS's
      default ``init_to_uniform`` never lands there.
    * The posterior over periods is typically multimodal (aliases, harmonics,
      eccentric local optima): a single NUTS chain can stay in a secondary
      mode, which is what the samplers of this package are for.

    Examples
    --------
    >>> import jax
    >>> from numpyro.infer.util import initialize_model
    >>> from numpyro_jko.models import keplerian_model, load_rv_dataset
    >>> d = load_rv_dataset("bl2009_1")
    >>> model = keplerian_model(d.t, d.rv, d.rv_err, num_planets=1)
    >>> info = initialize_model(jax.random.PRNGKey(0), model)[0]
    >>> sorted(info.z)
    ['ecc_vec', 'log_K', 'log_P_spacings', 'log_jitter', 'offset', 'phase_vec']

    A linear drift, sampled or integrated out with the offsets:

    >>> d = load_rv_dataset("51peg")
    >>> model = keplerian_model(d.t, d.rv, d.rv_err, num_planets=0, trend=1)
    >>> sorted(initialize_model(jax.random.PRNGKey(0), model)[0].z)
    ['log_jitter', 'offset', 'trend']
    >>> model = keplerian_model(
    ...     d.t, d.rv, d.rv_err, 0, trend=1, marginalize_offsets=True
    ... )
    >>> sorted(initialize_model(jax.random.PRNGKey(0), model)[0].z)
    ['log_jitter']
    >>> bool(model.trend_scale[0] > 0)
    True
    """
    t_np = _as_1d(t, "t")
    n = t_np.shape[0]
    if n == 0:
        raise ValueError("t is empty")
    rv_np = _as_1d(rv, "rv", n)
    err_np = _as_1d(rv_err, "rv_err", n)
    if np.any(err_np <= 0):
        raise ValueError("rv_err must be > 0")
    if int(num_planets) != num_planets or num_planets < 0:
        raise ValueError(f"num_planets must be an integer >= 0; got {num_planets}")
    num_planets = int(num_planets)
    if not 0.0 < e_max < 1.0:
        raise ValueError(f"e_max must be in (0, 1); got {e_max}")
    if jitter_log_scale <= 0:
        raise ValueError("jitter_log_scale must be > 0")
    if int(phase_concentration) != phase_concentration or phase_concentration < 1:
        raise ValueError(
            f"phase_concentration must be an integer >= 1; got {phase_concentration}"
        )

    if order not in ("period", "amplitude"):
        raise ValueError(f"order must be 'period' or 'amplitude'; got {order!r}")
    if int(trend) != trend or not 0 <= trend <= 2:
        raise ValueError(f"trend must be 0, 1 or 2; got {trend}")
    trend = int(trend)

    codes_np, names = _encode_instruments(instrument, n)
    n_inst = len(names)
    counts = np.bincount(codes_np, minlength=n_inst)
    ptp = float(np.ptp(rv_np))
    scale = ptp if ptp > 0 else 1.0

    p_lo, p_hi = _bounds(period_bounds, "period_bounds")
    k_lo, k_hi = _bounds(
        (scale / 1000.0, 10.0 * scale) if K_bounds is None else K_bounds, "K_bounds"
    )
    if t_ref is None:
        t_ref = 0.5 * (t_np.min() + t_np.max())
    t_ref = float(t_ref)
    off_scale = scale if offset_scale is None else float(offset_scale)
    if off_scale <= 0:
        raise ValueError("offset_scale must be > 0")

    # Constants computed once in float64 NumPy (a loop over instruments, not
    # over data points); JAX casts them to its working precision.
    dt_np = t_np - t_ref
    off_loc = np.bincount(codes_np, weights=rv_np, minlength=n_inst) / counts
    if jitter_log_loc is None:
        jit_loc = np.log([np.median(err_np[codes_np == i]) for i in range(n_inst)])
    else:
        jit_loc = np.broadcast_to(np.asarray(jitter_log_loc, np.float64), (n_inst,))
        jit_loc = np.array(jit_loc)
    onehot = (codes_np[:, None] == np.arange(n_inst)[None, :]).astype(np.float64)
    log_p_lo, log_p_hi = np.log(p_lo), np.log(p_hi)

    # Polynomial drift: powers of (t - trend_t_ref), and of the same time in
    # units of half the span (tau) for the marginal likelihood's linear
    # algebra, which then works with columns of order 1 (float32-friendly).
    trend_t_ref = float(np.mean(t_np)) if trend_t_ref is None else float(trend_t_ref)
    tau = 0.5 * float(np.ptp(t_np)) or 1.0
    powers = np.arange(1, trend + 1)
    if trend_scale is None:
        trend_sd = scale / tau**powers
    else:
        trend_sd = np.broadcast_to(np.asarray(trend_scale, np.float64), (trend,))
        trend_sd = np.array(trend_sd)
    if np.any(trend_sd <= 0):
        raise ValueError("trend_scale must be > 0")
    dtr_np = t_np - trend_t_ref
    trend_cols = dtr_np[:, None] ** powers[None, :]  # (N, trend)
    # Design matrix of the linear parameters in scaled units: offsets, then the
    # drift coefficients times tau**k; their prior means and sds.
    design = np.concatenate([onehot, (dtr_np[:, None] / tau) ** powers], axis=1)
    lin_loc = np.concatenate([off_loc, np.zeros(trend)])
    lin_sd = np.concatenate([np.full(n_inst, off_scale), trend_sd * tau**powers])
    lin_unscale = np.concatenate([np.ones(n_inst), tau**-powers])

    # The numerical parts are pure functions, jitted so that eager model calls
    # (NumPyro's initialisation traces and differentiates the model outside of
    # jit) compile a few programs instead of every primitive one by one; under
    # an outer jit they are simply inlined.
    @jax.jit
    def planet_terms(log_P, ecc_vec, phase_vec, log_K):
        P = jnp.exp(log_P)
        K = jnp.exp(log_K)
        r2 = jnp.sum(ecc_vec**2, axis=-1)
        # 1 - exp(-r2/2) is Uniform(0, 1) for r2 ~ chi2(2); expm1 keeps it
        # accurate for nearly circular orbits.
        e = -e_max * jnp.expm1(-0.5 * r2)
        omega = jnp.arctan2(ecc_vec[..., 1], ecc_vec[..., 0])
        lam = jnp.arctan2(phase_vec[..., 1], phase_vec[..., 0])
        M0 = lam - omega
        dt = jnp.asarray(dt_np)
        signal = jnp.sum(rv_curve(dt[:, None], P, K, e, omega, M0), axis=-1)
        phys = {
            "log_P": log_P,
            "P": P,
            "K": K,
            "e": e,
            "omega": omega,
            "phase": jnp.mod(M0 + _PI, _TWO_PI) - _PI,
        }
        return phys, signal

    @jax.jit
    def noise_var(log_jitter):
        jitter = jnp.exp(log_jitter)
        return jitter, jnp.asarray(err_np) ** 2 + jitter[codes_np] ** 2

    @jax.jit
    def marginal_loglik(obs, signal, var):
        oh = jnp.asarray(onehot)
        resid = obs - signal - jnp.asarray(off_loc)[codes_np]
        w = 1.0 / var
        W = w @ oh
        rbar = ((w * resid) @ oh) / W
        A = W + 1.0 / off_scale**2
        # Written around the weighted mean so that nothing cancels when the
        # prior is broad: sum w (r - rbar)^2 + W rbar^2 / (s^2 A) equals
        # sum w r^2 - (sum w r)^2 / A without the subtraction of large terms.
        quad = jnp.sum(w * (resid - rbar[codes_np]) ** 2) + jnp.sum(
            W * rbar**2 / (off_scale**2 * A)
        )
        logdet = jnp.sum(jnp.log(_TWO_PI * var)) + jnp.sum(jnp.log(off_scale**2 * A))
        return -0.5 * (quad + logdet), off_loc + W * rbar / A, 1.0 / jnp.sqrt(A)

    @jax.jit
    def marginal_loglik_linear(obs, signal, var):
        # Offsets and drift coefficients together (see the docstring): the
        # quadratic form is evaluated at the conditional mode beta, as a sum of
        # non-negative terms, not as r^T C^-1 r - b^T G^-1 b.
        X = jnp.asarray(design)
        s = jnp.asarray(lin_sd)
        resid = obs - signal - jnp.asarray(off_loc)[codes_np]
        w = 1.0 / var
        G = (X * w[:, None]).T @ X + jnp.diag(1.0 / s**2)
        cho = jax.scipy.linalg.cho_factor(G, lower=True)
        beta = jax.scipy.linalg.cho_solve(cho, X.T @ (w * resid))
        quad = jnp.sum(w * (resid - X @ beta) ** 2) + jnp.sum((beta / s) ** 2)
        logdet = (
            jnp.sum(jnp.log(_TWO_PI * var))
            + jnp.sum(jnp.log(s**2))
            + 2.0 * jnp.sum(jnp.log(jnp.diag(cho[0])))
        )
        cov = jax.scipy.linalg.cho_solve(cho, jnp.eye(G.shape[0]))
        unscale = jnp.asarray(lin_unscale)
        mean = (jnp.asarray(lin_loc) + beta) * unscale
        sd = jnp.sqrt(jnp.diag(cov)) * unscale
        return -0.5 * (quad + logdet), mean, sd

    def _descending_log_K(num):
        lo, span = np.log(k_lo), np.log(k_hi) - np.log(k_lo)
        top = numpyro.sample("log_K_max", dist.Uniform(lo, lo + span))
        if num == 1:
            return top[None]
        fracs = numpyro.sample(
            "log_K_fracs", dist.Uniform(0.0, 1.0).expand([num - 1]).to_event(1)
        )
        values = [top]
        for j in range(num - 1):
            values.append(lo + (values[-1] - lo) * fracs[j])
        log_K = jnp.stack(values)
        numpyro.factor(
            "amplitude_order",
            math.lgamma(num + 1) - (num - 1) * np.log(span)
            + jnp.sum(jnp.log(log_K[:-1] - lo)),
        )  # fmt: skip
        return log_K

    def model(rv=_USE_DATA):
        obs = rv_np if rv is _USE_DATA else rv

        if num_planets > 0 and order == "period":
            spacings = numpyro.sample("log_P_spacings", _FlatDirichlet(num_planets + 1))
            log_P = log_p_lo + (log_p_hi - log_p_lo) * jnp.cumsum(spacings[:-1])
        elif num_planets > 0:
            unit = dist.Uniform(0.0, 1.0)
            frac = numpyro.sample("log_P_frac", unit.expand([num_planets]).to_event(1))
            log_P = log_p_lo + (log_p_hi - log_p_lo) * frac
        if num_planets > 0:
            ecc_vec = numpyro.sample(
                "ecc_vec", dist.Normal(0.0, 1.0).expand([num_planets, 2]).to_event(2)
            )
            phase_vec = numpyro.sample(
                "phase_vec",
                _IsotropicRing(phase_concentration, (num_planets,)).to_event(1),
            )
            if order == "period":
                log_K = numpyro.sample(
                    "log_K",
                    dist.Uniform(np.log(k_lo), np.log(k_hi))
                    .expand([num_planets])
                    .to_event(1),
                )
            else:
                log_K = _descending_log_K(num_planets)
            phys, signal = planet_terms(log_P, ecc_vec, phase_vec, log_K)
            for site, value in phys.items():
                numpyro.deterministic(site, value)
        else:
            signal = jnp.zeros(n)

        log_jitter = numpyro.sample(
            "log_jitter", dist.Normal(jit_loc, jitter_log_scale).to_event(1)
        )
        jitter, var = noise_var(log_jitter)
        numpyro.deterministic("jitter", jitter)

        if not marginalize_offsets:
            offset = numpyro.sample(
                "offset", dist.Normal(off_loc, off_scale).to_event(1)
            )
            mean = offset[codes_np] + signal
            if trend:
                coef = numpyro.sample(
                    "trend", dist.Normal(jnp.zeros(trend), trend_sd).to_event(1)
                )
                mean = mean + jnp.asarray(trend_cols) @ coef
            with numpyro.plate("data", n):
                numpyro.sample("obs", dist.Normal(mean, jnp.sqrt(var)), obs=obs)
            return

        if obs is None:
            raise ValueError(
                "model(rv=None) (sampling the observations) is not available "
                "with marginalize_offsets=True"
            )
        if not trend:
            loglik, cond_mean, cond_sd = marginal_loglik(jnp.asarray(obs), signal, var)
            numpyro.factor("obs_marginal", loglik)
            numpyro.deterministic("offset_cond_mean", cond_mean)
            numpyro.deterministic("offset_cond_sd", cond_sd)
            return
        loglik, cond_mean, cond_sd = marginal_loglik_linear(
            jnp.asarray(obs), signal, var
        )
        numpyro.factor("obs_marginal", loglik)
        numpyro.deterministic("offset_cond_mean", cond_mean[:n_inst])
        numpyro.deterministic("offset_cond_sd", cond_sd[:n_inst])
        numpyro.deterministic("trend_cond_mean", cond_mean[n_inst:])
        numpyro.deterministic("trend_cond_sd", cond_sd[n_inst:])

    model.t_ref = t_ref
    model.instrument_names = names
    model.num_planets = num_planets
    model.num_instruments = n_inst
    model.period_bounds = (p_lo, p_hi)
    model.K_bounds = (k_lo, k_hi)
    model.offset_loc = off_loc
    model.offset_scale = off_scale
    model.jitter_log_loc = jit_loc
    model.jitter_log_scale = float(jitter_log_scale)
    model.trend = trend
    model.order = order
    model.trend_scale = trend_sd
    model.trend_t_ref = trend_t_ref
    return model


# ---------------------------------------------------------------------------
# Example data sets
# ---------------------------------------------------------------------------


class RVDataset(NamedTuple):
    """A radial-velocity data set, as returned by :func:`load_rv_dataset`.

    Attributes
    ----------
    name : str
        Loader name of the data set.
    t, rv, rv_err : numpy.ndarray
        Times, radial velocities and their 1-sigma errors (float64).
    instrument : numpy.ndarray or None
        Instrument label (str) of each point, or ``None`` for one instrument.
    units : dict
        ``{"t": ..., "rv": ...}``, the units of the times and of ``rv`` and
        ``rv_err``.
    citation : str
        The publication to cite, and where the file came from.

    Examples
    --------
    >>> from numpyro_jko.models import load_rv_dataset
    >>> d = load_rv_dataset("bl2009_1")
    >>> d.t.shape == d.rv.shape == d.rv_err.shape
    True
    """

    name: str
    t: np.ndarray
    rv: np.ndarray
    rv_err: np.ndarray
    instrument: np.ndarray | None
    units: dict
    citation: str


# name -> (file, time column, rv column, error column, instrument column,
#          units, citation)
_DATASETS = {
    "bl2009_1": (
        "bl2009_dataset1.csv",
        "time_day",
        "rv_m_s",
        "rv_err_m_s",
        None,
        {"t": "day", "rv": "m/s"},
        "Balan & Lahav 2009, MNRAS 394, 1936 (simulated, 1 planet); "
        "file from kima 6.4.1 (MIT)",
    ),
    "bl2009_2": (
        "bl2009_dataset2.csv",
        "time_day",
        "rv_m_s",
        "rv_err_m_s",
        None,
        {"t": "day", "rv": "m/s"},
        "Balan & Lahav 2009, MNRAS 394, 1936 (simulated, 2 planets); "
        "file from kima 6.4.1 (MIT)",
    ),
    "51peg": (
        "51peg_lick_butler2006.csv",
        "time_mjd",
        "rv_m_s",
        "rv_err_m_s",
        None,
        {"t": "MJD (day)", "rv": "m/s"},
        "Butler et al. 2006, ApJ 646, 505 (Lick/Hamilton); file from kima 6.4.1 (MIT)",
    ),
    "hd164922": (
        "hd164922_fulton2016.csv",
        "time_bjd",
        "rv_m_s",
        "rv_err_m_s",
        "instrument",
        {"t": "BJD (day)", "rv": "m/s"},
        "Fulton et al. 2016, ApJ 830, 46 (instruments: k = HIRES before the "
        "2004 upgrade, j = HIRES after it, a = APF); file from radvel 1.6.7 (MIT)",
    ),
    "joker_sparse4": (
        "joker_sparse4_from_thejoker_data_ecsv.csv",
        "bjd_tcb",
        "rv_km_s",
        "rv_err_km_s",
        None,
        {"t": "BJD(TCB) (day)", "rv": "km/s"},
        "Price-Whelan et al. 2017, ApJ 837, 20 (synthetic; 4 rows of "
        "docs/examples/data.ecsv); file from thejoker 1.3.1 (MIT)",
    ),
    "k2-24": (
        "k2-24_epic203771098_hires.csv",
        "time_bjd_minus_2454833",
        "rv_m_s",
        "rv_err_m_s",
        None,
        {"t": "BJD - 2454833 (day)", "rv": "m/s"},
        "Petigura et al. 2016, ApJ 818, 36 (HIRES); file from radvel 1.6.7 (MIT)",
    ),
}

#: Names accepted by :func:`load_rv_dataset`.
RV_DATASETS = tuple(_DATASETS)


def _default_data_dir():
    # numpyro_jko/models/rv.py -> repository root is two levels above the
    # package directory; the data ship with the repository, not the wheel.
    return Path(__file__).resolve().parents[2] / "examples" / "data"


def load_rv_dataset(name, data_dir=None):
    """Load one of the example radial-velocity data sets.

    Parameters
    ----------
    name : str
        One of :data:`RV_DATASETS`: ``"bl2009_1"``, ``"bl2009_2"`` (simulated
        1- and 2-planet data of Balan & Lahav 2009), ``"51peg"`` (Lick),
        ``"hd164922"`` (three instruments), ``"joker_sparse4"`` (4 points,
        km/s) and ``"k2-24"``. See ``examples/data/SOURCES.md`` for sources,
        licenses and units.
    data_dir : str or path-like, optional
        Folder holding the CSV files. Default: ``examples/data`` in the
        repository that contains the package (this only exists for a source
        checkout or an editable install; pass ``data_dir`` otherwise).

    Returns
    -------
    RVDataset
        Named tuple ``(name, t, rv, rv_err, instrument, units, citation)``.

    Raises
    ------
    KeyError
        For an unknown ``name``.
    FileNotFoundError
        If the CSV file is not found in ``data_dir``.

    Examples
    --------
    >>> from numpyro_jko.models import load_rv_dataset
    >>> d = load_rv_dataset("hd164922")
    >>> sorted(set(d.instrument.tolist())), d.units["rv"]
    (['a', 'j', 'k'], 'm/s')
    """
    if name not in _DATASETS:
        raise KeyError(f"unknown RV data set {name!r}; choose one of {RV_DATASETS}")
    fname, tcol, rvcol, errcol, instcol, units, citation = _DATASETS[name]
    folder = _default_data_dir() if data_dir is None else Path(data_dir)
    path = folder / fname
    if not path.is_file():
        raise FileNotFoundError(
            f"RV data file {fname!r} not found in {str(folder)!r}. The example "
            "data live in the repository's examples/data folder and are not "
            "installed with the package; pass data_dir=<path to examples/data>."
        )
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    t = np.array([float(r[tcol]) for r in rows])
    rv = np.array([float(r[rvcol]) for r in rows])
    rv_err = np.array([float(r[errcol]) for r in rows])
    inst = None if instcol is None else np.array([r[instcol] for r in rows])
    return RVDataset(name, t, rv, rv_err, inst, dict(units), citation)
