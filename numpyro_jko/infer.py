"""NumPyro front ends of the JKO chain: an ``MCMCKernel`` and a ``NestedSampler``-like class.

Both train one importance-corrected JKO chain (:func:`numpyro_jko.jko.fit`) on the
model's unconstrained log joint (:func:`numpyro_jko.target.model_target`) and then
only *draw*: every draw is i.i.d. and carries the chain's normalized log density.

* :class:`NeuralJKO` plugs into :class:`numpyro.infer.MCMC`, so ``get_samples``,
  ``print_summary``, :class:`~numpyro.infer.Predictive` and ``az.from_numpyro`` work
  unchanged;
* :class:`JKOSampler` is shaped like
  :class:`numpyro.contrib.nested_sampling.NestedSampler` (``run``, ``get_samples``,
  ``print_summary``, ``diagnostics``) and adds what i.i.d. draws with densities give:
  ``log_density``, ``log_evidence``, ``save``/``load`` and ``to_inference_data``.

Where the latent of the chain sits: unless ``JKOConfig.latent_mean`` is given, it
is fitted by :func:`~numpyro_jko.target.fit_latent_mean` (a Gaussian-smoothed MAP
from the init strategy's point), which was the best start on every test model.
"""

from __future__ import annotations

import contextlib
import pickle
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpyro.infer.initialization import init_to_median
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import identity, not_jax_tracer

from numpyro_jko import evidence as evidence_lib
from numpyro_jko import jko
from numpyro_jko.chain import chain_from_dict, chain_to_dict
from numpyro_jko.diagnostics import (
    FLAT_WEIGHTS_ESS_FRACTION,
    check_fit,
    fit_diagnostics,
    top_rejection_rate,
)
from numpyro_jko.jko import JKOConfig
from numpyro_jko.refine import refit_rbar
from numpyro_jko.target import ModelTarget, fit_latent_mean, model_target

__all__ = ["NeuralJKO", "NeuralJKOState", "DrawBlock", "JKOSampler"]


# ----------------------------------------------------------------------------------
# Shared pieces


class _Fit(NamedTuple):
    """A trained chain and everything needed to reuse or rebuild it."""

    model_args: tuple
    model_kwargs: dict
    target: ModelTarget
    chain: Any
    info: Any
    refit: Any
    evidence: Any
    diagnostics: dict


def _as_typed_key(rng_key):
    if jnp.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
        return rng_key
    return jax.random.wrap_key_data(rng_key)  # old-style uint32 keys


def _same_args(a, b) -> bool:
    """Whether two (args, kwargs) trees hold the same values (arrays by value)."""
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    if tree_a != tree_b:
        return False
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if x is y:
            continue
        try:
            x, y = np.asarray(x), np.asarray(y)
        except Exception:  # noqa: BLE001 - tracers and opaque objects never match
            return False
        if x.shape != y.shape or not np.array_equal(x, y):
            return False
    return True


def _train(
    rng_key,
    target: ModelTarget,
    config: JKOConfig,
    progress_bar,
    latent_steps: int,
    num_check_draws: int,
    check_key,
    refit_draws: int,
):
    """Fit the latent mean and the chain, refit its ``rbar`` s, check it on fresh draws."""
    key_latent, key_fit, key_refit = jax.random.split(rng_key, 3)
    if config.latent_mean is None:
        mean = fit_latent_mean(
            key_latent,
            target.logdensity_fn,
            target.init_position,
            config.latent_scale,
            num_steps=latent_steps,
        )
        config = config._replace(latent_mean=mean)
    chain, info = jko.fit(
        key_fit, target.logdensity_fn, target.dim, config, progress_bar
    )
    refit = None
    if refit_draws > 0 and chain.num_rejection:
        chain, refit = refit_rbar(key_refit, chain, refit_draws)
    draws, estimate = None, None
    if num_check_draws > 0:
        draws = jko.draw(check_key, chain, num_check_draws)
        estimate = _evidence(draws, refit)
    return chain, info, refit, estimate, draws


def _evidence(draws, refit):
    """IS evidence of ``draws``; its se also counts the error left in the ``rbar`` s."""
    estimate = evidence_lib.log_evidence(draws[2], -draws[1])
    if refit is not None:
        se = float(np.hypot(estimate.log_Z_se, refit.log_z_se))
        estimate = estimate._replace(log_Z_se=se)
    return estimate


def _fit_diagnostics(info, refit, estimate, draws=None, rejection_rate=0.2):
    top_rate = float("nan")
    if draws is not None and estimate is not None:
        # Out-of-sample rejection rate of one more layer at the converged constant.
        log_w = np.asarray(draws[2], np.float64) + np.asarray(draws[1], np.float64)
        top_rate = top_rejection_rate(log_w, estimate.log_Z, rejection_rate)
    out = fit_diagnostics(info, estimate, top_rate, rejection_rate)
    if refit is not None:
        out["rbar_in_sample"] = refit.rbar_in_sample
        out["rbar"] = refit.rbar
        out["log_Z_se_rbar"] = refit.log_z_se
    return out


def _diagnostics_str(diagnostics: dict) -> str:
    if not diagnostics.get("num_draws"):
        return "i.i.d. draws"
    return (
        f"i.i.d. draws, weight ESS {100 * diagnostics['weight_ess_fraction']:.0f}%, "
        f"k-hat {diagnostics['pareto_k']:.2f}"
    )


# ----------------------------------------------------------------------------------
# MCMC kernel


