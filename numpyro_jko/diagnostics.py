"""Diagnosis of a trained chain that users can act on: numbers, and what to change.

:func:`fit_diagnostics` gathers the training record (:class:`~numpyro_jko.jko.JKOInfo`)
and an evidence estimate on fresh draws (:class:`~numpyro_jko.evidence.Evidence`)
into one flat dict; :func:`check_fit` turns the dict into :class:`JKOWarning` s.

The three checks and why they are the ones:

* **PSIS k̂ > 0.7** -- the importance weights ``g / q`` have (effectively) infinite
  variance (Vehtari et al., *Pareto smoothed importance sampling*): the standard
  error of ``log Z`` and of any reweighted estimate cannot be trusted.  Not when
  the weight ESS is above 90 % of the draws: rejection layers flatten most weights
  to one value (``log w ~ log c``), the Pareto fit to the largest ``3 sqrt(n)``
  weights then sees mostly ties and k̂ is meaningless (measured on the bimodal
  test model after 18 layers: k̂ = 1.97 at a weight ESS of 99.7 %, the largest of
  20 000 weights 4.5 times the typical one).
* **weight ESS < 1 % of the draws** -- the weights are so uneven that a handful of
  draws carry the evidence; the estimate is noise even when k̂ looks fine.
* **not converged** -- the draws themselves (what ``MCMC`` and ``get_samples``
  return, unweighted) are biased by ``KL(q || posterior)``, which the draws estimate
  as ``log Z - ELBO``.  By Pinsker's inequality no probability under ``q`` is off
  by more than ``sqrt(KL / 2)``.  We warn when that bound exceeds 0.05
  (``KL > 0.005``): measured on the bimodal test model, mode-weight errors were
  about half the bound (0.063 at KL = 0.038, 0.019 at 0.011, 0.007 at 0.003), so
  a looser threshold lets errors users care about through.  The message says
  what to change from the ELBO record: if the last
  rejection layer still raised the ELBO by more than a tenth of the remaining gap,
  the chain is still improving at the top and wants more layers (``num_blocks``);
  if not, the layers have stopped helping and the CNFs need more iterations or
  particles.  The change in the rejection constant ``log c`` between the last two
  layers is reported alongside: it settles once the weights stop changing shape.
  (In-sample rejection *rates* are no signal: each layer's ``c`` is fitted to hit
  the target rate on the training particles.)
* **the top layer still rejects too much** -- the out-of-sample version of the
  rejection rate (:func:`top_rejection_rate`): one more rejection layer with the
  converged constant ``c = Z / (1 - r)`` would reject exactly the target rate ``r``
  of the draws if the chain were the posterior, and more otherwise (``min`` is
  concave and ``E_q[w] = Z``).  The excess over ``r`` is the mass on which the
  chain undershoots the posterior by more than the factor ``1 - r``; we warn when
  the rate exceeds ``r`` by more than ``MAX_EXCESS_REJECTION`` (two
  percentage points).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["JKOWarning", "fit_diagnostics", "check_fit", "top_rejection_rate"]

PARETO_K_THRESHOLD = 0.7
MIN_ESS_FRACTION = 0.01
MAX_PINSKER_BOUND = 0.05
FLAT_WEIGHTS_ESS_FRACTION = 0.9
MAX_EXCESS_REJECTION = 0.02


class JKOWarning(UserWarning):
    """A trained chain that should not be trusted as it is.

    Its message says what failed and what to change; the checks are those of
    :func:`~numpyro_jko.diagnostics.check_fit`.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warnings.warn("k too large", JKOWarning)
    >>> caught[0].category.__name__
    'JKOWarning'
    """


def top_rejection_rate(log_weights, log_Z, rejection_rate: float = 0.2) -> float:
    """Rate at which one more rejection layer at the converged constant would reject.

    With draws ``x_i ~ q`` and ``log w_i = log g(x_i) - log q(x_i)``, a rejection
    layer with ``c = Z / (1 - r)`` accepts with ``alpha = min(1, (1 - r) w / Z)``.
    If ``q`` is the posterior, ``w = Z`` everywhere and the layer rejects exactly
    ``r``; otherwise it rejects more (Jensen: ``E_q[alpha] <= (1 - r)``).  Unlike
    the rates found while training (each ``c`` is fitted to hit ``r`` on its own
    particles), this is measured on fresh draws of the finished chain.

    Parameters
    ----------
    log_weights : array
        ``log g - log q`` of fresh draws (non-finite entries are weight 0).
    log_Z : float
        Evidence estimate from the same draws.
    rejection_rate : float
        The target rate ``r`` of the chain's rejection layers.

    Examples
    --------
    >>> import numpy as np
    >>> top_rejection_rate(np.zeros(1000), 0.0)  # q = posterior: exactly r
    0.2
    >>> round(top_rejection_rate(np.log([0.5, 1.5]), 0.0), 3)  # uneven weights: more
    0.3
    """
    log_w = np.asarray(log_weights, dtype=np.float64)
    log_w = np.where(np.isnan(log_w), -np.inf, log_w)
    if not np.isfinite(log_Z) or log_w.size == 0:
        return float("nan")
    log_alpha = np.minimum(0.0, log_w - log_Z + math.log1p(-rejection_rate))
    return float(round(1.0 - np.mean(np.exp(log_alpha)), 12))


def fit_diagnostics(
    info, evidence, top_rate: float = float("nan"), rejection_rate: float = 0.2
) -> dict:
    """One flat dict of what a user needs to judge a trained chain.

    Parameters
    ----------
    info : JKOInfo
        Training record from :func:`numpyro_jko.jko.fit`.
    evidence : Evidence or None
        :func:`numpyro_jko.evidence.log_evidence` on fresh draws of the chain.
    top_rate : float
        :func:`top_rejection_rate` of the same draws (NaN: not measured).
    rejection_rate : float
        The chain's target rate (``JKOConfig.rejection_rate``).

    Returns
    -------
    dict
        ``log_Z``, ``log_Z_se``, ``elbo``, ``kl`` (``log_Z - elbo``), ``weight_ess``,
        ``weight_ess_fraction``, ``pareto_k``, ``num_draws`` (from ``evidence``, NaN
        when it is None); per layer ``layer_kinds``, ``elbo_per_layer``,
        ``rejection_rates``, ``log_c``, ``final_losses`` (last loss of each CNF),
        ``layer_seconds``; ``top_rejection_rate`` (``top_rate``) and
        ``target_rejection_rate``; ``train_seconds``, ``compile_seconds`` and
        ``num_nonfinite`` training particles.

    Examples
    --------
    >>> import numpy as np
    >>> from numpyro_jko.jko import JKOInfo
    >>> from numpyro_jko.evidence import log_evidence
    >>> info = JKOInfo(("C", "R"), (0.05,), (np.array([1.0, 0.5]),), (-2.0, -1.9),
    ...                (0.3,), (0.1,), (1.0, 0.1), 0.5, 1.6, 0)
    >>> d = fit_diagnostics(info, log_evidence(np.zeros(100), np.zeros(100)))
    >>> d["log_Z"], d["weight_ess_fraction"], d["final_losses"]
    (0.0, 1.0, (0.5,))
    """
    nan = float("nan")
    out = {
        "log_Z": nan,
        "log_Z_se": nan,
        "elbo": nan,
        "kl": nan,
        "weight_ess": nan,
        "weight_ess_fraction": nan,
        "pareto_k": nan,
        "num_draws": 0,
    }
    if evidence is not None:
        out.update(
            log_Z=evidence.log_Z,
            log_Z_se=evidence.log_Z_se,
            elbo=evidence.elbo,
            kl=evidence.log_Z - evidence.elbo,
            weight_ess=evidence.ess,
            weight_ess_fraction=evidence.ess / max(evidence.num_draws, 1),
            pareto_k=evidence.pareto_k,
            num_draws=evidence.num_draws,
        )
    out.update(
        layer_kinds="".join(info.layer_kinds),
        elbo_per_layer=tuple(float(v) for v in info.elbo),
        rejection_rates=tuple(float(v) for v in info.rejection_rates),
        log_c=tuple(float(v) for v in info.log_c),
        final_losses=tuple(float(loss[-1]) for loss in info.losses if len(loss)),
        layer_seconds=tuple(float(v) for v in info.layer_seconds),
        train_seconds=float(info.train_seconds),
        compile_seconds=float(info.compile_seconds),
        num_nonfinite=int(info.num_nonfinite),
        top_rejection_rate=float(top_rate),
        target_rejection_rate=float(rejection_rate),
    )
    return out


def check_fit(diagnostics: dict, *, warn: bool = True, stacklevel: int = 2) -> list:
    """Messages for each failed check of the module docstring; warn them if asked.

    Parameters
    ----------
    diagnostics : dict
        From :func:`fit_diagnostics`.
    warn : bool
        Emit each message as a :class:`JKOWarning`.
    stacklevel : int

    Returns
    -------
    list of str

    Examples
    --------
    >>> d = {"pareto_k": 0.9, "weight_ess": 50.0, "num_draws": 10000, "kl": 0.001,
    ...      "elbo_per_layer": (-3.0, -2.0), "layer_kinds": "CR", "log_c": (0.1,)}
    >>> [m.split(":")[0] for m in check_fit(d, warn=False)]
    ['PSIS k-hat = 0.90 > 0.7', 'weight ESS = 50 of 10000 draws (0.5%)']
    """
    messages = []
    k = diagnostics.get("pareto_k", math.nan)
    ess = diagnostics.get("weight_ess", math.nan)
    n = diagnostics.get("num_draws", 0)
    more = (
        "train longer or wider (JKOConfig.num_iterations, num_particles, num_cnf, "
        "num_blocks)"
    )
    flat = n and np.isfinite(ess) and ess >= FLAT_WEIGHTS_ESS_FRACTION * n
    if np.isfinite(k) and k > PARETO_K_THRESHOLD and not flat:
        messages.append(
            f"PSIS k-hat = {k:.2f} > {PARETO_K_THRESHOLD}: the importance weights "
            "have effectively infinite variance, so log Z +- se and reweighted "
            f"estimates are unreliable; {more}."
        )
    if n and np.isfinite(ess) and ess < MIN_ESS_FRACTION * n:
        messages.append(
            f"weight ESS = {ess:.0f} of {n} draws ({100 * ess / n:.1f}%): a few "
            f"draws carry all the weight, so the evidence is mostly noise; {more}."
        )
    kl = diagnostics.get("kl", math.nan)
    elbo = diagnostics.get("elbo_per_layer", ())
    if np.isfinite(kl) and math.sqrt(max(kl, 0.0) / 2) > MAX_PINSKER_BOUND:
        gain = elbo[-1] - elbo[-2] if len(elbo) >= 2 else math.nan
        log_c = diagnostics.get("log_c", ())
        moved = (
            f"; log c moved by {log_c[-1] - log_c[-2]:+.3f} in the last layer"
            if len(log_c) >= 2
            else ""
        )
        if np.isfinite(gain) and gain > 0.1 * kl:
            advice = "the last layer still raised the ELBO by "
            advice += f"{gain:.3f}: add layers (JKOConfig.num_blocks)"
        else:
            advice = "the layers stopped improving it: train the CNFs longer "
            advice += "(num_iterations) on more particles (num_particles)"
        messages.append(
            f"not converged: KL(q || posterior) ~ log Z - ELBO = {kl:.4f} nats, so "
            f"unweighted draws may misstate probabilities by up to "
            f"{math.sqrt(kl / 2):.2f} (Pinsker){moved}; {advice}. Importance "
            "weights (log_weight, get_weighted_samples) remove this bias."
        )
    top = diagnostics.get("top_rejection_rate", math.nan)
    rate = diagnostics.get("target_rejection_rate", math.nan)
    if np.isfinite(top) and np.isfinite(rate) and top > rate + MAX_EXCESS_REJECTION:
        messages.append(
            f"rejection rate still high: one more rejection layer at the converged "
            f"constant would reject {100 * top:.1f}% of fresh draws, a converged "
            f"chain {100 * rate:.0f}%: the chain misses posterior mass; add layers "
            "(JKOConfig.num_blocks) or train the CNFs longer (num_iterations)."
        )
    if warn:
        for message in messages:
            warnings.warn(message, JKOWarning, stacklevel=stacklevel + 1)
    return messages
