"""The Joker's 4-point data set: brute-force prior importance sampling vs JKO, NUTS, FlowMALA.

    taskset -c 1 python benchmarks/joker_reference.py [--draws 10000000]

The 1-planet posterior of ``joker_sparse4`` (4 velocities over 125 days, periods
log-uniform on 2-4096 d) has many separated period modes.  The reference is
importance sampling from the prior, written here in float64 NumPy with its own
Kepler solver (nothing shared with :mod:`numpyro_jko.models.rv` but the prior's
constants): ``--draws`` prior draws in chunks, the offset integrated out
analytically, weights = marginal likelihood.  Its log P histogram defines the
period modes (segments between density minima); the table compares the mass of
each mode under

* the reference (with its Monte Carlo standard error),
* ``JKOSampler`` (the example's prior-latent fit), unweighted draws and
  importance-weighted draws,
* NUTS, 4 chains (pooled, and the spread over chains),
* ``FlowMALA`` (``--flow-walkers`` walkers, MALA moves plus independent moves
  from a RealNVP flow trained on the walkers during warmup, frozen after it),

and saves it to ``benchmarks/results/rv_joker_reference.md``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import numpy as np
from numpyro.infer import MCMC, NUTS

from numpyro_jko import FlowMALA

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

import exoplanet_rv as ex  # noqa: E402

NAME = "joker_sparse4"


# ----------------------------------------------------------------------------------
# Reference: prior draws, analytic offset, float64 NumPy


def kepler_newton(M, e, num_iter=40):
    """Eccentric anomaly by safeguarded Newton iterations (float64 NumPy).

    Starts at ``E = pi`` for ``e > 0.8`` (where ``M + e sin M`` can overshoot)
    and keeps ``E`` inside ``[0, 2 pi]`` for ``M`` reduced to ``[0, 2 pi)``.

    Examples
    --------
    >>> M, e = np.linspace(0.0, 6.2, 7), np.full(7, 0.95)
    >>> E = kepler_newton(M, e)
    >>> bool(np.max(np.abs(E - e * np.sin(E) - M)) < 1e-12)
    True
    """
    M = np.mod(M, 2 * np.pi)
    E = np.where(e > 0.8, np.pi, M + e * np.sin(M))
    for _ in range(num_iter):
        f = E - e * np.sin(E) - M
        E = np.clip(E - f / (1.0 - e * np.cos(E)), 0.0, 2 * np.pi)
    return E


def prior_draws(rng, n, model):
    """``n`` prior draws of the 1-planet model's physical parameters."""
    lo, hi = np.log(model.period_bounds)
    k_lo, k_hi = np.log(model.K_bounds)
    e_max = 0.99
    return {
        "log_P": rng.uniform(lo, hi, n),
        # e = e_max (1 - exp(-chi2_2 / 2)) is uniform on (0, e_max).
        "e": rng.uniform(0.0, e_max, n),
        "omega": rng.uniform(-np.pi, np.pi, n),
        # Mean longitude uniform and independent of omega: so is M0 = lambda - omega.
        "M0": rng.uniform(-np.pi, np.pi, n),
        "log_K": rng.uniform(k_lo, k_hi, n),
        "log_jitter": rng.normal(model.jitter_log_loc[0], model.jitter_log_scale, n),
    }


def log_marginal_likelihood(draws, data, model):
    """Log likelihood with the offset's Normal prior integrated out, per draw."""
    dt = data.t - model.t_ref
    P = np.exp(draws["log_P"])[:, None]
    e = draws["e"][:, None]
    omega = draws["omega"][:, None]
    M = 2 * np.pi * dt[None, :] / P + draws["M0"][:, None]
    E = kepler_newton(M, e)
    f = 2 * np.arctan2(np.sqrt(1 + e) * np.sin(E / 2), np.sqrt(1 - e) * np.cos(E / 2))
    v = np.exp(draws["log_K"])[:, None] * (np.cos(f + omega) + e * np.cos(omega))
    var = data.rv_err[None, :] ** 2 + np.exp(2 * draws["log_jitter"])[:, None]
    r = data.rv[None, :] - model.offset_loc[0] - v
    w = 1.0 / var
    s2 = model.offset_scale**2
    A = w.sum(1) + 1.0 / s2
    quad = (w * r**2).sum(1) - (w * r).sum(1) ** 2 / A
    return -0.5 * (quad + np.log(2 * np.pi * var).sum(1) + np.log(s2 * A))


