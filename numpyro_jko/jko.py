"""Importance-corrected neural JKO sampling (Hertrich & Gruhlke, ICML 2025).

The functional entry point of the package:

* :class:`JKOConfig` -- every knob, with defaults chosen for a 2-core CPU;
* :func:`fit` -- train a chain on an unnormalized ``logdensity_fn`` of a flat vector;
* :func:`~numpyro_jko.chain.sample` -- i.i.d. draws with the chain's normalized log density;
* :func:`~numpyro_jko.chain.log_prob` -- the same density at arbitrary points.

The chain is a Gaussian latent, ``num_cnf`` plain CNF (JKO) steps, then
``num_blocks`` blocks of ``[CNF, rejection x rejections_per_block]`` (the CNF in a
block is skipped when ``block_iterations == 0``).  Each CNF is one JKO step with
step size ``tau_k = tau0 * tau_growth**k`` (:mod:`numpyro_jko.jko_step`); each
rejection layer is an importance rejection step (:mod:`numpyro_jko.rejection`).

Examples
--------
>>> import jax, jax.numpy as jnp
>>> from numpyro_jko import jko
>>> logdensity_fn = lambda x: -0.5 * jnp.sum((x - 1.0) ** 2)  # N(1, I), Z = 2 pi
>>> config = jko.JKOConfig(num_particles=1024, num_cnf=1, num_blocks=1,
...                        num_iterations=50, block_iterations=0, batch_size=256)
>>> chain, info = jko.fit(jax.random.key(0), logdensity_fn, 2, config,
...                       progress_bar=False)
>>> x, log_p = jko.sample(jax.random.key(1), chain, 2000)
>>> x.shape
(2000, 2)
"""

from __future__ import annotations

import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from numpyro_jko import jko_step
from numpyro_jko.chain import (
    CNFLayer,
    JKOChain,
    _cnf_chunk,
    draw,
    eval_logdensity,
    log_prob,
    sample,
)
from numpyro_jko.cnf import RK4, CNFSpec, Hutchinson
from numpyro_jko.defensive import DefensiveLayer
from numpyro_jko.progress import as_progress_meter
from numpyro_jko.rejection import (
    RejectionLayer,
    acceptance_probability,
    energy_update,
    fit_rejection,
)
from numpyro_jko.target import match_latent_moments, tempered_latent_moments

__all__ = ["JKOConfig", "JKOInfo", "TWO_STEP", "fit", "sample", "log_prob", "JKOChain"]


