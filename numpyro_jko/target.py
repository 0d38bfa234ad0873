"""A NumPyro model as a target for the JKO chain: one flat, unconstrained vector.

:func:`model_target` runs NumPyro's own machinery once
(:func:`numpyro.infer.util.initialize_model`, its ``potential_fn`` and
``postprocess_fn``, :func:`jax.flatten_util.ravel_pytree`) and returns a
:class:`ModelTarget`: the log density the chain is trained on (the negative
potential, so the Jacobians of the constraint transforms are included and the
evidence of the flat target *is* the model's evidence), the map back to constrained
site values, and the inverse map with its log-Jacobian, which turns the chain's
density on the unconstrained space into a density of constrained samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions import ImproperUniform
from numpyro.distributions.transforms import biject_to
from numpyro.infer.initialization import init_to_median, init_to_sample
from numpyro.infer.util import initialize_model, potential_energy
from numpyro.util import is_prng_key

__all__ = [
    "ModelTarget",
    "model_target",
    "model_name",
    "fit_latent_mean",
    "LatentMoments",
    "match_latent_moments",
    "tempered_latent_moments",
]


class ModelTarget(NamedTuple):
    """A model (or potential) seen as an unnormalized density of a flat vector.

    Attributes
    ----------
    logdensity_fn : callable
        ``x -> -potential(unravel_fn(x))`` for one flat unconstrained vector ``x`` of
        shape ``(dim,)``: the model's log joint on the unconstrained space, Jacobians
        of the constraint transforms included.
    dim : int
        Number of unconstrained coordinates.
    unravel_fn : callable
        Flat vector of shape ``(dim,)`` to the dict of unconstrained site values
        (the ``z`` of NumPyro's HMC).
    postprocess_fn : callable
        Flat array of shape ``(..., dim)`` *or* dict of unconstrained values with any
        leading batch shape, to a dict of constrained values of every latent site plus
        every ``deterministic`` site, with the same batch shape.
    init_position : Array, shape (dim,)
        A valid flat starting point (from the init strategy, or ``init_params``).
    model : callable or None
    model_args : tuple
    model_kwargs : dict
    potential_fn : callable
        The potential of one *unraveled* value (NumPyro's ``potential_fn``).
    latent_sites : tuple of str
        Names of the latent sites, in the order of the flat vector (empty for a bare
        ``potential_fn``).

    Examples
    --------
    >>> import numpyro, numpyro.distributions as dist
    >>> def model():
    ...     numpyro.sample("s", dist.HalfNormal(1.0))
    >>> target = model_target(model)
    >>> target.dim, target.latent_sites
    (1, ('s',))
    """

    logdensity_fn: Callable
    dim: int
    unravel_fn: Callable
    postprocess_fn: Callable
    init_position: jax.Array
    model: Any
    model_args: tuple
    model_kwargs: dict
    potential_fn: Callable
    latent_sites: tuple

    def unconstrain(self, samples):
        """Constrained latent values to flat unconstrained ones, with ``log|det J|``.

        Parameters
        ----------
        samples : dict
            Constrained values of (at least) every latent site, with a leading batch
            dimension; other entries (``deterministic`` sites) are ignored.

        Returns
        -------
        flat : Array, shape (n, dim)
        log_det : Array, shape (n,)
            ``log|det d(unconstrain)/d(constrained)|`` at each sample, so that a
            density on the unconstrained space, plus ``log_det``, is the density of
            the constrained sample.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> flat, log_det = model_target(model).unconstrain({"s": jnp.array([1.0, 2.0])})
        >>> [round(float(v), 4) for v in log_det]  # d log(s) / ds = 1 / s
        [0.0, -0.6931]
        """
        if self.model is None:
            flat = _batch_ravel(samples, self.unravel_fn, self.dim)
            return flat, jnp.zeros(flat.shape[0], flat.dtype)
        return _unconstrain(self, samples)


def model_name(model) -> str:
    """A readable name for ``model`` in error messages (handlers unwrapped).

    Examples
    --------
    >>> def my_model():
    ...     pass
    >>> model_name(my_model)
    'my_model'
    """
    fn = model
    while hasattr(fn, "fn") and not hasattr(fn, "__name__"):
        fn = fn.fn  # numpyro handlers wrap the model in ``.fn``
    return getattr(fn, "__name__", repr(model))


def _trace(model, model_args, model_kwargs, rng_key):
    # ``init_to_sample`` draws ImproperUniform sites uniformly in the unconstrained
    # space, so tracing never fails on a site that cannot be sampled.
    seeded = handlers.substitute(
        handlers.seed(model, rng_key), substitute_fn=init_to_sample
    )
    return handlers.trace(seeded).get_trace(*model_args, **model_kwargs)


def _check_continuous(model, model_trace):
    discrete = []
    for name, site in model_trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        fn = site["fn"]
        if fn.support.is_discrete or getattr(fn, "has_enumerate_support", False):
            discrete.append(f"'{name}' ({type(fn).__name__})")
    if discrete:
        raise ValueError(
            f"Model '{model_name(model)}' has discrete latent site(s) "
            f"{', '.join(discrete)}. The JKO chain samples continuous latents only: "
            "marginalize the discrete site out (a mixture distribution such as "
            "dist.MixtureSameFamily, or numpyro.factor with a logsumexp over its "
            "values), or condition on it (obs=... / numpyro.handlers.condition)."
        )


def _invalid_start_error(model, model_args, model_kwargs, rng_key, model_trace):
    """Explain why NumPyro found no start: potential and per-site log densities."""
    latent = [
        name
        for name, site in model_trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    ]
    lines, bad_sites = [], {}
    for i in range(3):
        key = jax.random.fold_in(rng_key, i)
        tr = _trace(model, model_args, model_kwargs, key)
        params = {
            name: biject_to(tr[name]["fn"].support).inv(tr[name]["value"])
            for name in latent
        }
        pe = float(potential_energy(model, model_args, model_kwargs, params))
        lines.append(f"potential = {pe}")
        for name, site in tr.items():
            if site["type"] == "sample":
                lp = float(jnp.sum(site["fn"].log_prob(site["value"])))
                if not np.isfinite(lp):
                    bad_sites.setdefault(name, lp)
    improper = [
        name
        for name, site in model_trace.items()
        if site["type"] == "sample" and isinstance(site["fn"], ImproperUniform)
    ]
    message = (
        f"Model '{model_name(model)}' has a non-finite potential at every start NumPyro "
        f"tried ({'; '.join(lines)} at three prior/uniform draws)."
    )
    if bad_sites:
        message += " Sites with a non-finite log density there: " + ", ".join(
            f"'{k}' ({v})" for k, v in bad_sites.items()
        )
        message += "."
    if improper:
        message += (
            f" Improper site(s) {improper}: the posterior must be proper and "
            "finite somewhere."
        )
    return ValueError(
        message + " Check the observed data against the likelihood's support, "
        "or pass init_params at a point where the model is finite."
    )


def model_target(
    model=None,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    *,
    potential_fn=None,
    init_params=None,
    rng_key=None,
    init_strategy=init_to_median,
) -> ModelTarget:
    """Turn a NumPyro model, or a potential, into a :class:`ModelTarget`.

    Exactly one of ``model`` / ``potential_fn`` (as in :class:`numpyro.infer.HMC`).
    All checks run here, before any training.

    Parameters
    ----------
    model : callable, optional
        A NumPyro model: plates, ``obs=``, ``numpyro.factor``, ``deterministic``,
        ``substitute``/``condition``-ed models are all fine.  Every latent site must
        be continuous.
    model_args, model_kwargs
        Arguments of the model.
    potential_fn : callable, optional
        Negative log density of a pytree shaped like ``init_params``.
    init_params : pytree, optional
        Required with ``potential_fn`` (it fixes the structure and a start); with a
        model, a dict of *unconstrained* site values used as ``init_position``.
    rng_key : jax.random key, optional
        For the init strategy (default ``jax.random.key(0)``).
    init_strategy : callable
        A NumPyro init strategy; the default, ``init_to_median``, is the prior median.

    Returns
    -------
    ModelTarget

    Raises
    ------
    ValueError
        Both or neither of ``model`` / ``potential_fn``; ``potential_fn`` without
        ``init_params``; a discrete latent site (named); a potential that is not
        finite at any start NumPyro tries (values shown).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpyro, numpyro.distributions as dist
    >>> def model(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    ...     sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    ...     numpyro.deterministic("precision", sigma**-2)
    ...     with numpyro.plate("n", y.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, sigma), obs=y)
    >>> target = model_target(model, (jnp.array([0.5, 1.5]),))
    >>> target.dim
    2
    >>> bool(jnp.isfinite(target.logdensity_fn(jnp.zeros(2))))
    True
    >>> sorted(target.postprocess_fn(jnp.zeros((5, 2))))
    ['mu', 'precision', 'sigma']
    """
    if not (model is None) ^ (potential_fn is None):
        raise ValueError("Only one of `model` or `potential_fn` must be specified.")
    model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
    model_args = tuple(model_args)
    rng_key = jax.random.key(0) if rng_key is None else rng_key
    if not is_prng_key(rng_key):  # a batch of keys (vectorized chains)
        rng_key = rng_key.reshape(-1)[0] if rng_key.ndim > 1 else rng_key

    if potential_fn is not None:
        if init_params is None:
            raise ValueError(
                "Valid value of `init_params` must be provided with `potential_fn`."
            )
        flat, unravel_fn = ravel_pytree(init_params)
        dim = int(flat.shape[0])
        logdensity_fn = lambda x: -potential_fn(unravel_fn(x))
        value = float(logdensity_fn(flat))
        if not np.isfinite(value):
            raise ValueError(
                f"potential_fn is not finite at init_params (potential = {-value}); "
                "pass init_params where the target is finite."
            )
        return ModelTarget(
            logdensity_fn=logdensity_fn,
            dim=dim,
            unravel_fn=unravel_fn,
            postprocess_fn=lambda values: _batch_unravel(values, unravel_fn, dim),
            init_position=flat,
            model=None,
            model_args=model_args,
            model_kwargs=model_kwargs,
            potential_fn=potential_fn,
            latent_sites=(),
        )

    key_trace, key_init = jax.random.split(rng_key)
    model_trace = _trace(model, model_args, model_kwargs, key_trace)
    _check_continuous(model, model_trace)
    try:
        info = initialize_model(
            key_init,
            model,
            init_strategy=init_strategy,
            model_args=model_args,
            model_kwargs=model_kwargs,
        )
    except RuntimeError as err:
        if "valid initial parameters" not in str(err):
            raise
        raise _invalid_start_error(
            model, model_args, model_kwargs, key_trace, model_trace
        ) from err
    z = info.param_info.z
    if init_params is not None:
        z = {**z, **init_params}
    flat, unravel_fn = ravel_pytree(z)
    dim = int(flat.shape[0])
    if dim == 0:
        raise ValueError(f"Model '{model_name(model)}' has no latent sites to sample.")
    numpyro_potential = info.potential_fn
    logdensity_fn = lambda x: -numpyro_potential(unravel_fn(x))
    constrain = info.postprocess_fn

    def postprocess_fn(values):
        flat_values = _batch_ravel(values, unravel_fn, dim)
        batch_shape = flat_values.shape[:-1]
        out = jax.vmap(lambda v: constrain(unravel_fn(v)))(flat_values.reshape(-1, dim))
        return jax.tree.map(lambda a: a.reshape(batch_shape + a.shape[1:]), out)

    return ModelTarget(
        logdensity_fn=logdensity_fn,
        dim=dim,
        unravel_fn=unravel_fn,
        postprocess_fn=postprocess_fn,
        init_position=flat,
        model=model,
        model_args=model_args,
        model_kwargs=model_kwargs,
        potential_fn=numpyro_potential,
        latent_sites=tuple(sorted(z)),
    )


def _batch_ravel(values, unravel_fn, dim):
    """Flat array ``(..., dim)`` from a flat array or a batched dict of site values."""
    if not isinstance(values, dict):
        values = jnp.asarray(values)
        if values.shape[-1:] != (dim,):
            raise ValueError(
                f"Expected flat values of shape (..., {dim}); got {values.shape}."
            )
        return values
    prototype = unravel_fn(jnp.zeros(dim))
    name = next(iter(prototype))
    ndim = jnp.ndim(prototype[name])
    leaf = jnp.asarray(values[name])
    batch_shape = leaf.shape[: leaf.ndim - ndim]
    ravel = lambda v: ravel_pytree({k: v[k] for k in prototype})[0]
    flat = jax.vmap(ravel)(
        jax.tree.map(
            lambda a: jnp.reshape(a, (-1,) + a.shape[len(batch_shape) :]),
            {k: jnp.asarray(values[k]) for k in prototype},
        )
    )
    return flat.reshape(batch_shape + (dim,))


def _batch_unravel(values, unravel_fn, dim):
    flat = _batch_ravel(values, unravel_fn, dim)
    batch_shape = flat.shape[:-1]
    out = jax.vmap(unravel_fn)(flat.reshape(-1, dim))
    return jax.tree.map(lambda a: a.reshape(batch_shape + a.shape[1:]), out)


def _unconstrain(target: ModelTarget, samples):
    model, args, kwargs = target.model, target.model_args, target.model_kwargs
    names = target.latent_sites

    def one(params):
        # Replaying the model at the given values gives each site's support there,
        # which also covers supports that depend on other sites (Uniform(0, a)).
        tr = handlers.trace(
            handlers.substitute(handlers.seed(model, 0), data=params)
        ).get_trace(*args, **kwargs)
        unconstrained, log_det = {}, 0.0
        for name in names:
            transform = biject_to(tr[name]["fn"].support)
            u = transform.inv(params[name])
            unconstrained[name] = u
            # log|d x / d u| of the forward map; the inverse map's is its negative.
            log_det = log_det - jnp.sum(transform.log_abs_det_jacobian(u, params[name]))
        return ravel_pytree(unconstrained)[0], log_det

    batched = {k: jnp.asarray(samples[k]) for k in names}
    return jax.vmap(one)(batched)


def fit_latent_mean(
    rng_key,
    logdensity_fn,
    init_position,
    latent_scale: float = 1.0,
    *,
    num_steps: int = 200,
    num_draws: int = 32,
    learning_rate: float = 0.1,
):
    r"""Mean ``m`` of the chain's latent ``N(m, s^2 I)`` closest to the target.

    Maximizes the latent's ELBO over ``m`` at fixed ``s = latent_scale``,

    .. math:: \mathcal{L}(m) = \mathbb{E}_{\epsilon \sim N(0, I)}
              \log g(m + s \epsilon) + \text{const},

    with Adam on reparameterized draws, from ``init_position``.  This is a
    Gaussian-smoothed MAP: unlike the MAP it does not chase the neck of a funnel
    (``tau -> 0`` in a hierarchical model), since the latent's width averages over
    it, and unlike a prior median it moves to where the data put the posterior.
    Measured once (one seed) on the test models with a small chain (2 CNFs of 100
    iterations, one block; weight ESS of 8192 draws, latent at this mean vs the
    prior median ``init_to_median``): conjugate normal 8191 vs 294, eight schools
    622 vs 89 (MAP: 60), HalfNormal/LogNormal/Dirichlet model 917 vs 757, bimodal
    1438 vs 1332.

    Parameters
    ----------
    rng_key : jax.random key
    logdensity_fn : callable
        Unnormalized log density of one flat vector.
    init_position : Array, shape (d,)
    latent_scale : float or array of shape (d,)
    num_steps, num_draws : int
        Adam steps, and draws per step.  ``num_steps=0`` returns ``init_position``.
    learning_rate : float
        Initial Adam step, decayed by cosine to 5 % of it: Adam moves by at most
        about ``learning_rate`` per step, so the mean travels at most ~``0.5 *
        num_steps * learning_rate`` (10 by default) from ``init_position``.

    Returns
    -------
    Array, shape (d,)

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> logdensity_fn = lambda x: -0.5 * jnp.sum((x - 3.0) ** 2 / 0.1**2)
    >>> m = fit_latent_mean(jax.random.key(0), logdensity_fn, jnp.zeros(2))
    >>> bool(jnp.allclose(m, 3.0, atol=0.1))
    True
    """
    init_position = jnp.asarray(init_position)
    if num_steps <= 0:
        return init_position
    dim = init_position.shape[0]
    # A scalar or one scale per coordinate (JKOConfig.latent_scale may be a tuple).
    latent_scale = jnp.asarray(latent_scale, init_position.dtype)
    optimizer = optax.adam(
        optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.05)
    )

    value_and_grad = jax.vmap(jax.value_and_grad(logdensity_fn))

    @jax.jit
    def run(mean, keys):
        def step(carry, key):
            mean, opt_state = carry
            eps = jax.random.normal(key, (num_draws, dim), init_position.dtype)
            values, grads = value_and_grad(mean + latent_scale * eps)
            # Draws where the target or its gradient is not finite carry no
            # information about where to move; average over the others.
            ok = jnp.isfinite(values) & jnp.all(jnp.isfinite(grads), axis=-1)
            grad = jnp.sum(jnp.where(ok[:, None], grads, 0.0), axis=0)
            grad = -grad / jnp.maximum(jnp.sum(ok), 1)
            updates, opt_state = optimizer.update(grad, opt_state)
            return (optax.apply_updates(mean, updates), opt_state), None

        (mean, _), _ = jax.lax.scan(step, (mean, optimizer.init(mean)), keys)
        return mean

    mean = run(init_position, jax.random.split(rng_key, num_steps))
    # A step into a region where the target is not finite would start the chain
    # where it cannot learn anything: keep the start then.
    if not bool(jnp.isfinite(logdensity_fn(mean))):
        return init_position
    return mean


class LatentMoments(NamedTuple):
    """Result of :func:`match_latent_moments`.

    Attributes
    ----------
    mean, scale : Array, shape (d,)
        The latent's mean and per-coordinate scale.
    ess : float
        Weight ESS of the last round that was used (``nan`` when none was).
    num_rounds : int
        Rounds whose moments were adopted (0: the initial latent was kept).
    beta : float
        Inverse temperature the moments belong to (:func:`tempered_latent_moments`;
        1 for :func:`match_latent_moments`): below 1 the latent is the spread of
        ``g**beta`` bridged to a wide reference, wider than the target's.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> LatentMoments(jnp.zeros(2), jnp.ones(2), 100.0, 1).num_rounds
    1
    """

    mean: Any
    scale: Any
    ess: float
    num_rounds: int
    beta: float = 1.0


def match_latent_moments(
    rng_key,
    logdensity_fn,
    mean,
    scale,
    *,
    num_draws: int = 16384,
    num_rounds: int = 3,
    inflation: float = 1.5,
    min_ess_fraction: float = 0.01,
) -> LatentMoments:
    r"""A Gaussian latent with the target's mean and per-coordinate spread.

    Adaptive importance sampling: draw from ``N(m, (inflation * s)^2)``, weight by
    ``g / q`` and set ``m, s`` to the weighted mean and standard deviation; repeat.
    Unlike a (smoothed) MAP this is mass-covering: on a multimodal target the
    latent spans every mode it sees, in proportion to their mass, so the first
    CNFs start from a latent whose basins already carry roughly the right mass.
    Measured on shifted 8 modes (2 CNFs, seed 0): a latent at the target's mean
    and spread reached mode-weight error 0.002 and ED 2.0e-5 after 12 rejection
    layers, the ``N(0, I)`` latent 0.005-0.024 and 4.5e-5-7e-4 over three runs.

    A round whose weight ESS is below ``min_ess_fraction * num_draws`` is not
    used and ends the loop: in high dimension, or when the target sits far from
    the initial latent, the weights degenerate and their moments would be noise
    (GMM-10 from ``N(0, I)``: ESS about 1), so the latent stays as it was.

    Parameters
    ----------
    rng_key : jax.random key
    logdensity_fn : callable
        Unnormalized log density of one flat vector.
    mean : Array, shape (d,)
    scale : float or Array of shape (d,)
        The initial latent (the first proposal is ``inflation`` times wider).
    num_draws, num_rounds : int
    inflation : float
        Proposal scale over the current latent scale: wider proposals keep the
        weights bounded where the current latent is too narrow.
    min_ess_fraction : float

    Returns
    -------
    LatentMoments

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> logdensity_fn = lambda x: -0.5 * jnp.sum(((x - 3.0) / 0.5) ** 2)
    >>> fit = match_latent_moments(jax.random.key(0), logdensity_fn, jnp.zeros(2), 2.0)
    >>> bool(jnp.allclose(fit.mean, 3.0, atol=0.05)), bool(jnp.allclose(fit.scale, 0.5, atol=0.05))
    (True, True)
    """
    mean = jnp.asarray(mean)
    dim = mean.shape[0]
    scale = jnp.broadcast_to(jnp.asarray(scale, mean.dtype), (dim,))
    logdensity = jax.jit(jax.vmap(logdensity_fn))
    ess, used = float("nan"), 0
    for r in range(num_rounds):
        proposal_scale = inflation * scale
        eps = jax.random.normal(jax.random.fold_in(rng_key, r), (num_draws, dim))
        x = mean + proposal_scale * eps
        log_q = -0.5 * jnp.sum(eps * eps, axis=-1) - jnp.sum(jnp.log(proposal_scale))
        log_g = logdensity(x)
        log_w = jnp.where(jnp.isfinite(log_g), log_g - log_q, -jnp.inf)
        if not bool(jnp.any(jnp.isfinite(log_w))):
            break
        w = jax.nn.softmax(log_w)
        round_ess = float(1.0 / jnp.sum(w * w))
        if round_ess < min_ess_fraction * num_draws:
            break
        new_mean = jnp.sum(w[:, None] * x, axis=0)
        new_scale = jnp.sqrt(jnp.sum(w[:, None] * (x - new_mean) ** 2, axis=0))
        if not bool(jnp.all(jnp.isfinite(new_scale) & (new_scale > 0))):
            break
        mean, scale, ess, used = new_mean, new_scale, round_ess, used + 1
    return LatentMoments(mean, scale, ess, used)


def tempered_latent_moments(
    rng_key,
    logdensity_fn,
    mean,
    scale,
    *,
    reference_scale: float = 10.0,
    num_draws: int = 16384,
    max_rounds: int = 30,
    ess_fraction: float = 0.5,
) -> LatentMoments:
    r"""A Gaussian latent that covers the target, found by tempering from a wide one.

    Plain adaptive importance sampling (:func:`match_latent_moments`) estimates the
    spread from a proposal as narrow as its current estimate, so mass that the
    proposal never reaches is never counted: on the mustache, whose arms hold 5 %
    of the mass out to ``x2 ~ 47``, it returns a spread of 1.1 for ``x2`` against
    the exact 7.3, and the flows above such a latent miss the arms (energy
    distance 6e-2).  Here the proposal comes *down* to the target instead.  The
    bridge ``pi_beta ~ p0**(1 - beta) * g**beta`` runs from a wide reference
    ``p0 = N(mean, (reference_scale * scale)^2)`` (``beta = 0``) to the target
    (``beta = 1``).  Each round draws from the Gaussian with the moments of the
    last bridge density, raises ``beta`` as far as the weight ESS stays at
    ``ess_fraction`` of the draws (bisection, as in adaptive SMC), and takes the
    weighted moments there.  Each proposal has the moments of the previous, wider
    bridge density, which keeps the weights well behaved.  Where no Gaussian fits the target
    (several modes, a curved ridge) ``beta`` stalls below 1 and the latent keeps
    the spread of the last bridge density it matched: wider than the target,
    which is the safe side for the flows, since rejection layers can remove mass
    but never create it.  Measured (seed 0, 16 384 draws a round, reference scale
    10): mustache ``beta`` 0.008, spread (1.25, 5.5), exact (1.0, 7.3); shifted 8
    modes ``beta`` 0.17, spread 0.76 (exact 0.71); GMM-10 ``beta`` 0.009, spread
    1.2-1.3 (exact 0.4-0.7).

    Parameters
    ----------
    rng_key : jax.random key
    logdensity_fn : callable
        Unnormalized log density of one flat vector.
    mean : Array, shape (d,)
    scale : float or Array of shape (d,)
        Centre and scale of the reference (its scale is ``reference_scale`` times
        this).
    reference_scale : float
    num_draws, max_rounds : int
        Draws per round; the loop also ends once ``beta`` reaches 1 (after one
        more round there) or stops rising.
    ess_fraction : float

    Returns
    -------
    LatentMoments

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> logdensity_fn = lambda x: -0.5 * jnp.sum(((x - 3.0) / 0.5) ** 2)
    >>> fit = tempered_latent_moments(jax.random.key(0), logdensity_fn, jnp.zeros(2), 1.0)
    >>> fit.beta, bool(jnp.allclose(fit.mean, 3.0, atol=0.05))
    (1.0, True)
    >>> bool(jnp.allclose(fit.scale, 0.5, atol=0.05))
    True
    """
    mean = jnp.asarray(mean)
    dim = mean.shape[0]
    scale = jnp.broadcast_to(jnp.asarray(scale, mean.dtype), (dim,))
    ref_mean = np.asarray(mean, np.float64)
    ref_scale = float(reference_scale) * np.asarray(scale, np.float64)
    logdensity = jax.jit(jax.vmap(logdensity_fn))
    m, s = ref_mean, ref_scale
    beta, ess, used = 0.0, float("nan"), 0
    threshold = ess_fraction * num_draws
    for r in range(max_rounds):
        eps = np.asarray(
            jax.random.normal(jax.random.fold_in(rng_key, r), (num_draws, dim)),
            np.float64,
        )
        x = m + s * eps
        log_q = -0.5 * np.sum(eps * eps, axis=-1) - np.sum(np.log(s))
        log_p0 = -0.5 * np.sum(((x - ref_mean) / ref_scale) ** 2, axis=-1)
        log_g = np.asarray(logdensity(jnp.asarray(x, mean.dtype)), np.float64)
        ok = np.isfinite(log_g)
        if not ok.any():
            break
        log_g = np.where(ok, log_g, 0.0)

        def weights(b, log_g=log_g, log_p0=log_p0, log_q=log_q, ok=ok):
            log_w = np.where(ok, b * log_g + (1.0 - b) * log_p0 - log_q, -np.inf)
            w = np.exp(log_w - log_w.max())
            return w / w.sum()

        def ess_at(b):
            w = weights(b)
            return 1.0 / float(np.sum(w * w))

        if ess_at(1.0) >= threshold:
            new_beta = 1.0
        elif ess_at(beta) < threshold:
            new_beta = beta  # the proposal lost the bridge: refit at this beta
        else:
            lo, hi = beta, 1.0
            for _ in range(40):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if ess_at(mid) >= threshold else (lo, mid)
            new_beta = lo
        w = weights(new_beta)
        new_m = w @ x
        new_s = np.sqrt(w @ (x - new_m) ** 2)
        if not np.all(np.isfinite(new_s) & (new_s > 0)):
            break
        stalled = r > 0 and new_beta <= beta * 1.02
        done = beta >= 1.0
        m, s, ess, used = new_m, new_s, ess_at(new_beta), used + 1
        beta = new_beta
        if done or (stalled and beta < 1.0):
            break
    if used == 0:
        return LatentMoments(mean, scale, ess, 0, 0.0)
    return LatentMoments(
        jnp.asarray(m, mean.dtype), jnp.asarray(s, mean.dtype), ess, used, beta
    )