def reference(num_draws, data, model, seed=0, chunk=1_000_000, keep=200_000):
    """Weighted log P histogram, log Z and a weighted resample of the prior draws."""
    rng = np.random.default_rng(seed)
    lo, hi = np.log(model.period_bounds)
    edges = np.linspace(lo, hi, 2049)
    hist_w = np.zeros(len(edges) - 1)
    log_ws, kept_logp = [], []
    m_run = -np.inf
    for start in range(0, num_draws, chunk):
        n = min(chunk, num_draws - start)
        draws = prior_draws(rng, n, model)
        log_w = log_marginal_likelihood(draws, data, model)
        log_ws.append(log_w.astype(np.float64))
        kept_logp.append(draws["log_P"])
        m_run = max(m_run, log_w.max())
    log_w = np.concatenate(log_ws)
    logp = np.concatenate(kept_logp)
    m = log_w.max()
    w = np.exp(log_w - m)
    log_z = m + np.log(w.mean())
    # se of log Z by the delta method on i.i.d. weights
    log_z_se = w.std() / (w.mean() * np.sqrt(len(w)))
    ess = w.sum() ** 2 / (w**2).sum()
    hist_w, _ = np.histogram(logp, bins=edges, weights=w)
    idx = rng.choice(len(w), keep, p=w / w.sum())
    return {
        "edges": edges,
        "hist": hist_w / w.sum(),
        "log_Z": log_z,
        "log_Z_se": log_z_se,
        "ess": ess,
        "logp": logp,
        "w": w / w.sum(),
        "resample": logp[idx],
    }


