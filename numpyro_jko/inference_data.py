"""ArviZ ``InferenceData`` from i.i.d. draws that carry their log densities.

Built with ArviZ's own converter (:func:`arviz.from_dict`) so every ArviZ tool
applies; NumPyro supplies the pieces (:func:`numpyro.infer.util.log_likelihood` for
the pointwise log likelihoods that ``az.loo`` and ``az.compare`` need, a model
trace for the observed data, ArviZ's NumPyro dimension inference for plate names).
Used by :meth:`numpyro_jko.infer.JKOSampler.to_inference_data`; any sampler whose
draws carry ``log q`` can use it.
"""

from __future__ import annotations

import math

import jax
import numpy as np

__all__ = ["to_inference_data"]


def _observed_sites(model, model_args, model_kwargs):
    """Observed values by site name; ``numpyro.factor`` sites are not data."""
    from numpyro import handlers
    from numpyro.distributions import Unit
    from numpyro.infer.initialization import init_to_sample

    seeded = handlers.substitute(
        handlers.seed(model, jax.random.key(0)), substitute_fn=init_to_sample
    )
    trace = handlers.trace(seeded).get_trace(*model_args, **model_kwargs)
    return {
        name: np.asarray(site["value"])
        for name, site in trace.items()
        if site["type"] == "sample"
        and site["is_observed"]
        and not isinstance(site["fn"], Unit)
    }


def _by_chain(values, num_chains):
    values = np.asarray(values)
    num_draws = values.shape[0] // num_chains
    values = values[: num_chains * num_draws]
    return values.reshape((num_chains, num_draws) + values.shape[1:])


def to_inference_data(
    samples: dict,
    *,
    lp=None,
    log_density=None,
    model=None,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    evidence=None,
    num_chains: int = 1,
    coords: dict | None = None,
    dims: dict | None = None,
    log_likelihood: bool = True,
):
    """Build an ``arviz.InferenceData`` from i.i.d. draws and their log densities.

    Parameters
    ----------
    samples : dict
        Constrained draws (deterministic sites included), leading draw axis.
    lp : array, shape (n,), optional
        The model's log joint at each draw (``sample_stats.lp``).
    log_density : array, shape (n,), optional
        The sampler's normalized log density at each draw, on the same space as
        ``lp`` (``sample_stats.log_density``); with ``lp`` it gives
        ``sample_stats.log_weight = lp - log_density``.
    model : callable, optional
        The NumPyro model: adds ``log_likelihood`` (one variable per observed site,
        ``numpyro.factor`` sites excluded) and ``observed_data``, and names the
        dimensions of plated sites after their plates.
    model_args, model_kwargs
        Arguments of the model.
    evidence : Evidence, optional
        Stored as attrs ``log_evidence``, ``log_evidence_se``, ``weight_ess``,
        ``pareto_k``.
    num_chains : int
        Split the draws into this many chains (i.i.d. draws: any split is valid).
    coords, dims : dict, optional
        As in :func:`arviz.from_dict` (``dims`` defaults to the plate names).
    log_likelihood : bool
        Compute the pointwise log likelihood.

    Returns
    -------
    arviz.InferenceData

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> idata = to_inference_data({"mu": rng.normal(size=400)},
    ...                           lp=np.zeros(400), log_density=np.zeros(400),
    ...                           num_chains=2)
    >>> idata.posterior["mu"].shape
    (2, 200)
    >>> float(idata.sample_stats["log_weight"].sum())
    0.0
    """
    import arviz as az

    model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
    samples = {k: np.asarray(v) for k, v in samples.items()}
    posterior = {k: _by_chain(v, num_chains) for k, v in samples.items()}
    sample_stats = {}
    if lp is not None:
        sample_stats["lp"] = _by_chain(lp, num_chains)
    if log_density is not None:
        sample_stats["log_density"] = _by_chain(log_density, num_chains)
    if lp is not None and log_density is not None:
        sample_stats["log_weight"] = sample_stats["lp"] - sample_stats["log_density"]

    observed, pointwise = None, None
    if model is not None:
        from arviz.data.io_numpyro import infer_dims
        from numpyro.infer.util import log_likelihood as numpyro_log_likelihood

        if dims is None:
            dims = infer_dims(model, model_args, model_kwargs)
        observed = _observed_sites(model, model_args, model_kwargs) or None
        if log_likelihood and observed:
            values = numpyro_log_likelihood(
                model, samples, *model_args, parallel=True, **model_kwargs
            )
            pointwise = {
                k: _by_chain(v, num_chains) for k, v in values.items() if k in observed
            }

    attrs = {}
    if evidence is not None:
        attrs = {
            "log_evidence": float(evidence.log_Z),
            "log_evidence_se": float(evidence.log_Z_se),
            "weight_ess": float(evidence.ess),
            "pareto_k": float(evidence.pareto_k)
            if math.isfinite(evidence.pareto_k)
            else float("nan"),
        }
    return az.from_dict(
        posterior=posterior,
        sample_stats=sample_stats or None,
        log_likelihood=pointwise,
        observed_data=observed,
        coords=coords,
        dims=dims,
        attrs=attrs or None,
    )