class JKOConfig(NamedTuple):
    """Every knob of :func:`fit`, with CPU-practical defaults.

    The defaults adapt the stack to the target: 16 384 particles, a latent
    tempered down to the target (:func:`~numpyro_jko.target.tempered_latent_moments`),
    a first step size from the target's score (:func:`~numpyro_jko.jko_step.score_tau`),
    up to six CNFs of 800 Adam steps with ``tau`` doubling (the first that gains
    less than ``min_cnf_gain`` nats of ELBO is dropped and ends them), then up to 18
    rejection layers, stopping at the first that gains less than ``min_elbo_gain``.
    On shifted 8 modes that is two CNFs and four layers; on GMM-10 (d = 10) six
    and 18 (``benchmarks/results/paper_targets_default.md``,
    ``paper_targets_gmm10_50k.md``).  Late CNFs are off by default
    (``block_iterations=0``) because every CNF under ``k`` rejection layers costs
    ``1.2**k`` solves per draw.

    Attributes
    ----------
    num_particles : int
        Training particles ``N`` (reference: 50 000 on a GPU).
    num_cnf : int
        Plain CNF (JKO) steps before the first rejection layer (``n1``).
    num_blocks : int
        ``[CNF + rejection layers]`` blocks (``n2``).
    rejections_per_block : int
        Rejection layers per block (3 in the reference).  Sampling cost grows like
        ``(1 + rejection_rate) ** (num_blocks * rejections_per_block)``.
    rejection_rate : float
        Target rejection rate used to fit each layer's constant ``c``.
    tau0 : float or None
        First JKO step size; ``None`` chooses it from the target with
        :func:`~numpyro_jko.jko_step.score_tau` at the latent draws (recorded in
        ``JKOInfo.tau0``).
    tau_growth : float
        JKO step sizes are ``tau_k = tau0 * tau_growth**k`` (CNFs only).
    tau0_scale : float
        The constant of :func:`~numpyro_jko.jko_step.score_tau` when ``tau0`` is
        ``None``.
    num_iterations : int
        Adam iterations for each plain CNF.
    block_iterations : int or None
        Iterations for the CNF of each block; ``None`` uses ``num_iterations`` and
        ``0`` drops block CNFs (rejection layers only).  Late CNFs barely move the
        loss but sit under many rejection layers, each costing ``1.2**k`` solves per
        draw: cheap blocks make cheap draws.
    batch_size : int
        Minibatch size of each Adam step.
    hidden : int or None
        Width of the velocity MLP; ``None`` is ``2 d + 30``, narrower than the
        reference code's ``2 d + 50``: per-iteration cost is linear in it, and on
        shifted 8 modes width 32 reached ED 2.5e-5 (at the exact-vs-exact floor).
    num_hidden_layers : int
    solver : diffrax solver
        Fixed-step solver of every CNF (default classical RK4).
    num_steps : int
        Solver steps on ``[0, 1]``.
    train_divergence : ExactTrace, Hutchinson or None
        Divergence estimator in training; ``None`` is a one-probe Hutchinson
        estimate (unbiased, so gradients stay unbiased), half the cost of the exact
        trace already at ``d = 2`` (62 vs 123 ms per iteration at batch 1024) with
        the same final accuracy on shifted 8 modes.  Draws always carry exact
        log-determinants up to ``exact_density_max_dim``.
    exact_density_max_dim : int
        Up to this dimension, draws carry the exact log-determinant of each CNF
        map; above it ``density_divergence`` is integrated (noisy densities).
    density_divergence : Hutchinson or None
        Estimator of the log-determinants draws carry above
        ``exact_density_max_dim``; ``None`` is ``Hutchinson(5, per_stage=True)``,
        five probes drawn fresh at every stage time of the solver.  The rejection
        layers accept on ``log g - log p``, so this noise matters: per stage, it is
        about a third of that of probes held along the solve (``Hutchinson(5)``)
        after five CNFs at d = 50, for about 20 % more time per solve
        (``benchmarks/results/hutchinson_noise.md``), and on GMM-50 it took
        ``log Z`` from +0.88 (held) to +0.08 (``benchmarks/results/jko_levers.md``).
    optimizer : optax.GradientTransformation or None
        ``None``: Adam with learning rate ``learning_rate`` decayed exponentially
        (staircase every 100 steps) to ``final_lr_fraction`` of it at the end.
    learning_rate, final_lr_fraction : float
    latent_mean : array or None
        Mean of the Gaussian latent (``None``: zero).
    latent_scale : float or array
        Scale of the Gaussian latent: a scalar or one scale per coordinate (a
        latent matched to the target's spread saves the first CNFs most of their
        work; see ``benchmarks/paper_targets.py``).
    latent_moments : int
        Rounds (at most) of the latent search before training: the latent
        ``N(latent_mean, latent_scale^2)`` is moved to the target's
        importance-weighted mean and per-coordinate spread (mass-covering).  0
        uses the latent exactly as given.
    latent_reference_scale : float
        Above 0 the search is :func:`~numpyro_jko.target.tempered_latent_moments`,
        which tempers down from a reference this many times wider than the
        latent and stops where no Gaussian fits the target any better (wide on
        the safe side).  0: :func:`~numpyro_jko.target.match_latent_moments`,
        adaptive importance sampling from the latent itself, which comes out too
        narrow where the proposal never reaches part of the mass (the mustache's
        arms: spread 1.1 against 7.3) and keeps the latent as given when the
        weights degenerate.
    drop_worse_cnf : bool
        Drop a trained CNF that raised the ELBO by less than ``min_cnf_gain``
        (measured on the particles before and after it), and if it was one of
        the plain steps skip the plain steps after it.  A JKO step cannot raise
        the KL, so one that did failed to train; one that gained almost nothing
        met what a flow of this width fits, and larger steps do no better.
        Either would cost a solve per draw.  Recorded in ``JKOInfo.dropped_taus``.
    min_cnf_gain : float
        The ELBO gain (nats) a CNF must make to be kept (``drop_worse_cnf``);
        0 drops only the steps that lowered it.
    min_elbo_gain : float
        Trailing rejection layers stop once one would raise the ELBO by less than
        this (measured on the same draws before and after the layer): such a
        layer rejects almost uniformly, changes nothing, and makes every draw
        ``1 + rejection_rate`` times dearer.  0 keeps every planned layer.
    reuse_particles : bool
        Push the training particles through each new CNF (exact densities) instead
        of redrawing ``N`` from the whole chain, when the next layer is a CNF.
        Rejection layers are always fitted on fresh draws (see :func:`fit`).
        The pushed set is in-sample: on GMM-50, fresh sets (``False``) fitted the
        modes' insides better but left the weakest mode emptier, for an energy
        distance twice as large (``benchmarks/results/jko_levers.md``).
    reweight_rejection_fit : bool
        Fit each rejection layer on fresh draws from the chain below its stack of
        rejection layers, importance-reweighted to the layer's input law (one
        solve per particle), instead of on draws through the whole stack
        (``1.2**k`` solves per particle under ``k`` layers).
    defensive_weight : float
        Above 0, a :class:`~numpyro_jko.defensive.DefensiveLayer` is added once
        the plain CNFs are trained, before the rejection layers: a mixture in
        which each draw comes with this probability from a Student-t over the
        latent.  The rejection layers can then reach the target's tails where
        the CNFs left none of its mass (they only thin what is below them).
        0 (default) leaves it out.
    defensive_df, defensive_scale : float
        Degrees of freedom of the defensive proposal, and its scale in units of
        the latent's.
    defensive_position : str
        ``"latent"`` (default): the mixture is taken in the latent, under the
        CNFs, which carry the proposal's tails out along the target's geometry;
        it costs nothing extra per draw.  ``"above_cnfs"``: over the CNFs, where
        each proposal draw costs a pull-back through them and lands in the
        latent's coordinates, often far from the target (funnel-10: ELBO -1485
        right after the layer, against -0.76 in the latent).
    chunk_size : int
        Draws per compiled call when sampling.
    iterations_per_update : int
        Adam steps per compiled call (progress-bar granularity).

    Examples
    --------
    >>> config = JKOConfig(num_particles=4096)
    >>> config.num_particles, config.rejection_rate
    (4096, 0.2)
    >>> JKOConfig(**TWO_STEP).tau0  # the earlier default schedule
    0.05
    """

    num_particles: int = 16384
    num_cnf: int = 6
    num_blocks: int = 6
    rejections_per_block: int = 3
    rejection_rate: float = 0.2
    tau0: float | None = None
    tau_growth: float = 2.0
    tau0_scale: float = 25.0
    num_iterations: int = 800
    block_iterations: int | None = 0
    batch_size: int = 512
    hidden: int | None = None
    num_hidden_layers: int = 3
    solver: Any = RK4()
    num_steps: int = 4
    train_divergence: Any = None
    exact_density_max_dim: int = 32
    density_divergence: Any = None
    optimizer: Any = None
    learning_rate: float = 5e-3
    final_lr_fraction: float = 0.1
    latent_mean: Any = None
    latent_scale: float = 1.0
    latent_moments: int = 30
    latent_reference_scale: float = 10.0
    drop_worse_cnf: bool = True
    min_cnf_gain: float = 0.01
    min_elbo_gain: float = 1e-3
    reuse_particles: bool = True
    reweight_rejection_fit: bool = True
    defensive_weight: float = 0.0
    defensive_df: float = 3.0
    defensive_scale: float = 1.0
    defensive_position: str = "latent"
    chunk_size: int = 4096
    iterations_per_update: int = 50

    def iterations_of(self, cnf_index: int) -> int:
        """Adam iterations of CNF number ``cnf_index`` (0-based).

        Examples
        --------
        >>> config = JKOConfig(num_cnf=2, num_iterations=1000, block_iterations=100)
        >>> config.iterations_of(0), config.iterations_of(2)
        (1000, 100)
        """
        if cnf_index < self.num_cnf or self.block_iterations is None:
            return self.num_iterations
        return self.block_iterations

    def layer_plan(self) -> list[str]:
        """The layer types, bottom first: ``"C"`` (CNF), ``"D"`` (defensive), ``"R"``.

        Examples
        --------
        >>> "".join(JKOConfig(num_cnf=2, num_blocks=1, block_iterations=None).layer_plan())
        'CCCRRR'
        >>> "".join(JKOConfig(num_cnf=2, num_blocks=1, defensive_weight=0.1).layer_plan())
        'CCDRRR'
        """
        plan = ["C"] * self.num_cnf
        if self.defensive_weight > 0:
            plan.append("D")
        for _ in range(self.num_blocks):
            if self.block_iterations != 0:
                plan.append("C")
            plan.extend(["R"] * self.rejections_per_block)
        return plan