def mode_segments(edges, hist, min_mass=0.005, smooth=3):
    """Boundaries (in log P) of the period modes: cut at density minima.

    The histogram is smoothed by a running mean of ``smooth`` bins; a cut is made
    at every local minimum, then neighbouring segments are merged until each holds
    at least ``min_mass``.
    """
    kernel = np.ones(smooth) / smooth
    h = np.convolve(hist, kernel, mode="same")
    minima = np.flatnonzero((h[1:-1] < h[:-2]) & (h[1:-1] <= h[2:])) + 1
    cuts = [0, *minima.tolist(), len(h)]
    segs = [[a, b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    mass = lambda s: hist[s[0] : s[1]].sum()
    while len(segs) > 1:
        masses = np.array([mass(s) for s in segs])
        i = int(np.argmin(masses))
        if masses[i] >= min_mass:
            break
        # merge the lightest segment into its lighter neighbour (the valley)
        if i == 0:
            j = 1
        elif i == len(segs) - 1:
            j = i - 1
        else:
            j = i - 1 if masses[i - 1] < masses[i + 1] else i + 1
        a, b = min(i, j), max(i, j)
        segs[a] = [segs[a][0], segs[b][1]]
        del segs[b]
    return [(edges[a], edges[b]) for a, b in segs]


def masses(logp, segments, w=None):
    logp = np.asarray(logp).ravel()
    w = np.full(len(logp), 1.0 / len(logp)) if w is None else np.asarray(w).ravel()
    return np.array([w[(logp >= a) & (logp < b)].sum() for a, b in segments])


def cached_reference(args, data, model):
    """The reference's mode table, from ``args.cache`` when it matches ``--draws``/``--seed``.

    Returns ``(ref, segments, m_ref, se_ref, seconds)``; ``ref`` holds ``edges``,
    ``hist``, ``log_Z``, ``log_Z_se`` and ``ess``.  ``seconds`` is the time the
    (possibly cached) reference took to compute.
    """
    cache = args.cache
    if cache is not None and cache.is_file():
        c = np.load(cache)
        if int(c["draws"]) == args.draws and int(c["seed"]) == args.seed:
            ref = {k: c[k] for k in ("edges", "hist")}
            ref.update({k: float(c[k]) for k in ("log_Z", "log_Z_se", "ess")})
            segments = [tuple(s) for s in c["segments"]]
            return ref, segments, c["m_ref"], c["se_ref"], float(c["seconds"])
    t0 = time.perf_counter()
    ref = reference(args.draws, data, model, seed=args.seed)
    t_ref = time.perf_counter() - t0
    segments = mode_segments(ref["edges"], ref["hist"])
    m_ref = masses(ref["logp"], segments, ref["w"])
    # Monte Carlo se of each mode mass (self-normalized IS, delta method)
    w = ref["w"]
    se_ref = np.array(
        [
            np.sqrt(np.sum(w**2 * (((ref["logp"] >= a) & (ref["logp"] < b)) - mk) ** 2))
            for (a, b), mk in zip(segments, m_ref, strict=True)
        ]
    )
    del ref["logp"], ref["w"], ref["resample"]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache,
            draws=args.draws,
            seed=args.seed,
            seconds=t_ref,
            segments=np.asarray(segments),
            m_ref=m_ref,
            se_ref=se_ref,
            **ref,
        )
    return ref, segments, m_ref, se_ref, t_ref


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=10_000_000)
    parser.add_argument("--nuts-warmup", type=int, default=1000)
    parser.add_argument("--nuts-samples", type=int, default=1000)
    parser.add_argument("--flow-walkers", type=int, default=256)
    parser.add_argument("--flow-warmup", type=int, default=1000)
    parser.add_argument("--flow-samples", type=int, default=200)
    parser.add_argument(
        "--out", type=pathlib.Path, default=HERE / "results" / "rv_joker_reference.md"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache",
        type=pathlib.Path,
        default=HERE / "results" / "rv_joker_reference_cache.npz",
        help="reuse (or write) the reference's mode table here; '' recomputes",
    )
    args = parser.parse_args(argv)
    if args.cache is not None and str(args.cache) in ("", "."):
        args.cache = None

    problem = ex.PROBLEMS[NAME]
    data = ex.load_rv_dataset(NAME)
    model = ex.build_model(data, problem, 1)

    ref, segments, m_ref, se_ref, t_ref = cached_reference(args, data, model)
    print(
        f"reference: {args.draws:.1e} prior draws in {t_ref:.0f} s, weight ESS {ref['ess']:.0f}, log Z = {ref['log_Z']:.4f} ± {ref['log_Z_se']:.4f}"
    )

    t0 = time.perf_counter()
    f = ex.fit(problem, data, 1, jax.random.key(args.seed))
    samples, w_ours = ex.weighted_draws(f, jax.random.key(args.seed + 1), 65_536)
    t_ours = time.perf_counter() - t0
    logp_ours = np.log(samples["P"][:, 0])
    m_ours = masses(logp_ours, segments)
    m_ours_w = masses(logp_ours, segments, w_ours)

    t0 = time.perf_counter()
    mcmc = MCMC(
        NUTS(model),
        num_warmup=args.nuts_warmup,
        num_samples=args.nuts_samples,
        num_chains=4,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(args.seed + 2))
    t_nuts = time.perf_counter() - t0
    logp_nuts = np.asarray(mcmc.get_samples(group_by_chain=True)["log_P"])[..., 0]
    m_nuts = masses(logp_nuts, segments)
    m_chain = np.stack([masses(c, segments) for c in logp_nuts])

    t0 = time.perf_counter()
    kernel = FlowMALA(model)
    flow = MCMC(
        kernel,
        num_warmup=args.flow_warmup,
        num_samples=args.flow_samples,
        num_chains=args.flow_walkers,
        chain_method="vectorized",
        progress_bar=False,
    )
    flow.run(jax.random.key(args.seed + 3), extra_fields=("global_accept_prob",))
    flow_z = kernel.log_evidence(num_samples=20_000)
    t_flow = time.perf_counter() - t0
    logp_flow = np.asarray(flow.get_samples()["log_P"])[..., 0]
    m_flow = masses(logp_flow, segments)
    flow_accept = float(np.mean(flow.get_extra_fields()["global_accept_prob"]))

    order = np.argsort(-m_ref)
    lines = [
        "Command: `taskset -c 1 python benchmarks/joker_reference.py` (one CPU core; "
        "the reference's table is cached in `rv_joker_reference_cache.npz`).",
        "",
        f"Reference: {args.draws:.0e} prior draws, weight ESS {ref['ess']:.0f}, "
        f"log Z = {ref['log_Z']:.4f} ± {ref['log_Z_se']:.4f}, {t_ref:.0f} s.  "
        f"JKOSampler: log Z = {f.log_Z:.4f} ± {f.log_Z_se:.4f} (ESS {f.ess:.0f}/{f.num_draws}, "
        f"k-hat {f.pareto_k:.2f}), fit + 65536 draws {t_ours:.0f} s.  "
        f"NUTS: 4 chains x ({args.nuts_warmup} warmup + {args.nuts_samples}), {t_nuts:.0f} s.  "
        f"FlowMALA: {args.flow_walkers} walkers x ({args.flow_warmup} warmup + "
        f"{args.flow_samples}), global acceptance {flow_accept:.3f}, log Z from the "
        f"frozen flow {flow_z.log_Z:.4f} ± {flow_z.log_Z_se:.4f} (k-hat "
        f"{flow_z.pareto_k:.2f}), {t_flow:.0f} s.",
        "",
        "| period mode (d) | reference | JKO draws | JKO IS-weighted | NUTS 4 chains "
        "| NUTS per chain | FlowMALA |",
        "|---|---|---|---|---|---|---|",
    ]
    for i in order:
        a, b = np.exp(segments[i])
        per_chain = " / ".join(f"{v:.2f}" for v in m_chain[:, i])
        lines.append(
            f"| {a:.3g}–{b:.3g} | {m_ref[i]:.4f} ± {se_ref[i]:.4f} | {m_ours[i]:.4f} "
            f"| {m_ours_w[i]:.4f} | {m_nuts[i]:.4f} | {per_chain} | {m_flow[i]:.4f} |"
        )
    dev = lambda m: np.max(np.abs(m - m_ref))
    lines += [
        "",
        f"Largest mode-mass error: JKO draws {dev(m_ours):.4f}, JKO IS-weighted "
        f"{dev(m_ours_w):.4f}, NUTS {dev(m_nuts):.4f}, FlowMALA {dev(m_flow):.4f} "
        "(target: JKO within 0.02).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    np.savez(
        args.out.with_suffix(".npz"),
        edges=ref["edges"],
        hist=ref["hist"],
        logp_ours=logp_ours,
        w_ours=w_ours,
        logp_nuts=logp_nuts,
        logp_flow=logp_flow,
    )


if __name__ == "__main__":
    main()
