"""Exoplanet radial velocities: multimodal orbits and planet counts by evidence.

Run::

    python examples/exoplanet_rv.py --quick      # one data set, small chains (< 2 min)
    python examples/exoplanet_rv.py              # every data set, 0/1/2 planets

For each data set the script fits Keplerian models with 0, 1 and 2 planets
(:func:`numpyro_jko.models.keplerian_model`, offsets marginalized analytically)
with :class:`numpyro_jko.JKOSampler`, prints a table of ``log Z ± se``, the Bayes
factors between consecutive planet counts and the planet count the evidence
picks, saves that table (``rv_evidence.md``) and, per data set, three plots under
``--outdir``: the posterior of ``log P`` (log-scaled counts, so that small modes
stay visible), the phase-folded data with 50 posterior orbits and the residuals,
and an ArviZ pair plot.

Where the chain's Gaussian latent sits matters more than any other knob here:

* **prior-IS latent** (weak data, e.g. The Joker's 4 points): the latent's mean
  and covariance are the posterior moments estimated from 200 000 prior draws
  weighted by the likelihood, on NumPyro's unconstrained space: a Gaussian over
  the whole posterior, so every period mode the data allow is reachable, but
  not over the prior's long-period quarter that the data all but exclude;
* **Laplace latent** (informative data): the likelihood is so peaked in ``log P``
  (widths of 1e-5 of the prior range for 51 Peg) that no flow finds the peak from
  the prior. A circular-orbit periodogram proposes periods, a few L-BFGS runs
  from them find the MAP (polished by L-BFGS in the coordinates that the
  Hessian whitens: float32 L-BFGS stops early on a Hessian spanning 8 decades),
  and the latent is centred there with the Laplace widths, widened by 1.2
  (``latent_scale``) and capped at the prior's width (an
  unconstrained planet in an over-complete model then keeps its prior spread).
  Modes far from the MAP (e.g. exact aliases of a regular time grid) are not
  searched: their mass is missing from the draws and from ``log Z`` (see the
  printed alias note; on BL2009 data set 1 they hold 0.05 nats,
  ``benchmarks/rv_nested_sampling.py``);
* **weak-planet latent** (an over-complete model: 2 planets where the data hold
  one): the planets labelled by amplitude, the strong one from the 1-planet fit,
  the weak one from its prior (:func:`weak_planet_latent`); chosen when the
  Laplace mass around the 2-planet MAP is below ``Z(1 planet) * 2``.

A planet is added only when it raises ``log Z`` by more than 3 nats
(``BF_THRESHOLD``).  51 Peg's model has a linear drift (``trend=1``), integrated
out with the offset.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.infer import Predictive, log_likelihood
from scipy.optimize import minimize

from numpyro_jko import JKOConfig, JKOSampler, JKOWarning
from numpyro_jko.jko import TWO_STEP
from numpyro_jko.models import keplerian_model, load_rv_dataset, rv_curve
from numpyro_jko.target import model_target

HERE = pathlib.Path(__file__).resolve().parent


class Problem(NamedTuple):
    """One data set and how it is fitted."""

    name: str
    title: str
    period_bounds: tuple
    latent: str  # "prior" or "laplace"
    planets: tuple  # planet counts to fit
    expect: str  # what the evidence should pick (printed with the table)
    model_kwargs: dict = {}  # more keplerian_model arguments


PROBLEMS = {
    "bl2009_1": Problem(
        "bl2009_1", "BL2009 data set 1", (1.0, 1e4), "laplace", (0, 1, 2), "1 planet"
    ),
    "bl2009_2": Problem(
        "bl2009_2", "BL2009 data set 2", (1.0, 1e4), "laplace", (0, 1, 2), "2 planets"
    ),
    "51peg": Problem(
        "51peg",
        "51 Peg (Lick)",
        (1.0, 1e4),
        "laplace",
        (0, 1, 2),
        "1 planet, 4.2308 d",
        # A linear drift over the 6 years (integrated out with the offset):
        # without it a daily alias of the drift, 1.0008 d, passes for a second
        # planet (chi^2 of a circular 4.2308 d orbit: 334 without the drift,
        # 260 with it; a quadratic term adds 0.4 more).
        {"trend": 1},
    ),
    "hd164922": Problem(
        "hd164922",
        "HD 164922 (k, j, a)",
        (1.0, 1e4),
        "laplace",
        (0, 1, 2),
        "planets near 1200 d and 75.8 d",
    ),
    "joker_sparse4": Problem(
        "joker_sparse4",
        "The Joker, 4 points",
        (2.0, 4096.0),
        "prior",
        (0, 1, 2),
        "1 planet, many period modes",
        # The Joker's default prior has no jitter: a 1 m/s jitter (0.2-3 km/s
        # errors) keeps the sharp period modes that a free jitter would wash out.
        {"jitter_log_loc": np.log(1e-3), "jitter_log_scale": 0.5},
    ),
}


# ----------------------------------------------------------------------------------
# JKO presets, measured on this project's 2-core CPU (see the module docstring).


def preset(problem: Problem, num_planets: int, quick: bool) -> JKOConfig:
    """The :class:`~numpyro_jko.JKOConfig` of one fit (latent set by :func:`fit`).

    Measured on BL2009 data set 1 (1 planet, whitened Laplace latent, one core):
    rejection layers alone left PSIS k-hat at 1.6; one CNF of 150 iterations
    under two blocks gave KL 0.03 nats, k-hat 0.6 and log Z se 0.025 in 50 s,
    a third of it compilation.
    """
    small = dict(batch_size=256, hidden=32, num_hidden_layers=2, num_steps=2)
    # As measured (examples/results/rv/): the first JKO step and the plain latent
    # search of the earlier defaults.
    small.update({k: v for k, v in TWO_STEP.items() if k != "num_cnf"})
    if num_planets == 0:
        # Offsets marginalized: 1-3 log jitters, nearly Gaussian around the
        # Laplace latent, so rejection layers alone suffice (and skip compiling
        # a CNF training step, 18 s of a 60 s fit).
        return JKOConfig(
            num_particles=512 if quick else 1024, num_cnf=0, num_blocks=1, **small
        )
    if problem.latent == "prior":
        # The Joker: 100 narrow period modes that no CNF of this size resolves
        # (a CNF of 150 iterations lowered the ELBO; three of 400 left KL at 19
        # nats).  From the likelihood-weighted prior Gaussian, 21 rejection
        # layers alone (draws then cost target evaluations only) took the ELBO
        # from -48 to -10.6 (log Z -10.14): KL 0.44 nats, every period mode
        # within 0.007 of the reference, in 72 s (benchmarks/joker_reference.py).
        return JKOConfig(
            **{**small, "min_elbo_gain": 0.0},
            num_particles=8192,
            num_cnf=0,
            num_blocks=7,
        )
    if quick:
        # --quick (<= 2 min on one core): rejection layers only.  The time of a
        # CNF block is mostly compilation (measured: 60 -> 40 training
        # iterations, 2 -> 1 blocks left the 1-planet fit at 86-89 s); without
        # it the fit took 63 s (the whole --quick run 109 s), and from the
        # Laplace latent of BL2009 data set 1 (KL 0.005) rejection layers reach
        # the same log Z (-99.06).
        return JKOConfig(num_particles=1024, num_cnf=0, num_blocks=2, **small)
    return JKOConfig(
        num_particles=2048, num_cnf=1, num_blocks=2, num_iterations=150, **small
    )


# ----------------------------------------------------------------------------------
# Latent: from the prior, or around the MAP found from a periodogram.


def build_model(data, problem: Problem, num_planets: int, order="period"):
    return keplerian_model(
        data.t,
        data.rv,
        data.rv_err,
        num_planets,
        instrument=data.instrument,
        period_bounds=problem.period_bounds,
        marginalize_offsets=True,
        order=order,
        **problem.model_kwargs,
    )


def nuisance_columns(data, trend=0):
    """Per-instrument offset columns, then powers 1..``trend`` of the scaled time."""
    codes = (
        np.zeros(len(data.t), int)
        if data.instrument is None
        else np.unique(data.instrument, return_inverse=True)[1]
    )
    onehot = (codes[:, None] == np.arange(codes.max() + 1)).astype(float)
    tc = (data.t - data.t.mean()) / (0.5 * np.ptp(data.t))
    return np.concatenate([onehot] + [tc[:, None] ** k for k in range(1, trend + 1)], 1)


def periodogram(data, period_bounds, resid=None, num=60_000, trend=0):
    """Weighted least-squares sinusoid + per-instrument offsets at each trial period.

    With ``trend``, a polynomial drift of that degree is fitted along.  Returns
    the trial periods and the chi-square of the best circular orbit at each; its
    deep minima are the starting periods of the MAP search.
    """
    t = data.t - 0.5 * (data.t.min() + data.t.max())
    y = data.rv if resid is None else resid
    sw = 1.0 / data.rv_err
    onehot = nuisance_columns(data, trend)
    periods = np.exp(np.linspace(*np.log(period_bounds), num))
    chi2 = np.empty(num)
    b = y * sw
    for i in range(0, num, 2000):
        ph = 2 * np.pi * t[None, :] / periods[i : i + 2000, None]
        cols = [np.cos(ph), np.sin(ph)]
        cols += [np.broadcast_to(c, ph.shape) for c in onehot.T]
        A = np.stack(cols, -1) * sw[None, :, None]
        AtA = np.einsum("pni,pnj->pij", A, A)
        Atb = np.einsum("pni,n->pi", A, b)
        x = np.linalg.solve(AtA, Atb[..., None])[..., 0]
        chi2[i : i + 2000] = b @ b - np.einsum("pi,pi->p", x, Atb)
    return periods, chi2


def _peaks(periods, chi2, k):
    """The ``k`` deepest local minima of ``chi2``."""
    m = np.flatnonzero((chi2[1:-1] < chi2[:-2]) & (chi2[1:-1] <= chi2[2:])) + 1
    return periods[m[np.argsort(chi2[m])[:k]]]


_COMPILED = {"target": None}


def compiled(target):
    """Jitted ``value_and_grad`` of ``-log p`` and Hessian of ``log p`` for ``target``.

    Shared by :func:`find_map`, :func:`polish_map` and :func:`_laplace`, so each
    is compiled once per model (an eager ``jax.hessian`` of a 1-planet model
    took 19 s, most of ``--quick``'s latent).  Holds the latest target only.
    """
    if _COMPILED["target"] is not target:
        _COMPILED.update(
            target=target,
            value_and_grad=jax.jit(
                jax.value_and_grad(lambda x: -target.logdensity_fn(x))
            ),
            hessian=jax.jit(jax.hessian(target.logdensity_fn)),
        )
    return _COMPILED["value_and_grad"], _COMPILED["hessian"]


def find_map(target, starts, maxiter=400):
    """Best L-BFGS optimum of the log joint over the starting points."""
    f, _ = compiled(target)

    def fun(x):
        v, g = f(jnp.asarray(x, jnp.float32))
        return float(v), np.asarray(g, np.float64)

    best = None
    for x0 in starts:
        res = minimize(
            fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": maxiter}
        )
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    return best.x, -best.fun


def _start_points(data, problem, model, target, num_peaks):
    """Flat unconstrained starts: periodogram periods, circular orbits, two phases."""
    n = model.num_planets
    tc = data.t - model.t_ref
    nuisance = nuisance_columns(data, model.trend)
    resid, found = data.rv, []
    # Greedy: the deepest peaks for the first planet; for each further planet,
    # those of the residual periodogram after a circular fit at the best period.
    for _ in range(n):
        periods, chi2 = periodogram(
            data, problem.period_bounds, resid, trend=model.trend
        )
        peaks = _peaks(periods, chi2, num_peaks)
        found.append(peaks)
        # Fundamental and first harmonic: a sinusoid alone leaves an eccentric
        # orbit's P/2 harmonic in the residuals (BL2009 data set 2: 290 d for a
        # 580 d signal), which then outranks the second planet (6.42 d).
        ph = 2 * np.pi * tc / peaks[0]
        A = np.concatenate(
            [np.stack([np.cos(ph), np.sin(ph), np.cos(2 * ph), np.sin(2 * ph)], -1)]
            + [nuisance],
            1,
        )
        coef = np.linalg.lstsq(A / data.rv_err[:, None], resid / data.rv_err)[0]
        resid = resid - A @ coef
    lo, hi = np.log(model.period_bounds)
    k_lo, k_hi = model.K_bounds
    values = []
    for i in range(num_peaks):
        combo = np.sort([found[0][i]] + [p[0] for p in found[1:]])
        if len(np.unique(combo)) < n:
            continue
        # Joint circular fit at these periods: a cos + b sin = K cos(phi + lam)
        # gives each planet's K and mean longitude, so L-BFGS starts on the
        # right phase (a wrong one left it stuck on 51 Peg's sharp peak).
        ph = 2 * np.pi * tc[:, None] / combo[None, :]
        A = np.concatenate([np.cos(ph), np.sin(ph), nuisance], 1)
        coef = np.linalg.lstsq(A / data.rv_err[:, None], data.rv / data.rv_err)[0]
        a_, b_ = coef[:n], coef[n : 2 * n]
        K = np.clip(np.hypot(a_, b_), 1.01 * k_lo, 0.99 * k_hi)
        lam = np.arctan2(-b_, a_)
        frac = (np.log(combo) - lo) / (hi - lo)
        for ecc in ([0.2, 0.0], [0.6, 0.6]):
            # omega = atan2(ecc) shifts M0 = lam - omega, not lam itself.
            values.append(
                {
                    "log_P_spacings": np.diff(np.concatenate([[0.0], frac, [1.0]])),
                    "ecc_vec": np.tile(ecc, (n, 1)),
                    "phase_vec": np.stack([np.cos(lam), np.sin(lam)], -1),
                    "log_K": np.log(K),
                    "log_jitter": np.asarray(model.jitter_log_loc),
                }
            )
    # One batched call: eager calls compile every primitive anew.
    batch = {
        k: jnp.asarray(np.stack([v[k] for v in values]), jnp.float32) for k in values[0]
    }
    flat, _ = target.unconstrain(batch)
    return list(np.asarray(flat, np.float64))


def _laplace(target, x_map, prior_cov):
    """Inverse Hessian at ``x_map``, eigenvalues capped at the largest prior variance."""
    hess = compiled(target)[1](jnp.asarray(x_map, jnp.float32))
    hess = np.asarray(hess, np.float64)
    lam, vecs = np.linalg.eigh(-0.5 * (hess + hess.T))
    lam = np.maximum(lam, 1.0 / np.max(np.diag(prior_cov)))
    return (vecs / lam) @ vecs.T


def polish_map(target, x, lp, num_rounds=3, floor=1e-6):
    """L-BFGS again in the coordinates that the Hessian at ``x`` whitens.

    The log joint's Hessian spans 8 decades (51 Peg: the period's width is 1e-5
    of its unconstrained coordinate's, the jitter's 0.1), and L-BFGS on float32
    gradients stops early there: at its "MAP" of 51 Peg's 1-planet model the log
    joint still rose by 7 nats two Laplace widths along the jitter.  Each round
    maps ``x = x0 + V diag(lam)^-1/2 y`` (eigenvalues of the negative Hessian,
    those below ``floor`` of the largest raised to it) and optimizes over
    ``y``, where the problem is well conditioned.  Returns ``(x, lp)``.
    """
    f, hess = compiled(target)
    x = np.asarray(x, np.float64)
    for _ in range(num_rounds):
        h = np.asarray(hess(jnp.asarray(x, jnp.float32)), np.float64)
        lam, vecs = np.linalg.eigh(-0.5 * (h + h.T))
        lam = np.maximum(np.abs(lam), floor * np.abs(lam).max())
        T = vecs / np.sqrt(lam)
        x0 = x

        def fun(y, x0=x0, T=T):
            v, g = f(jnp.asarray(x0 + T @ y, jnp.float32))
            return float(v), T.T @ np.asarray(g, np.float64)

        res = minimize(fun, np.zeros(len(x)), jac=True, method="L-BFGS-B")
        if not (np.isfinite(res.fun) and -res.fun > lp):
            break
        gain = -res.fun - lp
        x, lp = x0 + T @ res.x, -float(res.fun)
        if gain < 1e-3:
            break
    return x, lp


def _map_laplace(data, problem, model, target, prior_mean, prior_cov, num_peaks):
    if model.num_planets == 0:
        x_map, lp_map = find_map(target, [prior_mean])
    else:
        starts = _start_points(data, problem, model, target, num_peaks)
        x_map, lp_map = find_map(target, starts)
    x_map, lp_map = polish_map(target, x_map, lp_map)
    return x_map, _laplace(target, x_map, prior_cov), lp_map


def latent_gaussian(
    rng_key, data, problem, model, target, num_peaks=3, return_laplace_log_z=False
):
    """Mean and covariance of the Gaussian the chain starts from (flat, unconstrained).

    ``"prior"``: posterior moments from likelihood-weighted prior draws
    (:func:`posterior_moments`; label ``"prior IS"``), or the prior's own
    moments if the weights degenerate.  ``"laplace"``: the MAP over periodogram
    starts, with the inverse Hessian there; its eigenvalues are capped at the
    largest prior variance, so directions the data leave free keep a prior-sized
    spread instead of an infinite one.  Returns ``(mean, cov, label)``.

    A known gap: in an over-complete model (2 planets where the data hold one)
    most of the posterior mass has the extra planet weak and spread over its
    whole prior, far from any MAP, so the Laplace latent misses it and ``log Z``
    comes out low (BL2009 data set 1: about -114 where 1 planet gives -99).  A
    moment-matched Gaussian of "(n-1)-planet fit + a weak prior planet" was
    tried and is far worse (its importance-sampling log Z was -253): the two
    orderings of the planets make that region two disjoint pieces.
    :func:`weak_planet_latent` builds it for planets labelled by amplitude,
    where the region is one piece (:func:`fit` picks it when it holds more
    mass than the MAP's neighbourhood).

    With ``return_laplace_log_z`` (Laplace latent only) a fourth value is
    returned: the Laplace approximation of the mass around the MAP, ``log
    p(x_map) + log det(2 pi cov) / 2``.
    """
    key_prior, key_is = jax.random.split(rng_key)
    prior_mean, prior_cov = prior_moments(key_prior, model, target)
    if problem.latent == "prior":
        moments = posterior_moments(key_is, model, target)
        if moments is None:
            return prior_mean, prior_cov, "prior"
        return *moments, "prior IS"
    x_map, cov, lp_map = _map_laplace(
        data, problem, model, target, prior_mean, prior_cov, num_peaks
    )
    if return_laplace_log_z:
        log_z = lp_map + 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
        return x_map, cov, "laplace", float(log_z)
    return x_map, cov, "laplace"


def weak_planet_latent(rng_key, model, target, fewer, num=16_384):
    """Gaussian over "the planets of the fit with one fewer + a weak planet anywhere".

    For ``model`` with planets labelled by amplitude (``order="amplitude"``):
    the ``n - 1`` strongest planets and the log jitter are importance-resampled
    draws of ``fewer`` (the fitted ``(n - 1)``-planet model), the weakest
    planet a prior draw (period, eccentricity and phase anywhere, ``log K``
    below the others').  Returns the mean and covariance of these draws on
    ``model``'s flat unconstrained space.  When the data hold ``n - 1``
    planets, this is where the over-complete model's posterior mass lies (the
    extra planet too weak to matter, anywhere); its MAP, fitting noise, holds
    little of it.
    """
    key_draw, key_pick, key_prior = jax.random.split(rng_key, 3)
    samples, w = weighted_draws(fewer, key_draw, num)
    idx = np.asarray(jax.random.choice(key_pick, len(w), (num,), p=jnp.asarray(w)))
    predictive = Predictive(model, num_samples=num)
    prior = jax.jit(
        lambda key: {
            k: v for k, v in predictive(key).items() if k in target.latent_sites
        }
    )(key_prior)
    values = {k: np.array(v, np.float64) for k, v in prior.items()}
    m = model.num_planets - 1
    log_k = np.log(samples["K"][idx])
    order = np.argsort(-log_k, axis=1)  # strongest first

    def take(a):
        a = a[idx]
        return np.take_along_axis(
            a, order.reshape(order.shape + (1,) * (a.ndim - 2)), 1
        )

    log_k = np.take_along_axis(log_k, order, 1)
    lo, hi = np.log(model.period_bounds)
    k_lo = np.log(model.K_bounds[0])
    values["log_P_frac"][:, :m] = (np.log(take(samples["P"])) - lo) / (hi - lo)
    values["log_K_max"] = log_k[:, 0]
    if m >= 2:
        values["log_K_fracs"][:, : m - 1] = (log_k[:, 1:] - k_lo) / (
            log_k[:, :-1] - k_lo
        )
    values["ecc_vec"][:, :m] = take(samples["ecc_vec"])
    values["phase_vec"][:, :m] = take(samples["phase_vec"])
    values["log_jitter"] = samples["log_jitter"][idx]
    flat, _ = target.unconstrain(
        {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
    )
    flat = np.asarray(flat, np.float64)
    return flat.mean(0), np.cov(flat, rowvar=False)


def posterior_moments(rng_key, model, target, num_draws=200_000, chunk=50_000):
    """Posterior mean and covariance by prior draws weighted by the likelihood.

    On NumPyro's unconstrained space.  Returns ``None`` when the weights'
    effective sample size is below ``20 * dim`` (too few to estimate a
    covariance).  With weak data (The Joker's 4 points) this latent is a
    Gaussian over the whole posterior, every period mode included; the plain
    prior latent puts a quarter of its mass at periods of 570-4100 d, where the
    posterior has 1 %, and 12 rejection layers then leave the draws with 0.24
    of their mass there (``benchmarks/joker_reference.py``).
    """
    predictive = Predictive(model, num_samples=chunk)

    @jax.jit
    def one(key):
        draws = {k: v for k, v in predictive(key).items() if k in target.latent_sites}
        log_lik = sum(
            v.reshape(chunk, -1).sum(-1) for v in log_likelihood(model, draws).values()
        )
        return target.unconstrain(draws)[0], log_lik

    xs, log_liks = [], []
    for key in jax.random.split(rng_key, max(num_draws // chunk, 1)):
        x, log_lik = one(key)
        xs.append(np.asarray(x, np.float64))
        log_liks.append(np.asarray(log_lik, np.float64))
    x, log_lik = np.concatenate(xs), np.concatenate(log_liks)
    # Drop draws with a non-finite likelihood or position: a zero weight times an
    # infinite coordinate would still make the moments NaN.
    ok = np.isfinite(log_lik) & np.all(np.isfinite(x), axis=1)
    x, log_lik = x[ok], log_lik[ok]
    w = np.exp(log_lik - np.max(log_lik))
    w /= w.sum()
    if 1.0 / np.sum(w**2) < 20 * x.shape[1]:
        return None
    mean = w @ x
    d = x - mean
    return mean, (w[:, None] * d).T @ d


def prior_moments(rng_key, model, target, num_draws=20_000):
    """Mean and covariance of prior draws on NumPyro's unconstrained space."""
    # Jitted: an eager Predictive compiles every batched primitive separately.
    predictive = Predictive(model, num_samples=num_draws)
    flat = jax.jit(
        lambda key: target.unconstrain(
            {k: v for k, v in predictive(key).items() if k in target.latent_sites}
        )[0]
    )(rng_key)
    flat = np.asarray(flat, np.float64)
    return flat.mean(0), np.cov(flat, rowvar=False).reshape(flat.shape[1], -1)


def whitened_model(target, mean, cov):
    """``model`` on coordinates ``z`` with ``x = mean + chol(cov) z`` (same evidence).

    The chain's latent is a diagonal Gaussian; written in ``z``, a correlated
    Laplace (or prior) Gaussian becomes ``N(0, I)``.  The density of ``z`` is the
    model's log joint at ``x`` plus ``log|det chol|``, so its normalizing constant
    is the model's evidence; every site of ``model`` is recorded as a
    ``deterministic`` site.
    """
    mean = jnp.asarray(mean, jnp.float32)
    chol = np.linalg.cholesky(cov)
    log_det = float(np.sum(np.log(np.diag(chol))))
    chol = jnp.asarray(chol, jnp.float32)
    dim = target.dim
    # Jitted: NumPyro runs the wrapper eagerly when it initializes it, and an
    # eager run of the base model compiles each of its primitives separately.
    inner = jax.jit(lambda x: (target.logdensity_fn(x), target.postprocess_fn(x)))

    def wmodel():
        z = numpyro.sample(
            "z", dist.ImproperUniform(constraints.real_vector, (), (dim,))
        )
        x = mean + chol @ z
        # The base model is run inside; block keeps its sites out of this trace.
        with numpyro.handlers.block():
            log_joint, values = inner(x)
        numpyro.factor("log_joint", log_joint + log_det)
        numpyro.deterministic("log_joint_density", log_joint)
        for site, value in values.items():
            numpyro.deterministic(site, value)

    wmodel.base = target.model
    return wmodel


# ----------------------------------------------------------------------------------
# Fitting


class Fit(NamedTuple):
    """One fitted planet count of one data set."""

    problem: Problem
    data: object
    num_planets: int
    model: object  # the Keplerian model
    sampler: JKOSampler  # trained on the whitened model
    log_Z: float
    log_Z_se: float
    ess: float
    num_draws: int
    pareto_k: float
    kl: float
    seconds: float
    warnings: tuple
    latent: str  # which Gaussian the chain started from (latent_gaussian)


def fit(problem: Problem, data, num_planets: int, rng_key, *, quick=False, fewer=None):
    """Latent, whitened model and a trained :class:`~numpyro_jko.JKOSampler`.

    ``fewer``: the fit of the same data with one planet fewer, if there is one.
    Then, for a Laplace latent and ``num_planets >= 2``, the mass near the
    ``num_planets``-planet MAP (its Laplace approximation) is weighed against
    the mass of "``fewer``'s planets + a weak planet anywhere", about
    ``Z(fewer) * num_planets`` times the prior probability that the extra
    planet does no harm; if the Laplace mass is below ``log Z(fewer) +
    log(num_planets)``, the chain starts instead from
    :func:`weak_planet_latent`, on the model with planets labelled by
    amplitude (the same evidence; label ``"weak planet"``).  Each latent finds
    only its own region's mass, so ``log Z`` is low by up to ``log 2`` when
    both matter.

    Examples
    --------
    >>> import jax
    >>> p = PROBLEMS["bl2009_1"]
    >>> f = fit(p, load_rv_dataset(p.name), 0, jax.random.key(0), quick=True)
    >>> bool(f.log_Z_se < 0.1)
    True
    """
    t0 = time.perf_counter()
    key_latent, key_run = jax.random.split(rng_key)
    model = build_model(data, problem, num_planets)
    # One ModelTarget serves the latent and the whitened model: building it runs
    # the model eagerly (seconds of compilation each time).
    target = model_target(model)
    weigh = fewer is not None and num_planets >= 2 and problem.latent == "laplace"
    mean, cov, latent, *laplace_log_z = latent_gaussian(
        key_latent, data, problem, model, target, return_laplace_log_z=weigh
    )
    if weigh and laplace_log_z[0] < fewer.log_Z + math.log(num_planets):
        model = build_model(data, problem, num_planets, order="amplitude")
        target = model_target(model)
        mean, cov = weak_planet_latent(key_latent, model, target, fewer)
        latent = "weak planet"
    config = preset(problem, num_planets, quick)
    # The whitened latent N(0, I) is the Laplace (or prior) Gaussian; widened a
    # little so that its tails cover the posterior's.
    config = config._replace(latent_mean=0.0, latent_scale=1.2)
    sampler = JKOSampler(
        whitened_model(target, mean, cov),
        config,
        progress_bar=False,
        refit_draws=4096 if quick else 16_384,
        num_evidence_draws=4096 if quick else 8192,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", JKOWarning)
        sampler.run(key_run)
    est = sampler.log_evidence()
    return Fit(
        problem,
        data,
        num_planets,
        model,
        sampler,
        float(est.log_Z),
        float(est.log_Z_se),
        float(est.ess),
        int(est.num_draws),
        float(est.pareto_k),
        float(est.log_Z - est.elbo),
        time.perf_counter() - t0,
        tuple(str(w.message) for w in caught if issubclass(w.category, JKOWarning)),
        latent,
    )


def weighted_draws(f: Fit, rng_key, num):
    """Constrained draws and self-normalized importance weights."""
    samples, log_w = f.sampler.get_weighted_samples(rng_key, num)
    log_w = np.asarray(log_w, np.float64)
    w = np.exp(log_w - np.nanmax(log_w))
    w = np.where(np.isfinite(w), w, 0.0)
    return {k: np.asarray(v) for k, v in samples.items()}, w / w.sum()


def time_grid_step(t, tol=1e-3):
    """Common step of the observation times, if they all sit on one grid (else None).

    Data on a grid of step ``D`` cannot tell frequency ``f`` from ``f + k / D``:
    every such alias fits exactly as well.  Only a grid with at most ten slots
    per observation counts: any times are "on a grid" of a small enough step.

    Examples
    --------
    >>> time_grid_step([0.0, 2.0, 6.0, 8.0])
    2.0
    >>> time_grid_step([0.0, 1.0, 2.5]) is None
    True
    """
    t = np.sort(np.asarray(t, np.float64))
    d = np.diff(t)
    d = d[d > tol]
    step = d.min()
    k = d / step
    on_grid = np.all(np.abs(k - np.round(k)) < tol * k.max())
    coarse = (t[-1] - t[0]) / step <= 10 * len(t)
    return float(step) if on_grid and coarse else None


# ----------------------------------------------------------------------------------
# Table


#: A planet is added only when it raises log Z by more than this (nats): a Bayes
#: factor above 20, "strong" on Kass & Raftery's (1995) scale.  Between nested
#: models with a log-uniform K prior reaching far below the noise, the larger
#: model's evidence stays close to the smaller's (its extra planet can be weak
#: anywhere), so "the largest log Z" would pick on differences of a few tenths of
#: a nat (51 Peg: 2 planets +0.6 +- 0.2 over 1).
BF_THRESHOLD = 3.0


def chosen_count(fits):
    """Fewest planets such that one more does not raise ``log Z`` by > ``BF_THRESHOLD``.

    Examples
    --------
    >>> from types import SimpleNamespace as F
    >>> chosen_count([F(num_planets=0, log_Z=-10.0), F(num_planets=1, log_Z=-2.0),
    ...               F(num_planets=2, log_Z=-1.5)])
    1
    """
    by_count = {f.num_planets: f for f in fits}
    n = min(by_count)
    while (
        n + 1 in by_count and by_count[n + 1].log_Z - by_count[n].log_Z > BF_THRESHOLD
    ):
        n += 1
    return n


def evidence_rows(fits):
    """Markdown table rows: log Z ± se, log Bayes factor vs one planet fewer, choice."""
    rows = []
    by_count = {f.num_planets: f for f in fits}
    best = chosen_count(fits)
    for f in fits:
        prev = by_count.get(f.num_planets - 1)
        if prev is None:
            bf = "–"
        else:
            se = math.hypot(f.log_Z_se, prev.log_Z_se)
            bf = f"{f.log_Z - prev.log_Z:+.2f} ± {se:.2f}"
        rows.append(
            f"| {f.problem.title} | {f.num_planets} | {f.log_Z:.3f} ± {f.log_Z_se:.3f} "
            f"| {bf} | {f.ess / f.num_draws:.2f} | {f.pareto_k:.2f} | {f.kl:.3f} "
            f"| {f.latent} | {f.seconds:.0f} "
            f"| {'**' + str(best) + '**' if f.num_planets == best else ''} |"
        )
    return rows, best


TABLE_HEAD = (
    "| data set | planets | log Z ± se | log BF vs one fewer | ESS/n | PSIS k "
    "| KL (nats) | latent | s | chosen |\n|---|---|---|---|---|---|---|---|---|---|"
)


# ----------------------------------------------------------------------------------
# Plots


def plot_log_period(fits, rng_key, path, num_draws=16_384):
    """Importance-weighted posterior of log10 P over the whole prior range.

    One column per fit.  The top panel covers the whole prior with a
    logarithmic mass axis, so that a mode holding 1e-4 of the mass is as visible
    as the main one; below it, one zoom per planet on the range of its draws.
    """
    import matplotlib.pyplot as plt

    fits = [f for f in fits if f.num_planets > 0]
    rows = 1 + max(f.num_planets for f in fits)
    fig, axes = plt.subplots(
        rows, len(fits), figsize=(5.5 * len(fits), 3.2 * rows), squeeze=False
    )
    for col, (f, key) in enumerate(
        zip(fits, jax.random.split(rng_key, len(fits)), strict=True)
    ):
        samples, w = weighted_draws(f, key, num_draws)
        logp = np.log10(samples["P"])
        step = time_grid_step(f.data.t)
        lo, hi = np.log10(f.problem.period_bounds)
        ax = axes[0, col]
        for p in range(f.num_planets):
            hist, edges = np.histogram(logp[:, p], bins=400, range=(lo, hi), weights=w)
            ax.stairs(hist, edges, label=f"planet {p + 1}", color=f"C{p}")
        if step is not None:
            _mark_aliases(ax, np.median(samples["P"], 0), step, (lo, hi))
        by_k = " (planets by K)" if f.model.order == "amplitude" else ""
        ax.set_title(f"{f.problem.title}: {f.num_planets}-planet model{by_k}")
        if f.num_planets > 1 or step is not None:
            ax.legend(fontsize=8)
        for p in range(f.num_planets):
            ax = axes[1 + p, col]
            x = logp[:, p]
            q = np.quantile(x, [0.001, 0.999])
            pad = 0.1 * (q[1] - q[0]) + 1e-4
            hist, edges = np.histogram(
                x, bins=200, range=(q[0] - pad, q[1] + pad), weights=w
            )
            ax.stairs(hist, edges, color=f"C{p}")
            ax.set_title(f"planet {p + 1}: zoom on its draws")
        for row in range(rows):
            ax = axes[row, col]
            if row > f.num_planets:
                ax.set_visible(False)
                continue
            ax.set_yscale("log")
            ax.set_ylim(1e-5, 1.5)
            ax.set_xlabel("log10(P / day)")
            ax.set_ylabel("posterior mass per bin")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mark_aliases(ax, periods, step, log10_bounds):
    """Dotted lines at the exact aliases ``1 / |1/P + k/step|`` of each period."""
    first = True
    for P in np.atleast_1d(periods):
        for k in range(-50, 51):
            if k == 0:
                continue
            freq = abs(1.0 / P + k / step)
            if freq == 0:
                continue
            x = np.log10(1.0 / freq)
            if log10_bounds[0] < x < log10_bounds[1]:
                label = "exact aliases (time grid): not sampled" if first else None
                ax.axvline(x, color="0.6", ls=":", lw=1, label=label)
                first = False


def _planet_signals(f: Fit, samples, i, t):
    """Each planet's velocity at times ``t`` for draw ``i``: shape (num_planets, len(t))."""
    dt = np.asarray(t) - f.model.t_ref
    return np.stack(
        [
            np.asarray(
                rv_curve(
                    dt,
                    samples["P"][i, p],
                    samples["K"][i, p],
                    samples["e"][i, p],
                    samples["omega"][i, p],
                    samples["phase"][i, p],
                )
            )
            for p in range(f.num_planets)
        ]
    )


def drift(f: Fit, samples, i, t):
    """Polynomial drift of draw ``i`` at times ``t`` (zero without a trend term)."""
    if not f.model.trend:
        return np.zeros(len(t))
    coef = np.asarray(samples["trend_cond_mean"][i], np.float64)
    dt = np.asarray(t, np.float64) - f.model.trend_t_ref
    return sum(c * dt ** (k + 1) for k, c in enumerate(coef))


def plot_orbits(f: Fit, rng_key, path, num_curves=50, num_draws=8192):
    """Data with 50 posterior orbits and the residuals of the best draw.

    One column per planet: the data minus the offsets and the other planets,
    folded on the period of the best draw, with each curve drawn on its own
    period and phase.  When the draws' periods disagree (several modes, e.g.
    The Joker's data), the first column shows the data against time instead:
    folding on one period would misplace the others.
    """
    import matplotlib.pyplot as plt

    key_draw, key_pick = jax.random.split(rng_key)
    samples, w = weighted_draws(f, key_draw, num_draws)
    pick = np.asarray(
        jax.random.choice(key_pick, len(w), (num_curves,), p=jnp.asarray(w))
    )
    best = (
        int(np.argmax(np.asarray(samples["log_joint_density"])))
        if "log_joint_density" in samples
        else int(pick[0])
    )
    d = f.data
    codes = (
        np.zeros(len(d.t), int)
        if d.instrument is None
        else np.unique(d.instrument, return_inverse=True)[1]
    )
    names = f.model.instrument_names
    base = samples["offset_cond_mean"][best][codes] + drift(f, samples, best, d.t)
    jit = samples["jitter"]
    sig_best = _planet_signals(f, samples, best, d.t)
    resid = d.rv - base - sig_best.sum(0)
    err = np.hypot(d.rv_err, jit[best][codes])
    logp = np.log(samples["P"][pick])
    multimodal = np.any(np.ptp(logp, axis=0) > 0.1)
    ncol = f.num_planets
    fig, axes = plt.subplots(
        2,
        ncol,
        figsize=(5.5 * ncol, 6),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1]},
        sharex="col",
    )
    unit_t, unit_v = d.units["t"], d.units["rv"]
    for p in range(ncol):
        ax, axr = axes[0, p], axes[1, p]
        others = sig_best.sum(0) - sig_best[p]
        y = d.rv - base - others
        if multimodal and p == 0:
            pad = 0.1 * np.ptp(d.t)
            tt = np.linspace(d.t.min() - pad, d.t.max() + pad, 2000)
            for i in pick:
                ax.plot(
                    tt - d.t.min(),
                    _planet_signals(f, samples, i, tt)[p],
                    color="C0",
                    alpha=0.15,
                    lw=0.8,
                )
            x_data = d.t - d.t.min()
            ax.set_title(f"planet {p + 1}: 50 posterior orbits (periods differ)")
            axr.set_xlabel(f"time - {d.t.min():.1f} [{unit_t}]")
        else:
            # Folded on the mean longitude M + omega, not the mean anomaly M:
            # for a nearly circular orbit omega (hence M) is free, but the
            # signal, about K cos(M + omega), is fixed by the mean longitude.
            lon = samples["phase"][:, p] + samples["omega"][:, p]
            P0 = samples["P"][best, p]
            x_data = np.mod((d.t - f.model.t_ref) / P0 + lon[best] / (2 * np.pi), 1.0)
            grid = np.linspace(0.0, 1.0, 400)
            for i in pick:
                Pi = samples["P"][i, p]
                tt = f.model.t_ref + (grid - lon[i] / (2 * np.pi)) * Pi
                ax.plot(
                    grid,
                    _planet_signals(f, samples, i, tt)[p],
                    color="C0",
                    alpha=0.15,
                    lw=0.8,
                )
            ax.set_title(
                f"planet {p + 1}: P = {P0:.4g} {unit_t.split()[-1].strip('()')} (best draw)"
            )
            axr.set_xlabel("orbital phase (mean longitude / 2 pi)")
        for k, name in enumerate(names):
            m = codes == k
            style = dict(fmt="o", ms=3, color=f"C{k + 1}", elinewidth=0.8)
            label = None if len(names) == 1 else f"instrument {name}"
            ax.errorbar(x_data[m], y[m], err[m], label=label, **style)
            axr.errorbar(x_data[m], resid[m], err[m], **style)
        axr.axhline(0.0, color="k", lw=0.8)
        what = "offset - drift" if f.model.trend else "offset"
        ax.set_ylabel(f"RV - {what} - other planets [{unit_v}]")
        axr.set_ylabel(f"residual [{unit_v}]")
        if len(names) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(f"{f.problem.title}: {f.num_planets}-planet model")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pairs(f: Fit, rng_key, path):
    """ArviZ pair plot of the physical parameters (draws of ``to_inference_data``)."""
    import arviz as az
    import matplotlib.pyplot as plt

    idata = f.sampler.to_inference_data(rng_key, 2000)
    # float64: ArviZ's KDE bins a float32 log P of spread 1e-5 (51 Peg) finer
    # than float32 resolves, and fails.
    idata.posterior = idata.posterior.astype("float64")
    var_names = ["log_P", "K", "e", "jitter"] if f.num_planets else ["jitter"]
    num_vars = sum(int(np.prod(idata.posterior[v].shape[2:])) for v in var_names)
    size = min(2.2 * num_vars, 16)
    # ArviZ drops variables past plot.max_subplots (40) with a warning: HD 164922's
    # 2-planet model, with three jitters, needs 81.
    with az.rc_context({"plot.max_subplots": num_vars**2}):
        axes = az.plot_pair(
            idata,
            figsize=(size, size),
            var_names=var_names,
            kind="scatter",
            marginals=True,
            scatter_kwargs={"alpha": 0.3, "s": 3},
            textsize=9,
        )
    fig = np.ravel(axes)[0].figure
    fig.suptitle(f"{f.problem.title}: {f.num_planets}-planet model")
    _offsets_into_labels(fig)
    fig.savefig(path, dpi=90, bbox_inches="tight")  # the longer labels fit
    plt.close(fig)


def _offsets_into_labels(fig):
    """Move each axis's tick offset (``1e-5+1.442``) into its label.

    A log period known to 1e-5 gets an offset text, which Matplotlib draws where
    the axis label of a pair plot's bottom row already is.
    """
    from matplotlib.ticker import ScalarFormatter

    fig.canvas.draw()  # formatters fix their offsets when the ticks are drawn
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            fmt = axis.get_major_formatter()
            if not isinstance(fmt, ScalarFormatter) or not fmt.get_offset():
                continue
            axis.offsetText.set_visible(False)
            label = axis.get_label_text()
            if not label:
                continue
            parts = []
            if fmt.orderOfMagnitude:
                parts.append(f"× 1e{fmt.orderOfMagnitude}")
            if fmt.offset:
                parts.append(f"{fmt.offset:+.8g}")
            axis.set_label_text(f"{label}\n(ticks {' '.join(parts)})")


# ----------------------------------------------------------------------------------
# Driver


def run_problem(
    problem: Problem, rng_key, outdir: pathlib.Path, quick=False, planets=None
):
    """Fit every planet count of ``problem``, print and return its table rows."""
    data = load_rv_dataset(problem.name)
    num_draws = 2048 if quick else 8192  # weighted draws for plots and notes
    fits = []
    for n, key in zip(
        planets or problem.planets, jax.random.split(rng_key, 8), strict=False
    ):
        fewer = next((g for g in fits if g.num_planets == n - 1), None)
        f = fit(problem, data, n, key, quick=quick, fewer=fewer)
        fits.append(f)
        print(
            f"  {problem.name}, {n} planet(s): log Z = {f.log_Z:.3f} ± {f.log_Z_se:.3f} "
            f"(ESS {f.ess:.0f}/{f.num_draws}, k-hat {f.pareto_k:.2f}, "
            f"KL {f.kl:.3f}) in {f.seconds:.0f} s",
            flush=True,
        )
        for message in f.warnings:
            print(f"    JKOWarning: {message}")
    rows, best = evidence_rows(fits)
    key_plot = jax.random.fold_in(rng_key, 99)
    chosen = next(f for f in fits if f.num_planets == best)
    plotted = [f for f in fits if f.num_planets > 0]
    if plotted:
        plot_log_period(
            plotted,
            key_plot,
            outdir / f"{problem.name}_log_period.png",
            num_draws=2 * num_draws,
        )
        target = chosen if chosen.num_planets > 0 else plotted[0]
        plot_orbits(
            target, key_plot, outdir / f"{problem.name}_orbits.png", num_draws=num_draws
        )
        plot_pairs(target, key_plot, outdir / f"{problem.name}_pairs.png")
    step = time_grid_step(data.t)
    notes = []
    if step is not None:
        notes.append(
            f"{problem.title}: every time lies on a grid of step {step:.5f} d, so the "
            f"periods 1 / |1/P + k/{step:.4f}| fit exactly as well as P (aliases); "
            "the Laplace latent searches around the MAP only."
        )
    if chosen.model.trend:
        samples, w = weighted_draws(chosen, key_plot, num_draws)
        slope = samples["trend_cond_mean"][:, 0]
        mean = float(w @ slope)
        # total variance: spread of the conditional means + conditional variance
        sd = math.sqrt(
            float(w @ (slope - mean) ** 2 + w @ samples["trend_cond_sd"][:, 0] ** 2)
        )
        notes.append(
            f"{problem.title}: the model has a polynomial drift of degree "
            f"{chosen.model.trend} (Normal priors of sd "
            + ", ".join(
                f"{v:.3g} {data.units['rv']}/day^{k + 1}"
                for k, v in enumerate(chosen.model.trend_scale)
            )
            + ", integrated out with the offsets); slope in the "
            f"{chosen.num_planets}-planet model {365.25 * mean:.2f} ± "
            f"{365.25 * sd:.2f} {data.units['rv']}/yr."
        )
    if chosen.num_planets > 0:
        samples, w = weighted_draws(chosen, key_plot, num_draws)
        for p in range(chosen.num_planets):
            q = _weighted_quantiles(samples["P"][:, p], w, [0.16, 0.5, 0.84])
            notes.append(
                f"{problem.title}, {chosen.num_planets}-planet model, planet {p + 1}: "
                f"P = {q[1]:.5g} (+{q[2] - q[1]:.2g} / -{q[1] - q[0]:.2g}) d"
            )
    return rows, best, notes, fits


def _weighted_quantiles(x, w, q):
    order = np.argsort(x)
    cdf = np.cumsum(w[order])
    return np.interp(q, cdf / cdf[-1], x[order])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="BL2009 data set 1, 0 and 1 planets, small chains",
    )
    parser.add_argument("--datasets", nargs="*", default=None, choices=sorted(PROBLEMS))
    parser.add_argument("--outdir", type=pathlib.Path, default=HERE / "results" / "rv")
    parser.add_argument(
        "--table",
        type=pathlib.Path,
        default=None,
        help="where to save the Markdown table (default: OUTDIR/rv_evidence.md)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = args.datasets or (["bl2009_1"] if args.quick else list(PROBLEMS))
    planets = (0, 1) if args.quick else None
    args.outdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lines, notes = [TABLE_HEAD], []
    for name, key in zip(
        names, jax.random.split(jax.random.key(args.seed), len(names)), strict=True
    ):
        problem = PROBLEMS[name]
        print(f"{problem.title} (expected: {problem.expect})", flush=True)
        rows, best, more, _ = run_problem(
            problem, key, args.outdir, args.quick, planets
        )
        lines += rows
        notes += [
            f"{problem.title}: the evidence picks {best} planet(s) (one more planet "
            f"only for log BF > {BF_THRESHOLD:g}); expected {problem.expect}."
        ] + more
    total = time.perf_counter() - t0
    text = "\n".join(lines) + "\n\n" + "\n".join(f"* {n}" for n in notes)
    text += f"\n\nTotal wall time {total:.0f} s ({'--quick' if args.quick else 'full run'}, seed {args.seed}).\n"
    print("\n" + text)
    table = args.table or args.outdir / "rv_evidence.md"
    table.write_text(text)
    print(f"table: {table}; plots: {args.outdir}")


if __name__ == "__main__":
    main()