#: The schedule of the earlier defaults, as overrides of :class:`JKOConfig`:
#: two JKO steps (``tau`` 0.05 and 0.2), both kept, over a latent moved by three
#: rounds of plain adaptive importance sampling.  Enough where the latent already
#: covers the target (the quickstart's wide latent at the prior median); on the two
#: 8-mode paper targets it reaches the floor in half the training time of today's
#: default.
#: ``JKOConfig(**TWO_STEP, num_particles=4096).num_cnf`` is 2.
TWO_STEP = {
    "num_cnf": 2,
    "tau0": 0.05,
    "tau_growth": 4.0,
    "min_elbo_gain": 1e-4,
    "latent_moments": 3,
    "latent_reference_scale": 0.0,
    "drop_worse_cnf": False,
}


class JKOInfo(NamedTuple):
    """What :func:`fit` measured, per layer (bottom first).

    Attributes
    ----------
    layer_kinds : tuple of str
        ``"C"`` (CNF), ``"D"`` (defensive) or ``"R"`` (rejection) per layer.
    taus : tuple of float
        JKO step size of each CNF.
    losses : tuple of np.ndarray
        Training loss per iteration of each CNF.
    elbo : tuple of float
        ``mean(log g - log p)`` on the training particles after each layer
        (``log Z - KL``; rises toward ``log Z``).  After a CNF whose training
        particles were pushed on (``reuse_particles``) it is in-sample, hence
        optimistic by the CNF's overfit (several nats at d = 50).  A defensive
        layer in the latent is listed first, like its layer, but its ELBO is that
        of the chain when it was added, over the CNFs trained before it.
    log_c, rbar : tuple of float
        Constants of each rejection layer.
    layer_seconds : tuple of float
        Wall time of each layer (training or fitting, plus moving the particles).
    compile_seconds : float
        Time spent compiling the training step (once per fit).
    train_seconds : float
        Total wall time of :func:`fit`.
    num_nonfinite : int
        Training particles whose target density was not finite at the end.
    rbar_se : tuple of float
        Monte Carlo standard error of each ``rbar``.  An error ``delta`` in a
        layer's ``rbar`` scales every density above it by about ``1 + delta``, so
        the importance-sampling ``log Z`` carries an extra error of about
        ``sqrt(sum rbar_se**2)`` (:attr:`log_z_se_rbar`) that its own standard
        error does not see; :func:`numpyro_jko.refine.refit_rbar` shrinks it.
    latent_rounds : int
        Moment-matching rounds adopted for the latent (``JKOConfig.latent_moments``;
        0: the latent as configured).  The chain's ``latent_mean`` and
        ``latent_scale`` are the result.
    latent_beta : float
        Inverse temperature of the tempered latent search where it stopped (1:
        the target's own moments; below 1: no Gaussian fitted the target better,
        and the latent is wider than the target).
    dropped_taus : tuple of float
        Step sizes of trained CNFs that were dropped because they raised the
        ELBO by less than ``JKOConfig.min_cnf_gain`` (``drop_worse_cnf``); their
        training time is in ``train_seconds``.  The plain steps skipped after
        one are not trained and not listed.
    tau0 : float
        First JKO step size used (``JKOConfig.tau0``, or the one chosen from the
        target when that is ``None``).

    Examples
    --------
    >>> import numpy as np
    >>> info = JKOInfo(("C", "R"), (0.05,), (np.array([1.0, 0.5]),), (-2.0, -1.9),
    ...                (0.3,), (0.2,), (1.0, 0.1), 0.5, 1.6, 0)
    >>> info.rejection_rates
    (0.2,)
    """

    layer_kinds: tuple
    taus: tuple
    losses: tuple
    elbo: tuple
    log_c: tuple
    rbar: tuple
    layer_seconds: tuple
    compile_seconds: float
    train_seconds: float
    num_nonfinite: int
    rbar_se: tuple = ()
    latent_rounds: int = 0
    latent_beta: float = 1.0
    dropped_taus: tuple = ()
    tau0: float = float("nan")

    @property
    def rejection_rates(self) -> tuple:
        """Rejection rate of each rejection layer on fresh draws (``= rbar``).

        Examples
        --------
        >>> info = JKOInfo(("R",), (), (), (0.0,), (0.2,), (0.21,), (0.1,), 0.0, 0.1, 0)
        >>> info.rejection_rates
        (0.21,)
        """
        return self.rbar

    @property
    def log_z_se_rbar(self) -> float:
        """First-order error that the fitted ``rbar`` s put on ``log Z``.

        Examples
        --------
        >>> info = JKOInfo(("R", "R"), (), (), (0.0, 0.0), (0.2, 0.2), (0.2, 0.2),
        ...                (0.1, 0.1), 0.0, 0.2, 0, rbar_se=(0.003, 0.004))
        >>> round(info.log_z_se_rbar, 4)
        0.005
        """
        return float(np.sqrt(np.sum(np.square(self.rbar_se))))