class DrawBlock(NamedTuple):
    """A block of pre-drawn i.i.d. draws held in :class:`NeuralJKOState`.

    Attributes
    ----------
    x : Array, shape (..., block_size, dim)
        Flat unconstrained draws.
    log_density : Array, shape (..., block_size)
        The chain's normalized log density at each draw.
    log_target : Array, shape (..., block_size)
        The model's log joint (``-potential_energy``) at each draw.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> block = DrawBlock(jnp.zeros((4, 2)), jnp.zeros(4), jnp.zeros(4))
    >>> block.x.shape
    (4, 2)
    """

    x: jax.Array
    log_density: jax.Array
    log_target: jax.Array


class NeuralJKOState(NamedTuple):
    """State of :class:`NeuralJKO` (leading chain axis when vectorized).

    Attributes
    ----------
    i : Array of int32
        Position of the current draw in ``block``.
    z : dict
        The current draw: unconstrained values at latent sites (HMC's ``z``), so
        ``MCMC``'s post-processing applies unchanged.
    potential_energy : Array
        ``-log`` joint of the model at ``z`` (``az.from_numpyro`` reports ``lp``).
    log_density : Array
        The sampler's normalized log density at ``z``, on the unconstrained space.
    block : DrawBlock
        Draws not yet used; refilled (through a host callback) when exhausted.
    rng_key : jax.random key
        Key of the next block.

    Examples
    --------
    >>> NeuralJKOState._fields
    ('i', 'z', 'potential_energy', 'log_density', 'block', 'rng_key')
    """

    i: jax.Array
    z: Any
    potential_energy: jax.Array
    log_density: jax.Array
    block: DrawBlock
    rng_key: jax.Array


def _cpu_default_device_cleared():
    # With several devices, keep the callback's device: the draws then run on it
    # alone (numpyro_jko.sharding stays off under a default device), since the other
    # devices may be busy running the very program that waits for this callback
    # (pmap over chains).
    if jax.default_backend() == "cpu" and jax.local_device_count() == 1:
        return jax.default_device(None)
    return contextlib.nullcontext()


def _make_block_fn(chain, dim: int, dtype, block_size: int):
    """``keys -> DrawBlock``: jit-, vmap- and pmap-compatible draws from ``chain``.

    Drawing through rejection layers has data-dependent sizes, so it runs on the
    host (:func:`numpyro_jko.jko.draw`) behind :func:`jax.pure_callback`.  The draws
    are a deterministic function of the key, which is what ``pure_callback`` asks.
    """

    def host(key_data):
        # pure_callback runs this under jax.default_device(cpu), and the default
        # device is part of jit's cache key: every compiled chunk function of the
        # chain would compile again here, on every MCMC.run (measured: 10-20 s of
        # a 30 s run).  On a CPU backend that device *is* the default, so clearing
        # it reuses the programs compiled by fit/draw; elsewhere keep it (running
        # accelerator work from inside a callback risks deadlock).
        with _cpu_default_device_cleared():
            return _host_draws(key_data)

    def _host_draws(key_data):
        key_data = np.asarray(key_data)
        lead = key_data.shape[:-1]
        rows = key_data.reshape((-1, key_data.shape[-1]))
        outs = [jko.draw(jax.random.wrap_key_data(k), chain, block_size) for k in rows]
        x = np.stack([o[0] for o in outs]).astype(dtype)
        log_q = np.stack([-o[1] for o in outs]).astype(dtype)
        log_g = np.stack([o[2] for o in outs]).astype(dtype)
        return (
            x.reshape(lead + (block_size, dim)),
            log_q.reshape(lead + (block_size,)),
            log_g.reshape(lead + (block_size,)),
        )

    def draw_block(keys):
        shape = keys.shape
        result = (
            jax.ShapeDtypeStruct(shape + (block_size, dim), dtype),
            jax.ShapeDtypeStruct(shape + (block_size,), dtype),
            jax.ShapeDtypeStruct(shape + (block_size,), dtype),
        )
        out = jax.pure_callback(
            host, result, jax.random.key_data(keys), vmap_method="sequential"
        )
        return DrawBlock(*out)

    return draw_block


def _split_keys(keys):
    """Split a key or a batch of keys into (next, now)."""
    pairs = (
        jax.random.split(keys) if keys.ndim == 0 else jax.vmap(jax.random.split)(keys)
    )
    return pairs[..., 0], pairs[..., 1]


