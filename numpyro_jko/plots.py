"""Plots of what the samplers did: training histories, layer-by-layer draws, acceptance.

* :func:`plot_training` -- the training record of a JKO chain
  (:class:`~numpyro_jko.jko.JKOInfo`): CNF losses, ELBO (or KL) after every layer,
  rejection rate and ``log c`` of every rejection layer, and where the time went;
* :func:`plot_layers` -- draws of a 2-D chain after each layer: how the CNFs move
  mass toward the modes and the rejection layers fix the mode weights;
* :func:`plot_acceptance` -- local (MALA) and global acceptance traces of a
  :class:`~numpyro_jko.flow_mala.FlowMALA` run.

Pair, trace and posterior plots belong to ArviZ: pass
:meth:`~numpyro_jko.infer.JKOSampler.to_inference_data` or ``az.from_numpyro(mcmc)``
to :func:`arviz.plot_pair`, :func:`arviz.plot_trace` and friends.

matplotlib is only imported when a plot is made (``pip install "numpyro-jko[plots]"``),
so the package works without it.  Every function returns the
:class:`matplotlib.figure.Figure` and draws nothing on screen by itself.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["plot_training", "plot_layers", "plot_acceptance", "layer_labels"]

_CNF_COLOR = "tab:blue"
_REJECTION_COLOR = "tab:orange"
_DEFENSIVE_COLOR = "0.35"


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "numpyro_jko.plots needs matplotlib: pip install matplotlib "
            '(or pip install "numpyro-jko[plots]").'
        ) from err
    return plt


def layer_labels(layer_kinds) -> list[str]:
    """Names of the layers, bottom first: ``C1, C2, ..., R1, R2, ...``.

    Parameters
    ----------
    layer_kinds : sequence of str
        ``"C"`` (CNF), ``"D"`` (defensive mixture) or ``"R"`` (rejection) per
        layer, e.g.
        :attr:`JKOInfo.layer_kinds <numpyro_jko.jko.JKOInfo>` or
        ``"".join(config.layer_plan())``.

    Returns
    -------
    list of str

    Examples
    --------
    >>> layer_labels("CCRRR")
    ['C1', 'C2', 'R1', 'R2', 'R3']
    """
    counts = {"C": 0, "R": 0, "D": 0}
    labels = []
    for kind in layer_kinds:
        counts[kind] += 1
        labels.append(f"{kind}{counts[kind]}")
    return labels


def _unwrap_training(obj, log_Z):
    """``(JKOInfo, log_Z)`` from a JKOInfo, a JKOSampler or a trained NeuralJKO."""
    info = obj
    if not hasattr(obj, "layer_kinds"):
        info = getattr(obj, "info", None)
        if info is None or not hasattr(info, "layer_kinds"):
            raise TypeError(
                "plot_training needs the JKOInfo of a fit (jko.fit returns "
                "(chain, info)) or a trained JKOSampler / NeuralJKO; got "
                f"{type(obj).__name__}."
            )
        if log_Z is None and callable(getattr(obj, "diagnostics", None)):
            value = obj.diagnostics().get("log_Z", math.nan)
            log_Z = None if not np.isfinite(value) else float(value)
    return info, log_Z


def plot_training(info, *, log_Z=None, target_rate=None, figsize=(12, 6.5)):
    """The training history of a JKO chain, one panel per quantity.

    Panels: the loss of every CNF per Adam iteration (CNFs side by side); the ELBO
    of the training particles after every layer (with ``log_Z``: the KL estimate
    ``log Z - ELBO`` instead, on a log scale; the ELBO of fresh draws, from
    :meth:`~numpyro_jko.infer.JKOSampler.log_evidence`, is the one to quote); the rejection rate ``rbar`` and the constant ``log c`` of every
    rejection layer; wall time per layer; a text summary.

    Parameters
    ----------
    info : JKOInfo, JKOSampler or NeuralJKO
        The second value returned by :func:`numpyro_jko.jko.fit`, or a trained
        sampler (its ``info``, and ``log_Z`` from its diagnostics).
    log_Z : float, optional
        The target's log normalizer (exact, or an estimate such as
        ``sampler.log_evidence().log_Z``): turns the ELBO panel into
        ``KL(q || posterior) ~ log Z - ELBO``.
    target_rate : float, optional
        ``JKOConfig.rejection_rate``, drawn as a reference line.
    figsize : tuple of float

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko import jko
    >>> config = jko.JKOConfig(num_particles=512, num_cnf=1, num_blocks=1,
    ...                        num_iterations=20, batch_size=128)
    >>> chain, info = jko.fit(jax.random.key(0), lambda x: -jnp.sum(x**2), 2,
    ...                       config, progress_bar=False)
    >>> fig = plot_training(info, log_Z=float(jnp.log(jnp.pi)), target_rate=0.2)
    >>> [ax.get_title() for ax in fig.axes][:3]
    ['CNF training loss', 'KL(q || target) ~ log Z - ELBO', 'rejection rate']
    """
    plt = _pyplot()
    info, log_Z = _unwrap_training(info, log_Z)
    kinds = tuple(info.layer_kinds)
    labels = layer_labels(kinds)
    fig, axes = plt.subplots(2, 3, figsize=figsize, layout="constrained")
    ax_loss, ax_elbo, ax_rate, ax_c, ax_time, ax_text = axes.ravel()

    # CNF losses side by side on one iteration axis: the losses of different CNFs
    # (different tau) are not comparable, but where each one flattens out is.
    start = 0
    for k, loss in enumerate(info.losses):
        loss = np.asarray(loss, dtype=float)
        steps = start + np.arange(len(loss))
        tau = info.taus[k] if k < len(info.taus) else math.nan
        ax_loss.plot(steps, loss, lw=1, label=f"C{k + 1} (tau {tau:.3g})")
        if k:
            ax_loss.axvline(start, color="0.8", lw=0.8, zorder=0)
        start += len(loss)
    ax_loss.set_title("CNF training loss")
    ax_loss.set_xlabel("Adam iteration (CNFs one after another)")
    ax_loss.set_ylabel("JKO loss")
    if info.losses:
        ax_loss.legend(fontsize="small")
    else:
        ax_loss.text(
            0.5, 0.5, "no CNF layers", ha="center", transform=ax_loss.transAxes
        )

    x = np.arange(len(kinds))
    elbo = np.asarray(info.elbo, dtype=float)
    palette = {"C": _CNF_COLOR, "D": _DEFENSIVE_COLOR}
    colors = [palette.get(kind, _REJECTION_COLOR) for kind in kinds]
    if log_Z is not None:
        kl = float(log_Z) - elbo
        # A KL estimate can dip below 0 by Monte Carlo error; clip for the log axis.
        shown = np.clip(kl, 1e-5, None)
        ax_elbo.plot(x, shown, color="0.6", lw=1, zorder=1)
        ax_elbo.scatter(x, shown, c=colors, zorder=2, s=25)
        ax_elbo.set_yscale("log")
        ax_elbo.set_title("KL(q || target) ~ log Z - ELBO")
        ax_elbo.set_ylabel("nats (log scale)")
    else:
        ax_elbo.plot(x, elbo, color="0.6", lw=1, zorder=1)
        ax_elbo.scatter(x, elbo, c=colors, zorder=2, s=25)
        ax_elbo.set_title("ELBO after each layer (rises to log Z)")
        ax_elbo.set_ylabel("ELBO")
    _layer_axis(ax_elbo, labels)
    ax_elbo.scatter([], [], color=_CNF_COLOR, label="CNF")
    ax_elbo.scatter([], [], color=_REJECTION_COLOR, label="rejection")
    if "D" in kinds:
        ax_elbo.scatter([], [], color=_DEFENSIVE_COLOR, label="defensive")
    ax_elbo.legend(fontsize="small")

    rej_labels = [lab for lab in labels if lab.startswith("R")]
    rbar = np.asarray(info.rbar, dtype=float)
    log_c = np.asarray(info.log_c, dtype=float)
    if len(rej_labels):
        ax_rate.bar(np.arange(len(rbar)), rbar, color=_REJECTION_COLOR)
        if target_rate is not None:
            ax_rate.axhline(
                target_rate, color="k", ls="--", lw=1, label=f"target {target_rate:g}"
            )
            ax_rate.legend(fontsize="small", loc="upper right")
        top = max(float(np.nanmax(rbar)) if len(rbar) else 0.0, target_rate or 0.0)
        ax_rate.set_ylim(0.0, 1.35 * top if top > 0 else 1.0)  # room for the legend
        ax_c.plot(np.arange(len(log_c)), log_c, "o-", color=_REJECTION_COLOR)
        _layer_axis(ax_rate, rej_labels)
        _layer_axis(ax_c, rej_labels)
    else:
        for ax in (ax_rate, ax_c):
            ax.text(
                0.5, 0.5, "no rejection layers", ha="center", transform=ax.transAxes
            )
    ax_rate.set_title("rejection rate")
    ax_rate.set_ylabel("rbar (fraction rejected)")
    ax_c.set_title("log c per rejection layer (settles when done)")
    ax_c.set_ylabel("log c")

    seconds = np.asarray(info.layer_seconds, dtype=float)
    ax_time.bar(x, seconds, color=colors)
    if "C" in kinds and info.compile_seconds > 0:
        # Compiling the training step happens inside the first CNF's time: show how
        # much of that bar it is, or the first CNF looks slow for no reason.
        first = kinds.index("C")
        ax_time.bar(
            first,
            min(info.compile_seconds, seconds[first]),
            color="none",
            edgecolor="k",
            hatch="//",
            lw=0.5,
            label=f"compiling ({info.compile_seconds:.1f} s)",
        )
        ax_time.legend(fontsize="small")
    _layer_axis(ax_time, labels)
    ax_time.set_title("wall time per layer")
    ax_time.set_ylabel("seconds")

    ax_text.axis("off")
    lines = [
        f"layers: {''.join(kinds)}",
        f"CNFs: {kinds.count('C')}, rejection layers: {kinds.count('R')}",
        f"training: {info.train_seconds:.1f} s",
        f"  of which compiling: {info.compile_seconds:.1f} s",
        f"final ELBO: {elbo[-1]:.4f}" if len(elbo) else "final ELBO: -",
    ]
    if log_Z is not None and len(elbo):
        lines.append(f"log Z: {float(log_Z):.4f}  (KL ~ {float(log_Z) - elbo[-1]:.2g})")
    if info.num_nonfinite:
        lines.append(f"non-finite training particles: {info.num_nonfinite}")
    ax_text.text(
        0.02, 0.95, "\n".join(lines), va="top", family="monospace", fontsize=10
    )
    return fig


def _layer_axis(ax, labels):
    ax.set_xticks(np.arange(len(labels)))
    # Long chains would print unreadable tick labels; thin them out.
    step = max(1, math.ceil(len(labels) / 12))
    ax.set_xticklabels(
        [lab if i % step == 0 else "" for i, lab in enumerate(labels)],
        rotation=0,
        fontsize="small",
    )
    ax.set_xlabel("layer (bottom first)")


def _truncated_draws(rng_key, chain, depth, num_samples):
    from numpyro_jko.chain import draw

    truncated = chain._replace(layers=tuple(chain.layers[:depth]))
    x, _, _ = draw(rng_key, truncated, num_samples)
    return np.asarray(x)


def plot_layers(
    rng_key,
    chain,
    num_samples=5000,
    *,
    layers=None,
    reference=None,
    dims=(0, 1),
    extent=None,
    bins=None,
    ncols=None,
    panel_size=2.4,
):
    """Draws of a chain after each of its layers, as 2-D histograms.

    Panel ``k`` shows draws of the chain truncated to its first ``k`` layers
    (``chain._replace(layers=chain.layers[:k])``): the latent, then what each CNF
    and each rejection layer made of it -- the paper's figure, for teaching and
    for seeing which layer moved what.

    Parameters
    ----------
    rng_key : jax.random key
    chain : JKOChain
        A trained chain (``jko.fit(...)[0]`` or ``sampler.chain``).
    num_samples : int
        Draws per panel.
    layers : sequence of int, optional
        Depths to show, ``0`` (the latent) to ``len(chain.layers)``; default all.
    reference : array, shape (n, d), optional
        Exact (or NUTS) draws of the target, shown in a last panel "reference".
    dims : tuple of int
        The two coordinates to show (for ``d > 2``, a projection).
    extent : (xmin, xmax, ymin, ymax), optional
        Shared axis limits; default: the 0.5-99.5 % range of the deepest
        panel's draws (and of ``reference``), padded by 10 %.
    bins : int, optional
        Histogram bins per axis (default: ``2 sqrt(num_samples)``, 30 to 150).
    ncols : int, optional
        Panels per row (default: up to 6).
    panel_size : float
        Inches per panel.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_jko import jko
    >>> config = jko.JKOConfig(num_particles=512, num_cnf=1, num_blocks=1,
    ...                        num_iterations=20, batch_size=128, min_cnf_gain=0.0,
    ...                        min_elbo_gain=0.0)  # keep every layer, to show them
    >>> chain, _ = jko.fit(jax.random.key(0), lambda x: -jnp.sum(x**2), 2, config,
    ...                    progress_bar=False)
    >>> fig = plot_layers(jax.random.key(1), chain, 1000)
    >>> [ax.get_title() for ax in fig.axes if ax.get_visible()]
    ['latent', 'after C1', 'after R1', 'after R2', 'after R3']
    """
    import jax

    plt = _pyplot()
    depths = list(range(len(chain.layers) + 1)) if layers is None else list(layers)
    for depth in depths:
        if not 0 <= int(depth) <= len(chain.layers):
            raise ValueError(
                f"layer depth {depth} out of range 0..{len(chain.layers)} for a "
                f"chain of {len(chain.layers)} layers."
            )
    i, j = dims
    if chain.dim < 2 or max(i, j) >= chain.dim:
        raise ValueError(f"dims={dims} do not fit a chain of dimension {chain.dim}.")
    from numpyro_jko.chain import layer_kind

    kinds = [layer_kind(layer) for layer in chain.layers]
    labels = ["latent"] + [f"after {lab}" for lab in layer_labels(kinds)]
    draws = [
        _truncated_draws(jax.random.fold_in(rng_key, depth), chain, depth, num_samples)
        for depth in depths
    ]
    titles = [labels[d] for d in depths]
    if reference is not None:
        draws.append(np.asarray(reference))
        titles.append("reference")
    if extent is None:
        pool = [draws[int(np.argmax(depths))]]
        if reference is not None:
            pool.append(draws[-1])
        pts = np.concatenate([p[:, [i, j]] for p in pool])
        pts = pts[np.all(np.isfinite(pts), axis=1)]
        lo, hi = np.quantile(pts, 0.005, axis=0), np.quantile(pts, 0.995, axis=0)
        pad = 0.1 * (hi - lo) + 1e-6
        extent = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    if bins is None:
        bins = int(np.clip(2 * math.sqrt(num_samples), 30, 150))
    n = len(draws)
    ncols = min(n, 6) if ncols is None else int(ncols)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(panel_size * ncols, panel_size * nrows + 0.3),
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    from matplotlib.colors import LogNorm

    for ax, x, title in zip(axes.ravel(), draws, titles, strict=False):
        # Log colours: a bin with one draw stays visible next to a crowded mode.
        ax.hist2d(
            x[:, i],
            x[:, j],
            bins=bins,
            range=[extent[:2], extent[2:]],
            cmap="viridis",
            norm=LogNorm(),
            cmin=1,
        )
        ax.set_title(title, fontsize="medium")
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])
        ax.tick_params(labelsize="x-small")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.suptitle(f"{num_samples} draws after each layer (x{i} vs x{j})")
    return fig


def _fields_of(mcmc_or_fields):
    if isinstance(mcmc_or_fields, dict):
        return mcmc_or_fields
    return mcmc_or_fields.get_extra_fields(group_by_chain=True)


def plot_acceptance(
    mcmc_or_fields,
    *,
    warmup=None,
    target_accept_prob=0.574,
    window=None,
    figsize=(11, 3.6),
):
    """Local (MALA) and global acceptance of a :class:`~numpyro_jko.flow_mala.FlowMALA` run.

    Left: the MALA acceptance per iteration (a moving average over ``window``
    iterations), mean over walkers with the 10-90 % band across walkers, and the
    target acceptance.  Right: the
    acceptance of the global (flow) moves, per iteration with a global move,
    and its running mean.  With ``warmup``, the warmup traces come first and a
    line marks where the step size and the proposal were frozen.

    Parameters
    ----------
    mcmc_or_fields : numpyro.infer.MCMC or dict
        An ``MCMC`` run with ``extra_fields=("accept_prob", "global_accept_prob")``,
        or its ``get_extra_fields(group_by_chain=True)`` (arrays of shape
        ``(num_walkers, num_iterations)``).
    warmup : dict, optional
        The same fields from the warmup phase: ``mcmc.warmup(key,
        collect_warmup=True, extra_fields=(...))`` then
        ``mcmc.get_extra_fields(group_by_chain=True)``, taken before ``mcmc.run``.
    target_accept_prob : float or None
        Reference line of the local panel (``FlowMALA``'s default 0.574).
    window : int, optional
        Width of the moving average of the traces (default: about 1/50 of the
        iterations, at least 1).
    figsize : tuple of float

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> fields = {"accept_prob": rng.uniform(0.4, 0.7, (8, 100)),
    ...           "global_accept_prob": rng.uniform(0.0, 0.5, (8, 100))}
    >>> fig = plot_acceptance(fields)
    >>> [ax.get_title() for ax in fig.axes]
    ['local (MALA) acceptance', 'global (flow) acceptance']
    """
    plt = _pyplot()
    phases = [("sampling", _fields_of(mcmc_or_fields))]
    if warmup is not None:
        phases.insert(0, ("warmup", _fields_of(warmup)))
    for name, fields in phases:
        if "accept_prob" not in fields:
            raise KeyError(
                f"no 'accept_prob' in the {name} fields: run MCMC with "
                'extra_fields=("accept_prob", "global_accept_prob").'
            )

    def stack(key):
        parts = []
        for _, fields in phases:
            a = fields.get(key)
            if a is None:
                return None
            a = np.asarray(a, dtype=float)
            parts.append(a.reshape(1, -1) if a.ndim == 1 else a)
        return np.concatenate(parts, axis=1)

    local = stack("accept_prob")
    lengths = [np.asarray(f["accept_prob"]).shape[-1] for _, f in phases]
    edges = np.cumsum([0] + lengths)
    bounds = list(zip(edges[:-1], edges[1:], strict=True))
    global_ = stack("global_accept_prob")
    num_iter = local.shape[1]
    it = np.arange(num_iter)
    w = max(1, num_iter // 50) if window is None else int(window)
    fig, (ax_l, ax_g) = plt.subplots(1, 2, figsize=figsize, layout="constrained")

    mean = np.nanmean(local, axis=0)
    # One iteration's acceptance of one walker is nearly 0 or 1; the band is over
    # the walkers' moving averages, where a stuck walker shows.
    smooth = np.stack([_moving_average(row, w) for row in local])
    lo, hi = np.nanquantile(smooth, [0.1, 0.9], axis=0)
    ax_l.fill_between(
        it, lo, hi, color="tab:blue", alpha=0.2, lw=0, label="10-90% of walkers"
    )
    ax_l.plot(it, _moving_average(mean, w), color="tab:blue", lw=1.2, label="mean")
    if target_accept_prob is not None:
        ax_l.axhline(target_accept_prob, color="k", ls="--", lw=1, label="target")
    ax_l.set_title("local (MALA) acceptance")

    if global_ is not None and np.any(np.isfinite(global_)):
        # Iterations without a global move are NaN for every walker; average by
        # hand so that they stay NaN without an empty-slice warning.
        finite = np.isfinite(global_)
        count = finite.sum(axis=0)
        has = count > 0
        g_mean = np.where(finite, global_, 0.0).sum(axis=0) / np.maximum(count, 1)
        ax_g.plot(
            it[has],
            g_mean[has],
            ".",
            ms=2,
            color="tab:orange",
            alpha=0.5,
            label="mean over walkers",
        )
        # The running mean restarts when the kernel freezes, as its own does.
        for k, (start, stop) in enumerate(bounds):
            seg, ok = g_mean[start:stop], has[start:stop]
            running = np.cumsum(np.where(ok, seg, 0.0)) / np.maximum(np.cumsum(ok), 1)
            running[np.cumsum(ok) == 0] = np.nan
            ax_g.plot(
                it[start:stop],
                running,
                color="tab:red",
                lw=1.2,
                label="running mean" if k == 0 else None,
            )
        ax_g.legend(fontsize="small")
    else:
        ax_g.text(
            0.5, 0.5, "no global moves recorded", ha="center", transform=ax_g.transAxes
        )
    ax_g.set_title("global (flow) acceptance")
    for ax in (ax_l, ax_g):
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("iteration")
        ax.set_ylabel("acceptance probability")
        if warmup is not None:
            end = lengths[0]
            ax.axvline(end, color="0.4", lw=1, ls=":")
            ax.text(end, 1.0, " frozen", va="top", fontsize="small", color="0.3")
    ax_l.legend(fontsize="small", loc="lower right")
    return fig


def _moving_average(values, window):
    if window <= 1:
        return values
    kernel = np.ones(window) / window
    padded = np.pad(values, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")