_fit_rejection = jax.jit(fit_rejection, static_argnums=1)


def _default_optimizer(config: JKOConfig, num_iterations: int):
    steps = max(num_iterations // 100, 1)
    schedule = optax.exponential_decay(
        config.learning_rate,
        transition_steps=100,
        decay_rate=config.final_lr_fraction ** (1.0 / steps),
        staircase=True,
    )
    return optax.adam(schedule)


def _check_target(logdensity_fn, dim: int, x) -> np.ndarray:
    """Validate ``logdensity_fn`` before any training, with errors naming the culprit."""
    if not callable(logdensity_fn):
        raise TypeError(f"logdensity_fn must be callable, got {type(logdensity_fn)}.")
    try:
        out = jax.eval_shape(logdensity_fn, jax.ShapeDtypeStruct((dim,), x.dtype))
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise ValueError(
            f"logdensity_fn failed on a flat vector of shape ({dim},): {err}"
        ) from err
    if not hasattr(out, "shape") or out.shape != ():
        raise ValueError(
            "logdensity_fn must map a flat vector of shape "
            f"({dim},) to a scalar; it returned shape {getattr(out, 'shape', out)}."
        )
    values = np.asarray(jax.vmap(logdensity_fn)(x))
    finite = np.isfinite(values)
    if not finite.any():
        raise ValueError(
            f"logdensity_fn is not finite at any of {len(values)} initial draws from "
            "the latent N(latent_mean, latent_scale^2 I) (e.g. "
            f"{values[:3].tolist()}); check the target or move the latent "
            "(JKOConfig.latent_mean / latent_scale)."
        )
    if not finite.all():
        warnings.warn(
            f"logdensity_fn is not finite at {int((~finite).sum())} of {len(values)} "
            "initial draws; those particles get no weight in training.",
            RuntimeWarning,
            stacklevel=3,
        )
    return values


def _elbo_after(layer, log_g, energy, weights=None) -> float:
    """``mean(log g - log q)`` of a layer's output law, from draws of its input.

    For a CNF the draws already follow the output law.  For a rejection layer they
    follow the input ``p`` (or are reweighted to it by ``weights``) and the output
    is ``q = p (alpha + rbar)``, so ``E_q[f] = E_p[(alpha + rbar) f]``: the ELBO
    after the layer without new draws.
    """
    log_w = jnp.where(jnp.isfinite(log_g), log_g + energy, jnp.nan)
    if layer is None:
        values = log_w
    else:
        factor = acceptance_probability(log_w, layer.log_c) + layer.rbar
        values = factor * (log_w - jnp.log(factor))
    if weights is None:
        return float(jnp.nanmean(values))
    ok = jnp.isfinite(values)
    w = jnp.where(ok, weights, 0.0)
    return float(jnp.sum(w * jnp.where(ok, values, 0.0)) / jnp.sum(w))


def _fresh_particles(rng_key, chain: JKOChain, config: JKOConfig):
    # N fresh training particles (x, energy, log_g) from the whole chain.
    return tuple(
        jnp.asarray(a)
        for a in draw(rng_key, chain, config.num_particles, config.chunk_size)
    )


def _rejection_fit_draws(rng_key, chain: JKOChain, config: JKOConfig):
    """Fresh draws to fit the next rejection layer on: ``(x, energy, log_g, weights)``.

    ``energy`` is ``-log p`` of the current chain (the next layer's input law) at
    each draw.  Drawing from the whole chain costs ``1.2**k`` solves per draw under
    ``k`` rejection layers, and fitting ``R`` stacked layers that way costs
    ``sum_k 1.2**k`` (40 N for R = 12) solves.  Instead we draw from the chain up to
    its topmost CNF (``p_0``; one solve per draw) and reweight to ``p`` with
    ``w = p / p_0 = prod_j (alpha_j + rbar_j)`` over the rejection layers above
    that CNF: the same law, fitted by self-normalized importance sampling, fresh
    for every layer so that the layers' errors stay independent.  The weights
    average 1 under ``p_0`` and are bounded by ``prod_j (1 + rbar_j)``, so the
    weight ESS is at least ``N / prod_j (1 + rbar_j)`` (``N / 7.4`` under 11
    layers), and near ``N`` once the chain is close to the target.  ``weights`` is
    None when no rejection layer sits above the topmost CNF (plain draws).
    """
    layers = chain.layers
    # The defensive layer moves draws (like a CNF), so it belongs to the base.
    top = max(
        (i + 1 for i, lay in enumerate(layers) if not isinstance(lay, RejectionLayer)),
        default=0,
    )
    if not config.reweight_rejection_fit or top == len(layers):
        return (*_fresh_particles(rng_key, chain, config), None)
    base = chain._replace(layers=layers[:top])
    x, energy_base, log_g = _fresh_particles(rng_key, base, config)
    energy = energy_base
    for layer in layers[top:]:
        energy = energy_update(energy, log_g + energy, layer)
    log_weights = jnp.where(jnp.isfinite(log_g), energy_base - energy, -jnp.inf)
    weights = jnp.exp(log_weights - jnp.max(log_weights))
    return x, energy, log_g, weights


def fit(
    rng_key, logdensity_fn, dim: int, config: JKOConfig = JKOConfig(), progress_bar=True
):
    """Train an importance-corrected neural JKO chain on ``logdensity_fn``.

    Parameters
    ----------
    rng_key : jax.random key
    logdensity_fn : callable
        Unnormalized log density of a flat vector of shape ``(dim,)``.
    dim : int
    config : JKOConfig
    progress_bar : bool or ProgressMeter
        ``True`` shows a tqdm bar with the layer, loss and rejection rate.

    Returns
    -------
    chain : JKOChain
    info : JKOInfo

    Raises
    ------
    ValueError
        If ``logdensity_fn`` does not return a scalar, or is not finite at any
        initial draw -- before any training starts.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> config = JKOConfig(num_particles=512, num_cnf=1, num_blocks=1,
    ...                    num_iterations=20, batch_size=128)
    >>> chain, info = fit(jax.random.key(0), lambda x: -jnp.sum(x**2), 2, config,
    ...                   progress_bar=False)
    >>> info.dropped_taus == (info.tau0,)  # the latent search already fits: no CNF
    True
    >>> chain, info = fit(jax.random.key(0), lambda x: -jnp.sum(x**2), 2,
    ...                   config._replace(min_cnf_gain=0.0), progress_bar=False)
    >>> info.layer_kinds[:2]  # the stack stops early once a layer gains nothing
    ('C', 'R')
    """
    start_time = time.perf_counter()
    dim = int(dim)
    if dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim}.")
    if config.num_particles < config.batch_size:
        raise ValueError(
            f"num_particles ({config.num_particles}) must be >= batch_size "
            f"({config.batch_size})."
        )
    dtype = jnp.result_type(float)
    latent_mean = jnp.zeros(dim, dtype)
    if config.latent_mean is not None:
        latent_mean = jnp.broadcast_to(jnp.asarray(config.latent_mean, dtype), (dim,))
    latent_scale = jnp.asarray(config.latent_scale, dtype)
    if latent_scale.ndim > 1 or latent_scale.size not in (1, dim):
        raise ValueError(
            f"latent_scale must be a scalar or a vector of length dim={dim}, got "
            f"shape {latent_scale.shape}."
        )
    if not bool(jnp.all(latent_scale > 0)):
        raise ValueError(f"latent_scale must be positive, got {config.latent_scale}.")
    if (
        not 0.0 <= config.defensive_weight < 1.0
        or not config.defensive_df > 0
        or not config.defensive_scale > 0
    ):
        raise ValueError(
            "defensive_weight must be in [0, 1), defensive_df and defensive_scale "
            f"positive; got {config.defensive_weight}, {config.defensive_df} and "
            f"{config.defensive_scale}."
        )
    if config.defensive_position not in ("latent", "above_cnfs"):
        raise ValueError(
            "defensive_position must be 'latent' or 'above_cnfs'; got "
            f"{config.defensive_position!r}."
        )
    spec = CNFSpec(
        dim=dim,
        hidden=config.hidden or 2 * dim + 30,
        num_hidden_layers=config.num_hidden_layers,
        solver=config.solver,
        num_steps=config.num_steps,
    )
    train_divergence = config.train_divergence or Hutchinson(1)
    density_divergence = None
    if dim > config.exact_density_max_dim:
        density_divergence = config.density_divergence or Hutchinson(5, per_stage=True)
    chain = JKOChain(
        logdensity_fn=logdensity_fn,
        spec=spec,
        latent_mean=latent_mean,
        latent_scale=latent_scale,
        layers=(),
        density_divergence=density_divergence,
    )

    key_data, key_train = jax.random.split(rng_key)
    # Validate on a few latent draws before compiling anything expensive.
    probe_x = latent_mean + latent_scale * jax.random.normal(key_data, (64, dim))
    _check_target(logdensity_fn, dim, probe_x)
    latent = None
    if config.latent_moments > 0:
        if config.latent_reference_scale > 0:
            search, rounds = tempered_latent_moments, "max_rounds"
            options = {"reference_scale": config.latent_reference_scale}
        else:
            search, rounds, options = match_latent_moments, "num_rounds", {}
        options[rounds] = config.latent_moments
        latent = search(
            jax.random.fold_in(key_data, 1),
            logdensity_fn,
            latent_mean,
            latent_scale,
            num_draws=config.num_particles,
            **options,
        )
        if latent.num_rounds:
            latent_mean, latent_scale = latent.mean, latent.scale
            chain = chain._replace(latent_mean=latent_mean, latent_scale=latent_scale)
    x, energy, log_g = (
        jnp.asarray(a) for a in draw(key_data, chain, config.num_particles)
    )

    tau0 = config.tau0
    if tau0 is None:
        # Before any compile: the rule needs only the latent draws.
        tau0 = jko_step.score_tau(
            logdensity_fn, x, latent_mean, latent_scale, config.tau0_scale
        )
    plan = config.layer_plan()
    num_cnf_total = plan.count("C")
    meter = as_progress_meter(progress_bar)
    total_iterations = sum(config.iterations_of(k) for k in range(num_cnf_total))
    meter.start(total_iterations + plan.count("R") + plan.count("D"), "JKO")

    chunk = config.iterations_per_update
    train_fns: dict[int, Any] = {}
    compile_seconds = 0.0

    def get_train_fn(num_iterations):
        nonlocal compile_seconds
        optimizer = config.optimizer or _default_optimizer(config, num_iterations)
        if num_iterations not in train_fns:
            fn = jko_step.build_train_chunk(
                logdensity_fn,
                spec,
                optimizer,
                train_divergence,
                config.batch_size,
                min(chunk, num_iterations),
            )
            t0 = time.perf_counter()
            state0 = jko_step.init(jax.random.key(0), spec, optimizer)
            compiled = fn.lower(jax.random.key(0), state0, x, energy, 1.0).compile()
            compile_seconds += time.perf_counter() - t0
            train_fns[num_iterations] = (optimizer, compiled)
        return train_fns[num_iterations]

    layers: list = []
    kinds, taus, losses, elbo = [], [], [], []
    log_cs, rbars, rbar_ses, seconds = [], [], [], []
    last_rate = float("nan")
    cnf_index = 0
    dropped = []
    plain_done = False
    defensive_floor = None
    latest_elbo = -np.inf  # the ELBO after the layer fitted last
    # Whether x are the pushed training particles of the CNF below (not fresh).
    in_sample = False
    try:
        for layer_index, kind in enumerate(plan):
            t_layer = time.perf_counter()
            key_layer = jax.random.fold_in(key_train, layer_index)
            at = len(kinds)  # where this layer's records go (the chain's order)
            if kind == "C" and plain_done and cnf_index < config.num_cnf:
                # An earlier plain step stalled (see below): skip the rest.
                meter.update(config.iterations_of(cnf_index), layer="skip")
                cnf_index += 1
                continue
            if kind == "D":
                # The stack above may stop only once it is back where the CNFs
                # left it (see the stop rule below).
                defensive_floor = latest_elbo
                layer = DefensiveLayer(
                    float(config.defensive_weight),
                    float(config.defensive_df),
                    float(config.defensive_scale),
                )
                if config.defensive_position == "latent":
                    # Under the trained CNFs: they are deterministic maps, so the
                    # chain stays exact, and they carry the proposal's tails along
                    # the geometry they learned (see numpyro_jko.defensive).
                    at = 0
                layers.insert(at, layer)
                chain = chain._replace(layers=tuple(layers))
                # The rejection layer above is fitted on these fresh draws.
                x, energy, log_g = _fresh_particles(key_layer, chain, config)
                in_sample = False
                meter.update(1, layer="D", rej=last_rate)
            elif kind == "C":
                num_iterations = config.iterations_of(cnf_index)
                tau = tau0 * config.tau_growth**cnf_index
                optimizer, train_chunk = get_train_fn(num_iterations)
                key_init, key_loop, key_push = jax.random.split(key_layer, 3)
                if plan[layer_index - 1 : layer_index] == ["R"]:
                    # Particles from the chain *with* the rejection layers below.
                    x, energy, log_g = _fresh_particles(key_init, chain, config)
                    in_sample = False
                state = jko_step.init(key_init, spec, optimizer)
                history = []
                num_calls = max(num_iterations // min(chunk, num_iterations), 1)
                for call in range(num_calls):
                    state, step_info = train_chunk(
                        jax.random.fold_in(key_loop, call), state, x, energy, tau
                    )
                    loss_values = np.asarray(step_info.loss)
                    history.append(loss_values)
                    meter.update(
                        len(loss_values),
                        layer=f"C{cnf_index + 1}/{num_cnf_total}",
                        tau=float(tau),
                        loss=float(loss_values[-1]),
                        rej=last_rate,
                    )
                elbo_before = _elbo_after(None, log_g, energy)
                previous = (chain, x, energy, log_g)
                trained_on_pushed = in_sample  # x: the CNF below's training set
                fresh_previous = False  # whether ``previous`` holds fresh draws
                layers.append(CNFLayer(state.params))
                chain = chain._replace(layers=tuple(layers))
                next_is_rejection = plan[layer_index + 1 : layer_index + 2] == ["R"]
                if config.reuse_particles and not next_is_rejection:
                    pushed = _cnf_chunk(
                        key_push,
                        state.params,
                        x,
                        energy,
                        logdensity_fn=logdensity_fn,
                        spec=spec,
                        divergence=density_divergence,
                    )
                    # Through the host: on several devices the push's outputs are
                    # split over them, and the training step was compiled for
                    # particles held whole (it splits only the minibatch).
                    x, energy, log_g = (jnp.asarray(np.asarray(a)) for a in pushed)
                    in_sample = True
                else:
                    # Rejection layers need particles the CNF was not trained on:
                    # the CNF overfits its training set, so log-weights there are
                    # too good and the in-sample rate rbar would be biased low
                    # (measured: 0.2000 in-sample vs 0.2064 on fresh draws), which
                    # biases every density and log Z after the layer.  The next
                    # rejection layer is fitted on these draws.
                    x, energy, log_g = _fresh_particles(key_push, chain, config)
                    in_sample = False
                    if trained_on_pushed:
                        # Judge the step on fresh draws of both chains.  The
                        # particles it was trained on were pushed through the
                        # CNF below, which was trained on them too: their ELBO is
                        # optimistic by that CNF's overfit (measured on GMM-50:
                        # -16.8 in sample, -29 on fresh draws), and against it a
                        # useful step looked like a loss and was dropped.
                        x_b, energy_b, log_g_b = _fresh_particles(
                            jax.random.fold_in(key_push, 1), previous[0], config
                        )
                        elbo_before = _elbo_after(None, log_g_b, energy_b)
                        # Kept: they are what a drop below falls back to.
                        previous = (previous[0], x_b, energy_b, log_g_b)
                        fresh_previous = True
                cnf_index += 1
                elbo_now = _elbo_after(None, log_g, energy)
                gain = elbo_now - elbo_before
                if config.drop_worse_cnf and not gain >= config.min_cnf_gain:
                    # A JKO step minimizes KL + W2^2 / (2 tau), so it can only lower
                    # the KL; a trained step that raised it (a large tau whose
                    # flow the optimizer did not fit: measured on GMM-10, ELBO
                    # -3.57 -> -4.38 at tau 5.12) is a failed step.  One that
                    # gained almost nothing met the limit of what a flow of this
                    # width fits (shifted 8 modes: -0.688 -> -0.688 -> -0.687 over
                    # three more steps); later, larger steps do no better, and each
                    # would make every draw one solve dearer.  Drop it and leave
                    # the rest to the rejection layers.
                    chain, x, energy, log_g = previous
                    layers.pop()
                    dropped.append(float(tau))
                    if cnf_index <= config.num_cnf:
                        plain_done = True
                    if not fresh_previous:
                        # Fresh draws for whatever comes next: the dropped step's
                        # pushed particles are gone, and a rejection layer needs
                        # particles no CNF was trained on (see above).
                        x, energy, log_g = _fresh_particles(key_push, chain, config)
                    in_sample = False
                    continue
                taus.append(float(tau))
                losses.append(np.concatenate(history))
            else:
                # Each rejection layer is fitted on its own N fresh draws.  Reusing
                # one particle set across layers (the reference code's way) makes
                # the layers' Monte Carlo errors in rbar correlated: they then add
                # up coherently instead of averaging out (measured: rbar low by
                # 0.002-0.004 in every one of six layers, log Z off by 0.014 with
                # an IS se of 0.0002).
                if layer_index == 0 or plan[layer_index - 1] in ("C", "D"):
                    # Fresh draws of the whole chain are at hand (the initial
                    # latent draws, or the CNF below drew them): use them.
                    weights = None
                else:
                    x, energy, log_g, weights = _rejection_fit_draws(
                        key_layer, chain, config
                    )
                log_w = log_g + energy
                layer = _fit_rejection(log_w, config.rejection_rate, weights=weights)
                layer = RejectionLayer(*(float(v) for v in layer))
                gain = _elbo_after(layer, log_g, energy, weights) - _elbo_after(
                    None, log_g, energy, weights
                )
                # Over a defensive layer the ELBO is far below the CNFs' at first
                # (its proposal's far draws have log g near -inf) and its
                # estimate is noisy until the layers have thinned them out: a
                # small or negative gain then says nothing about the fit.
                recovered = defensive_floor is None or latest_elbo >= defensive_floor
                if (
                    gain < config.min_elbo_gain
                    and rbars
                    and recovered
                    and all(k == "R" for k in plan[layer_index:])
                ):
                    # The chain already matches the target up to a constant: this
                    # layer would reject uniformly (a no-op in law) yet make every
                    # draw 1 + rate times dearer.  Stop the stack here.
                    meter.update(len(plan) - layer_index, layer="done", rej=last_rate)
                    break
                layers.append(layer)
                chain = chain._replace(layers=tuple(layers))
                log_cs.append(float(layer.log_c))
                rbars.append(float(layer.rbar))
                rbar_ses.append(float(layer.rbar_se))
                last_rate = float(layer.rbar)
                meter.update(
                    1, layer=f"R{len(rbars)}", log_c=float(layer.log_c), rej=last_rate
                )
            # Per-layer records follow the chain's order, bottom first: a
            # defensive layer in the latent goes under the CNFs trained before it.
            kinds.insert(at, kind)
            if kind == "R":
                elbo.insert(at, _elbo_after(layer, log_g, energy, weights))
            else:
                elbo.insert(at, _elbo_after(None, log_g, energy))
            latest_elbo = elbo[at]
            seconds.insert(at, time.perf_counter() - t_layer)
    finally:
        meter.close()

    num_nonfinite = int(jnp.sum(~jnp.isfinite(log_g)))
    info = JKOInfo(
        layer_kinds=tuple(kinds),
        taus=tuple(taus),
        losses=tuple(losses),
        elbo=tuple(elbo),
        log_c=tuple(log_cs),
        rbar=tuple(rbars),
        layer_seconds=tuple(seconds),
        compile_seconds=compile_seconds,
        train_seconds=time.perf_counter() - start_time,
        num_nonfinite=num_nonfinite,
        rbar_se=tuple(rbar_ses),
        latent_rounds=latent.num_rounds if latent is not None else 0,
        latent_beta=float(latent.beta) if latent is not None else 1.0,
        dropped_taus=tuple(dropped),
        tau0=float(tau0),
    )
    return chain, info


# Re-exported so that ``jko.sample`` / ``jko.log_prob`` sit beside ``jko.fit``.
sample = sample
log_prob = log_prob
eval_logdensity = eval_logdensity
draw = draw