class NeuralJKO(MCMCKernel):
    """I.i.d. posterior draws from an importance-corrected neural JKO chain, as an MCMC kernel.

    ``init`` trains the chain (once; a tqdm bar shows the layers), then every
    ``sample`` returns a fresh, independent draw with the chain's log density: the
    "Markov chain" has no memory, so the ESS of ``S`` samples is about ``S`` and
    nothing needs adapting.  **num_warmup** draws are drawn and discarded (they cost
    next to nothing; ``num_warmup=0`` is fine).

    Draws come from a block of ``block_size`` pre-drawn draws held in the state and
    indexed by a counter; a spent block is refilled on the host through
    :func:`jax.pure_callback`, so ``sample`` stays jit-compatible (``MCMC`` jits it).
    Per-draw cost is an index, plus a refill every ``block_size`` draws.

    **Several chains** share one trained chain: the first ``init`` (first key of the
    batch when vectorized) trains it and later ``init`` calls with the same model
    arguments reuse it; each MCMC chain draws with its own key, so chains are
    independent samples from the same trained sampler (``r_hat ~ 1`` by
    construction: it cannot detect a mode the trained chain misses; read
    :meth:`diagnostics` instead).  ``chain_method`` may be ``"sequential"``,
    ``"vectorized"`` or ``"parallel"``.  Under ``"parallel"``, ``init`` runs inside
    ``pmap``, where nothing can be trained: call :meth:`fit` first (or use
    :meth:`from_sampler`); ``"vectorized"`` is as fast here, since drawing runs on
    the host anyway.

    Parameters
    ----------
    model : callable, optional
        A NumPyro model with continuous latent sites.
    potential_fn : callable, optional
        Instead of ``model``: a potential of a pytree; ``MCMC.run`` must then get
        ``init_params`` (they fix the structure and the start of the latent).
    config : JKOConfig
        Chain settings (:class:`numpyro_jko.jko.JKOConfig`).
    progress_bar : bool
        Training progress bar.
    init_strategy : callable
        NumPyro init strategy for the starting point of the latent-mean fit.
    latent_steps : int
        Adam steps of :func:`~numpyro_jko.target.fit_latent_mean` (0: use the init
        point); ignored when ``config.latent_mean`` is set.
    block_size : int
        Draws per block, a multiple of the chunk shape of every draw
        (``JKOConfig.chunk_size``, 4096), so refills reuse compiled programs: a
        new shape costs seconds of compilation, and 8192 draws of a small model
        about a second.
    num_check_draws : int
        Fresh draws used after training to estimate ``log Z``, the weight ESS and
        PSIS k-hat and to warn (:class:`~numpyro_jko.diagnostics.JKOWarning`) when
        they say the chain cannot be trusted; 0 skips the check.
    refit_draws : int
        Fresh draws per rejection layer to re-estimate its ``rbar`` after training
        (:func:`numpyro_jko.refine.refit_rbar`): the chain's log densities are then
        normalized up to a known error, which ``log Z``'s standard error includes.
        0 keeps the in-sample values from training.

    Notes
    -----
    ``extra_fields=("log_density",)`` (collected by default) gives the sampler's
    normalized log density of each draw on the **unconstrained** space (the space of
    ``z``); ``potential_energy`` is the model's negative log joint there, so
    ``-potential_energy - log_density`` are importance log-weights.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import MCMC
    >>> def model(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    ...     with numpyro.plate("n", y.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> config = JKOConfig(num_particles=2048, num_cnf=2, num_blocks=2,
    ...                    num_iterations=150, batch_size=256, hidden=16,
    ...                    num_hidden_layers=2, num_steps=2)
    >>> kernel = NeuralJKO(model, config=config, progress_bar=False)
    >>> mcmc = MCMC(kernel, num_warmup=0, num_samples=500, progress_bar=False)
    >>> mcmc.run(jax.random.key(0), jnp.array([2.9, 3.1, 3.0, 3.2]))
    >>> samples = mcmc.get_samples()
    >>> samples["mu"].shape
    (500,)
    >>> bool(abs(samples["mu"].mean() - 3.0) < 0.2)
    True
    """

    def __init__(
        self,
        model=None,
        potential_fn=None,
        *,
        config: JKOConfig = JKOConfig(),
        progress_bar=True,
        init_strategy=init_to_median,
        latent_steps: int = 200,
        block_size: int = 8192,
        num_check_draws: int = 8192,
        refit_draws: int = 65536,
    ):
        if not (model is None) ^ (potential_fn is None):
            raise ValueError("Only one of `model` or `potential_fn` must be specified.")
        self._model = model
        self._potential_fn = potential_fn
        self._config = config
        self._progress_bar = progress_bar
        self._init_strategy = init_strategy
        self._latent_steps = int(latent_steps)
        self._block_size = int(block_size)
        self._num_check_draws = int(num_check_draws)
        self._refit_draws = int(refit_draws)
        self._fit_result: _Fit | None = None
        self._saved_fit: dict | None = None  # set when unpickled, rebuilt lazily
        self._sample_fn = None

    # -- MCMCKernel properties ------------------------------------------------------

    @property
    def model(self):
        """The NumPyro model (None with ``potential_fn``).

        Examples
        --------
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> NeuralJKO(model).model is model
        True
        >>> NeuralJKO(potential_fn=lambda z: z @ z).model is None
        True
        """
        return self._model

    @property
    def sample_field(self):
        """The state field that ``MCMC`` collects as samples, ``"z"`` (as in HMC).

        ``z`` holds unconstrained values at latent sites; :meth:`postprocess_fn`
        maps them to the constrained space.

        Examples
        --------
        >>> NeuralJKO(potential_fn=lambda z: z @ z).sample_field
        'z'
        """
        return "z"

    @property
    def default_fields(self):
        """``z`` plus the model and sampler log densities of each draw.

        ``MCMC`` collects these fields by default; read the two densities with
        ``mcmc.get_extra_fields()`` (``-potential_energy - log_density`` are
        importance log-weights).

        Examples
        --------
        >>> NeuralJKO(potential_fn=lambda z: z @ z).default_fields
        ('z', 'potential_energy', 'log_density')
        """
        return ("z", "potential_energy", "log_density")

    def get_diagnostics_str(self, state):
        """Progress-bar postfix: the weight ESS and PSIS k-hat of the trained chain.

        The same for every state (the draws are i.i.d. from one trained chain), so
        ``state`` is not read; empty before training, and without the numbers when
        the kernel was built with ``num_check_draws=0``.

        Examples
        --------
        A chain with no layers (``num_cnf=0, num_blocks=0``: the Gaussian latent
        alone, nothing to train) keeps the example fast:

        >>> import jax, jax.numpy as jnp
        >>> config = JKOConfig(num_cnf=0, num_blocks=0)
        >>> kernel = NeuralJKO(potential_fn=lambda z: 0.5 * jnp.sum(z**2),
        ...                    config=config, progress_bar=False, latent_steps=0,
        ...                    num_check_draws=1024, refit_draws=0)
        >>> kernel.get_diagnostics_str(None)  # not trained yet
        ''
        >>> _ = kernel.fit(jax.random.key(0), init_params=jnp.zeros(2))
        >>> kernel.get_diagnostics_str(None)  # doctest: +ELLIPSIS
        'i.i.d. draws, weight ESS 100%, k-hat ...'
        """
        if self._fit_result is None:
            return ""
        return _diagnostics_str(self._fit_result.diagnostics)

    # -- training -------------------------------------------------------------------

    @property
    def chain(self):
        """The trained :class:`~numpyro_jko.chain.JKOChain` (None before training).

        Examples
        --------
        >>> NeuralJKO(potential_fn=lambda z: z @ z).chain is None
        True

        After training, see :meth:`fit`.
        """
        return None if self._fit_result is None else self._fit_result.chain

    @property
    def info(self):
        """The :class:`~numpyro_jko.jko.JKOInfo` of training (None before).

        Examples
        --------
        >>> NeuralJKO(potential_fn=lambda z: z @ z).info is None
        True

        After training, see :meth:`fit`.
        """
        return None if self._fit_result is None else self._fit_result.info

    def diagnostics(self) -> dict:
        """:func:`~numpyro_jko.diagnostics.fit_diagnostics` of the trained chain.

        Examples
        --------
        >>> NeuralJKO(potential_fn=lambda z: z @ z).diagnostics()
        Traceback (most recent call last):
        ...
        RuntimeError: The kernel has not been trained: run MCMC (or call fit) first.
        """
        if self._fit_result is None:
            raise RuntimeError(
                "The kernel has not been trained: run MCMC (or call fit) first."
            )
        return dict(self._fit_result.diagnostics)

    def fit(self, rng_key, *model_args, init_params=None, **model_kwargs):
        """Train the chain now (``MCMC.run`` then reuses it for these arguments).

        Needed before ``chain_method="parallel"`` (``init`` runs inside ``pmap``
        there); also to train once and run ``MCMC`` several times.

        Parameters
        ----------
        rng_key : jax.random key
        *model_args, **model_kwargs
            Arguments of the model (the same as those given to ``MCMC.run``).
        init_params : pytree, optional
            Required with ``potential_fn``; unconstrained values otherwise.

        Returns
        -------
        NeuralJKO
            ``self``.

        Examples
        --------
        >>> import jax, jax.numpy as jnp
        >>> config = JKOConfig(num_particles=512, num_cnf=1, num_blocks=1,
        ...                    num_iterations=20, batch_size=128,
        ...                    min_cnf_gain=0.0)  # keep the CNF (the latent fits)
        >>> kernel = NeuralJKO(potential_fn=lambda z: 0.5 * jnp.sum(z**2),
        ...                    config=config, progress_bar=False, num_check_draws=0)
        >>> kernel.fit(jax.random.key(0), init_params=jnp.zeros(2)).chain.dim
        2
        >>> kernel.info.layer_kinds[:2]  # one CNF, then rejection layers
        ('C', 'R')
        """
        self._fit_result = None
        self._ensure_fit(rng_key, init_params, model_args, model_kwargs)
        return self

    @classmethod
    def from_sampler(cls, sampler: JKOSampler, *, block_size: int = 8192):
        """A kernel that draws from the chain a :class:`JKOSampler` has trained.

        ``MCMC.run`` must get the model arguments given to ``sampler.run`` (other
        arguments train a new chain).

        Examples
        --------
        >>> import jax, jax.numpy as jnp
        >>> import numpyro, numpyro.distributions as dist
        >>> from numpyro.infer import MCMC
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(1.0, 0.5))
        >>> config = JKOConfig(num_particles=2048, num_cnf=2, num_blocks=1,
        ...                    num_iterations=100, batch_size=256, hidden=16,
        ...                    num_hidden_layers=2, num_steps=2)
        >>> sampler = JKOSampler(model, config, progress_bar=False,
        ...                      num_evidence_draws=8192)
        >>> sampler.run(jax.random.key(0))
        >>> mcmc = MCMC(NeuralJKO.from_sampler(sampler), num_warmup=0,
        ...             num_samples=100, progress_bar=False)
        >>> mcmc.run(jax.random.key(1))
        >>> mcmc.get_samples()["x"].shape
        (100,)
        """
        sampler.log_evidence()  # also checks that the sampler has run
        kernel = cls(
            sampler.model,
            config=sampler.config,
            progress_bar=False,
            init_strategy=sampler.init_strategy,
            latent_steps=sampler.latent_steps,
            block_size=block_size,
            num_check_draws=0,
            refit_draws=sampler.refit_draws,
        )
        kernel._fit_result = sampler._fit
        return kernel

    def _ensure_fit(self, rng_key, init_params, model_args, model_kwargs):
        args = (tuple(model_args), dict(model_kwargs or {}))
        current = self._fit_result
        if current is not None and _same_args(
            (current.model_args, current.model_kwargs), args
        ):
            return current
        target_key = jax.random.fold_in(rng_key, 0)
        if self._potential_fn is not None and init_params is None:
            raise ValueError(
                "Valid value of `init_params` must be provided with `potential_fn`."
            )
        target = model_target(
            self._model,
            *args,
            potential_fn=self._potential_fn,
            init_params=init_params,
            rng_key=target_key,
            init_strategy=self._init_strategy,
        )
        saved = self._saved_fit
        if saved is not None and _same_args(saved["args"], args):
            chain = chain_from_dict(saved["chain"], target.logdensity_fn)
            result = _Fit(
                *args,
                target,
                chain,
                saved["info"],
                saved["refit"],
                saved["evidence"],
                saved["diagnostics"],
            )
        else:
            chain, info, refit, estimate, draws = _train(
                jax.random.fold_in(rng_key, 1),
                target,
                self._config,
                self._progress_bar,
                self._latent_steps,
                self._num_check_draws,
                jax.random.fold_in(rng_key, 2),
                self._refit_draws,
            )
            diagnostics = _fit_diagnostics(
                info, refit, estimate, draws, self._config.rejection_rate
            )
            check_fit(diagnostics, stacklevel=4)
            result = _Fit(*args, target, chain, info, refit, estimate, diagnostics)
        self._fit_result = result
        self._sample_fn = None
        return result

    # -- MCMCKernel methods ---------------------------------------------------------

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        """Train (or reuse) the chain and return a state holding a first block of draws.

        ``rng_key`` is one key, or a batch of keys (``chain_method="vectorized"``,
        then ``init_params``, if any, have a leading chain axis).  ``MCMC.run``
        calls it; the draws in the state's block are fresh for every call.

        Examples
        --------
        A chain with no layers (the Gaussian latent alone) keeps the example fast;
        a real ``config`` trains here, on the first call:

        >>> import jax, jax.numpy as jnp
        >>> kernel = NeuralJKO(potential_fn=lambda z: 0.5 * jnp.sum(z**2),
        ...                    config=JKOConfig(num_cnf=0, num_blocks=0),
        ...                    progress_bar=False, latent_steps=0, block_size=8,
        ...                    num_check_draws=0, refit_draws=0)
        >>> state = kernel.init(jax.random.key(0), 0, jnp.zeros(2), (), {})
        >>> int(state.i), state.z.shape, state.block.x.shape
        (0, (2,), (8, 2))

        Three chains at once reuse the trained chain (same model arguments):

        >>> keys = jax.random.split(jax.random.key(1), 3)
        >>> kernel.init(keys, 0, jnp.zeros((3, 2)), (), {}).z.shape
        (3, 2)
        """
        keys = _as_typed_key(rng_key)
        batched = keys.ndim > 0
        first_params = init_params
        if batched and init_params is not None:
            first_params = jax.tree.map(lambda a: a[0], init_params)
        first_key = keys.reshape(-1)[0]
        if not_jax_tracer(first_key):
            self._ensure_fit(first_key, first_params, model_args, model_kwargs)
        else:
            # Inside pmap (chain_method="parallel") everything is traced, and
            # training (host-side loops over compiled diffrax solves) cannot run
            # there: it must have happened before, for these arguments.
            fit = self._fit_result
            if fit is None or not _same_args(
                (fit.model_args, fit.model_kwargs),
                (tuple(model_args), dict(model_kwargs or {})),
            ):
                raise RuntimeError(
                    "NeuralJKO.init runs inside pmap with chain_method='parallel', "
                    "where the chain cannot be trained: call kernel.fit(rng_key, "
                    "*model_args, **model_kwargs) first (or build the kernel with "
                    "NeuralJKO.from_sampler), or use chain_method='vectorized'."
                )
        fit = self._fit_result
        target = fit.target
        draw_block = _make_block_fn(
            fit.chain, target.dim, target.init_position.dtype, self._block_size
        )
        unravel = target.unravel_fn
        batch_unravel = unravel if not batched else jax.vmap(unravel)
        block_size = self._block_size

        def take(block, i, rng_key):
            j = jnp.ravel(i)[0]  # chains move in lockstep
            x = jnp.take(block.x, j, axis=-2)
            return NeuralJKOState(
                i=i,
                z=batch_unravel(x),
                potential_energy=-jnp.take(block.log_target, j, axis=-1),
                log_density=jnp.take(block.log_density, j, axis=-1),
                block=block,
                rng_key=rng_key,
            )

        def sample_fn(state):
            i = state.i + 1

            def refill(rng_key):
                rng_key, key_block = _split_keys(rng_key)
                return draw_block(key_block), jnp.zeros_like(i), rng_key

            def keep(rng_key):
                return state.block, i, rng_key

            # The predicate is one scalar even for a batch of chains, so only the
            # taken branch runs (a batched predicate would run the callback always).
            exhausted = jnp.ravel(i)[0] >= block_size
            block, i, rng_key = lax.cond(exhausted, refill, keep, state.rng_key)
            return take(block, i, rng_key)

        self._sample_fn = sample_fn
        rng_key, key_block = _split_keys(keys)
        return take(draw_block(key_block), jnp.zeros(keys.shape, jnp.int32), rng_key)

    def sample(self, state, model_args, model_kwargs):
        """The next i.i.d. draw (``model_args`` are those the chain was trained on).

        Examples
        --------
        A chain with no layers (the Gaussian latent alone, nothing to train)
        keeps the example fast:

        >>> import jax, jax.numpy as jnp
        >>> kernel = NeuralJKO(potential_fn=lambda z: 0.5 * jnp.sum(z**2),
        ...                    config=JKOConfig(num_cnf=0, num_blocks=0),
        ...                    progress_bar=False, latent_steps=0, block_size=8,
        ...                    num_check_draws=0, refit_draws=0)
        >>> state = kernel.init(jax.random.key(0), 0, jnp.zeros(2), (), {})
        >>> state = jax.jit(kernel.sample, static_argnums=(1, 2))(state, (), ())
        >>> int(state.i), state.z.shape
        (1, (2,))
        """
        if self._sample_fn is None:
            raise RuntimeError("`init` must be called before `sample`.")
        return self._sample_fn(state)

    def postprocess_fn(self, model_args, model_kwargs):
        """Unconstrained ``z`` to constrained values plus ``deterministic`` sites.

        Bound to the model arguments the chain was trained on (those ``MCMC``
        passes); the identity with ``potential_fn`` and before training.

        Examples
        --------
        >>> kernel = NeuralJKO(potential_fn=lambda z: z @ z)
        >>> kernel.postprocess_fn((), {})({"x": 1.0})
        {'x': 1.0}

        With a model, after training (here ``sigma``'s unconstrained value is
        ``log sigma``; a chain with no layers keeps the example fast):

        >>> import jax, jax.numpy as jnp
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("sigma", dist.HalfNormal(1.0))
        >>> kernel = NeuralJKO(model, config=JKOConfig(num_cnf=0, num_blocks=0),
        ...                    progress_bar=False, latent_steps=0,
        ...                    num_check_draws=0, refit_draws=0)
        >>> constrain = kernel.fit(jax.random.key(0)).postprocess_fn((), {})
        >>> round(float(constrain({"sigma": jnp.log(2.0)})["sigma"]), 4)
        2.0
        """
        if self._fit_result is None or self._model is None:
            return identity
        return self._fit_result.target.postprocess_fn

    # -- pickling -------------------------------------------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_sample_fn"] = None
        fit = self._fit_result
        state["_fit_result"] = None
        if fit is not None:
            # Closures over the model do not pickle; the trained chain's numbers do,
            # and are rebuilt on the next ``init`` with the same arguments.
            state["_saved_fit"] = {
                "args": jax.device_get((fit.model_args, fit.model_kwargs)),
                "chain": chain_to_dict(fit.chain),
                "info": fit.info,
                "refit": fit.refit,
                "evidence": fit.evidence,
                "diagnostics": fit.diagnostics,
            }
        return state


# ----------------------------------------------------------------------------------
# NestedSampler-shaped sampler


class JKOSampler:
    """Train a JKO chain on a NumPyro model; draw, weigh, evaluate and save it.

    Shaped like :class:`numpyro.contrib.nested_sampling.NestedSampler`: ``run``
    trains, ``get_samples`` draws.  Draws are i.i.d. from the trained chain, with
    its normalized density, so on top of samples it gives the evidence ``log Z``
    with a standard error, importance weights, the sampler's density at any
    constrained point, and an ArviZ ``InferenceData`` with ``loo``-ready log
    likelihoods.

    Parameters
    ----------
    model : callable
        A NumPyro model with continuous latent sites.
    config : JKOConfig
    progress_bar : bool
        Training progress bar.
    init_strategy : callable
        NumPyro init strategy for the starting point of the latent-mean fit.
    latent_steps : int
        Adam steps of :func:`~numpyro_jko.target.fit_latent_mean` (0: the init
        point); ignored when ``config.latent_mean`` is set.
    num_evidence_draws : int
        Fresh draws behind :meth:`log_evidence`, :meth:`diagnostics` and
        :meth:`print_summary`; drawn at the end of :meth:`run`, which warns
        (:class:`~numpyro_jko.diagnostics.JKOWarning`) when they show a chain that
        cannot be trusted.  ``0`` skips that check; 20 000 draws are then made
        when first needed.
    refit_draws : int
        Fresh draws per rejection layer to re-estimate its ``rbar`` after training
        (:func:`numpyro_jko.refine.refit_rbar`); 0 keeps the in-sample values.
        Without it, the standard error of ``log Z`` misses the error of the
        in-sample normalization (``~ 1 / sqrt(num_particles)`` per layer).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpyro, numpyro.distributions as dist
    >>> def model(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    ...     with numpyro.plate("n", y.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> config = JKOConfig(num_particles=2048, num_cnf=2, num_blocks=2,
    ...                    num_iterations=150, batch_size=256, hidden=16,
    ...                    num_hidden_layers=2, num_steps=2)
    >>> sampler = JKOSampler(model, config, progress_bar=False,
    ...                      num_evidence_draws=8192)
    >>> sampler.run(jax.random.key(0), jnp.array([2.9, 3.1, 3.0, 3.2]))
    >>> samples = sampler.get_samples(jax.random.key(1), 1000)
    >>> samples["mu"].shape
    (1000,)
    >>> est = sampler.log_evidence()  # closed form: -6.7441
    >>> bool(abs(est.log_Z + 6.7441) < 4 * est.log_Z_se + 0.01)
    True

    Densities, weights, diagnostics, ArviZ and saving, on the same sampler:

    >>> samples, log_w = sampler.get_weighted_samples(jax.random.key(2), 100)
    >>> sampler.log_density(samples).shape, log_w.shape
    ((100,), (100,))
    >>> sampler.diagnostics()["warnings"]
    []
    >>> idata = sampler.to_inference_data(jax.random.key(3), 200, num_chains=2)
    >>> idata.sample_stats["log_weight"].shape
    (2, 100)
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "chain.pkl")
    >>> sampler.save(path)
    >>> loaded = JKOSampler.load(path, model, progress_bar=False)
    >>> a = sampler.get_samples(jax.random.key(1), 1000)["mu"]
    >>> b = loaded.get_samples(jax.random.key(1), 1000)["mu"]
    >>> bool((a == b).all())  # the same chain: the same draws for a key
    True
    """

    def __init__(
        self,
        model,
        config: JKOConfig = JKOConfig(),
        *,
        progress_bar=True,
        init_strategy=init_to_median,
        latent_steps: int = 200,
        num_evidence_draws: int = 20_000,
        refit_draws: int = 65536,
    ):
        if model is None:
            raise ValueError("JKOSampler needs a NumPyro model.")
        self.model = model
        self.config = config
        self.progress_bar = progress_bar
        self.init_strategy = init_strategy
        self.latent_steps = int(latent_steps)
        self.num_evidence_draws = int(num_evidence_draws)
        self.refit_draws = int(refit_draws)
        self._fit: _Fit | None = None
        self._evidence_key = None
        self._evidence_draws = None

    # -- training -------------------------------------------------------------------

    def run(self, rng_key, *args, **kwargs):
        """Train the chain on the posterior of ``model(*args, **kwargs)``.

        Raises before training on a discrete latent site or a model that is not
        finite anywhere NumPyro looks (:func:`~numpyro_jko.target.model_target`).
        At the end, draws ``num_evidence_draws`` fresh draws, estimates ``log Z``
        and warns if the chain cannot be trusted.

        Examples
        --------
        See :class:`JKOSampler`.
        """
        key_target, key_train, key_evidence = jax.random.split(rng_key, 3)
        target = model_target(
            self.model,
            args,
            kwargs,
            rng_key=key_target,
            init_strategy=self.init_strategy,
        )
        chain, info, refit, estimate, draws = _train(
            key_train,
            target,
            self.config,
            self.progress_bar,
            self.latent_steps,
            self.num_evidence_draws,
            key_evidence,
            self.refit_draws,
        )
        diagnostics = _fit_diagnostics(
            info, refit, estimate, draws, self.config.rejection_rate
        )
        self._fit = _Fit(
            tuple(args), dict(kwargs), target, chain, info, refit, estimate, diagnostics
        )
        self._evidence_key = key_evidence
        self._evidence_draws = draws
        check_fit(diagnostics, stacklevel=2)

    def _require_fit(self) -> _Fit:
        if self._fit is None:
            raise RuntimeError(
                "JKOSampler.run(...) method should be called first to obtain results."
            )
        return self._fit

    @property
    def chain(self):
        """The trained :class:`~numpyro_jko.chain.JKOChain` (an error before ``run``).

        Examples
        --------
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> JKOSampler(model).chain
        Traceback (most recent call last):
        ...
        RuntimeError: JKOSampler.run(...) method should be called first to obtain results.

        After ``run``, e.g. ``sampler.chain.sampling_cost()``; see
        :class:`JKOSampler`.
        """
        return self._require_fit().chain

    @property
    def info(self):
        """The :class:`~numpyro_jko.jko.JKOInfo` of training (an error before ``run``).

        Examples
        --------
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> JKOSampler(model).info
        Traceback (most recent call last):
        ...
        RuntimeError: JKOSampler.run(...) method should be called first to obtain results.

        After ``run``, e.g. ``sampler.info.layer_kinds`` and ``train_seconds``,
        or ``numpyro_jko.plots.plot_training(sampler)``.
        """
        return self._require_fit().info

    @property
    def target(self):
        """The :class:`~numpyro_jko.target.ModelTarget` the chain was trained on.

        An error before ``run``.

        Examples
        --------
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> JKOSampler(model).target
        Traceback (most recent call last):
        ...
        RuntimeError: JKOSampler.run(...) method should be called first to obtain results.

        After ``run``, e.g. ``sampler.target.dim`` and
        ``sampler.target.latent_sites``.
        """
        return self._require_fit().target

    # -- draws ----------------------------------------------------------------------

    def _draw(self, rng_key, num_samples):
        return jko.draw(rng_key, self._require_fit().chain, int(num_samples))

    def get_samples(self, rng_key, num_samples, *, group_by_chain=False):
        """I.i.d. posterior draws: constrained latent sites and ``deterministic`` sites.

        Parameters
        ----------
        rng_key : jax.random key
        num_samples : int
        group_by_chain : bool
            Add a leading chain axis of size 1 (as ``NestedSampler`` does).

        Returns
        -------
        dict
            Arrays of shape ``(num_samples, ...)``.

        Examples
        --------
        See :class:`JKOSampler`.
        """
        fit = self._require_fit()
        x, _, _ = self._draw(rng_key, num_samples)
        samples = fit.target.postprocess_fn(jnp.asarray(x))
        if group_by_chain:
            samples = jax.tree.map(lambda a: a[None], samples)
        return samples

    def get_weighted_samples(self, rng_key, num_samples):
        """Draws with their importance log-weights ``log p(x, y) - log q(x)``.

        Reweighting by ``exp(log_weights)`` (self-normalized) removes what bias the
        chain has left; the weights are unnormalized (their log-mean estimates
        ``log Z``).

        Returns
        -------
        samples : dict
        log_weights : Array, shape (num_samples,)

        Examples
        --------
        See :class:`JKOSampler`.
        """
        fit = self._require_fit()
        x, energy, log_g = self._draw(rng_key, num_samples)
        samples = fit.target.postprocess_fn(jnp.asarray(x))
        return samples, jnp.asarray(log_g + energy)

    def log_density(self, samples):
        """The sampler's normalized log density at constrained ``samples``.

        Pulls each sample back to the unconstrained space, evaluates the chain's
        density there (:func:`numpyro_jko.chain.log_prob`) and adds the log-Jacobian
        of the unconstraining transform, so the result is a density with respect to
        the constrained values (e.g. of a Dirichlet site's free coordinates).

        Parameters
        ----------
        samples : dict
            Constrained values of every latent site, leading batch axis.

        Returns
        -------
        Array, shape (n,)

        Examples
        --------
        See :class:`JKOSampler`.
        """
        fit = self._require_fit()
        flat, log_det = fit.target.unconstrain(samples)
        return jko.log_prob(fit.chain, flat) + log_det

    def _evidence_sample(self):
        fit = self._require_fit()
        if self._evidence_draws is None:
            n = self.num_evidence_draws or 20_000
            self._evidence_draws = jko.draw(self._evidence_key, fit.chain, n)
        return self._evidence_draws

    def log_evidence(self):
        """``log Z`` of the model with its standard error (cached).

        Importance sampling on ``num_evidence_draws`` fresh draws
        (:func:`numpyro_jko.evidence.log_evidence`); the result also carries the
        ELBO, the weight ESS and PSIS k-hat.

        Returns
        -------
        Evidence

        Examples
        --------
        See :class:`JKOSampler`.
        """
        fit = self._require_fit()
        if fit.evidence is None:
            draws = self._evidence_sample()
            estimate = _evidence(draws, fit.refit)
            self._fit = fit._replace(
                evidence=estimate,
                diagnostics=_fit_diagnostics(
                    fit.info, fit.refit, estimate, draws, self.config.rejection_rate
                ),
            )
        return self._fit.evidence

    def diagnostics(self) -> dict:
        """Weight ESS, PSIS k-hat, ``log Z``, per-layer record and timings.

        See :func:`numpyro_jko.diagnostics.fit_diagnostics` for the keys; adds
        ``warnings``, the messages of :func:`~numpyro_jko.diagnostics.check_fit`.

        Examples
        --------
        See :class:`JKOSampler`.
        """
        self.log_evidence()
        out = dict(self._fit.diagnostics)
        out["warnings"] = check_fit(out, warn=False)
        return out

    def print_summary(self, prob=0.9, exclude_deterministic=True):
        """Print ``log Z``, the weight diagnostics and NumPyro's summary table.

        The table (:func:`numpyro.diagnostics.print_summary`) is computed on the
        ``num_evidence_draws`` draws, constrained.

        Examples
        --------
        See :class:`JKOSampler`.
        """
        from numpyro.diagnostics import print_summary

        fit = self._require_fit()
        est = self.log_evidence()
        x, _, _ = self._evidence_sample()
        samples = fit.target.postprocess_fn(jnp.asarray(x))
        if exclude_deterministic:
            samples = {k: v for k, v in samples.items() if k in fit.target.latent_sites}
        khat = f"PSIS k-hat = {est.pareto_k:.2f}"
        if est.ess >= FLAT_WEIGHTS_ESS_FRACTION * est.num_draws:
            # Rejection layers flatten the weights; k-hat then fits ties.
            khat += " (weights nearly flat: k-hat not meaningful)"
        print(
            f"log Z = {est.log_Z:.4f} ± {est.log_Z_se:.4f}   ELBO = {est.elbo:.4f}   "
            f"weight ESS = {est.ess:.0f} / {est.num_draws} "
            f"({100 * est.ess / est.num_draws:.1f}%)   {khat}"
        )
        print_summary(
            jax.tree.map(np.asarray, samples), prob=prob, group_by_chain=False
        )

    # -- ArviZ ----------------------------------------------------------------------

    def to_inference_data(self, rng_key, num_samples, *, num_chains=1, **kwargs):
        """An ``arviz.InferenceData`` of ``num_samples`` fresh draws.

        See :func:`numpyro_jko.inference_data.to_inference_data`; ``num_chains``
        splits the i.i.d. draws into that many chains (for ``r_hat``-style tools).
        ``lp`` is the model's log joint and ``log_density`` the sampler's, both on
        the unconstrained space (``lp`` as ``az.from_numpyro`` reports it).

        Examples
        --------
        See :class:`JKOSampler`.
        """
        from numpyro_jko.inference_data import to_inference_data

        fit = self._require_fit()
        x, energy, log_g = self._draw(rng_key, num_samples)
        samples = fit.target.postprocess_fn(jnp.asarray(x))
        return to_inference_data(
            samples,
            lp=log_g,
            log_density=-energy,
            model=self.model,
            model_args=fit.model_args,
            model_kwargs=fit.model_kwargs,
            evidence=self.log_evidence(),
            num_chains=num_chains,
            **kwargs,
        )

    # -- save / load ----------------------------------------------------------------

    def save(self, path):
        """Pickle the trained chain, config, model arguments and diagnostics.

        The model itself is not saved (closures and handlers rarely pickle): pass
        it to :meth:`load`.  Draws and log densities after ``load`` are identical
        to the original's for the same key.

        Examples
        --------
        See :class:`JKOSampler`.
        """
        fit = self._require_fit()
        self.log_evidence()
        config = self.config
        try:
            pickle.dumps(config)
        except Exception:  # noqa: BLE001 - e.g. a user optax chain with lambdas
            config = config._replace(optimizer=None)
        state = {
            "format": "numpyro_jko.JKOSampler/1",
            "chain": chain_to_dict(fit.chain),
            "config": config,
            "model_args": jax.device_get(fit.model_args),
            "model_kwargs": jax.device_get(fit.model_kwargs),
            "info": fit.info,
            "refit": fit.refit,
            "evidence": self._fit.evidence,
            "diagnostics": self._fit.diagnostics,
            "evidence_key": np.asarray(jax.random.key_data(self._evidence_key)),
            "latent_steps": self.latent_steps,
            "num_evidence_draws": self.num_evidence_draws,
            "refit_draws": self.refit_draws,
        }
        with open(path, "wb") as f:
            pickle.dump(state, f)

    @classmethod
    def load(cls, path, model, *, progress_bar=True):
        """Rebuild a sampler saved with :meth:`save`, without retraining.

        Parameters
        ----------
        path : str or path-like
        model : callable
            The same model that was trained (its arguments were saved).
        progress_bar : bool

        Examples
        --------
        See :class:`JKOSampler`.
        """
        with open(path, "rb") as f:
            state = pickle.load(f)
        if state.get("format") != "numpyro_jko.JKOSampler/1":
            raise ValueError(f"{path} is not a saved JKOSampler.")
        sampler = cls(
            model,
            state["config"],
            progress_bar=progress_bar,
            latent_steps=state["latent_steps"],
            num_evidence_draws=state["num_evidence_draws"],
            refit_draws=state["refit_draws"],
        )
        args, kwargs = tuple(state["model_args"]), dict(state["model_kwargs"])
        target = model_target(model, args, kwargs)
        chain = chain_from_dict(state["chain"], target.logdensity_fn)
        estimate = state["evidence"]
        info, refit = state["info"], state["refit"]
        sampler._fit = _Fit(
            args,
            kwargs,
            target,
            chain,
            info,
            refit,
            estimate,
            state.get("diagnostics") or _fit_diagnostics(info, refit, estimate),
        )
        sampler._evidence_key = jax.random.wrap_key_data(state["evidence_key"])
        return sampler
