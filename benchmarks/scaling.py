"""How the cost of JKO-IC grows with the dimension: GMM-d for d = 2, 10, 20, 50, 100.

Each row trains the configuration ``benchmarks/paper_targets.py`` runs on GMM-d
(``--config default``: ``JKOConfig()`` itself; ``--config preset``: its per-d
preset; ``--config small``: one small fixed budget for every d, the table of
``benchmarks/results/scaling_small_budget.md``) and reports training seconds
(compile excluded, reported apart), seconds per 50 000 draws (timed on
``--num-draws`` draws after a warm-up call and scaled), peak resident memory
(of training, and of the process once the draws are made), and the accuracy
reached (sliced energy distance against as many exact draws, with the
exact-vs-exact floor; IS log Z; largest mode-weight error).  Above
``JKOConfig.exact_density_max_dim`` (32) the draws' log densities use a Hutchinson
divergence (five probes per stage by default, ten in the GMM-50 preset), so log Z
there carries that noise.

Each dimension runs in its own process so that its peak memory is its own.  With
``--chain-dir`` a trained chain is kept (with its training figures) and reused by
later runs and by ``paper_targets.py``, so the draws can be remade without
training again::

    python benchmarks/scaling.py --dims 2 10 20 --chain-dir chains
    python benchmarks/scaling.py --config small     # the small fixed budget

Results: ``benchmarks/results/scaling.md``.  Run it alone: the timings are the
machine's, not a comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from paper_targets import make_config as paper_config  # same directory
from paper_targets import train  # one cache of chains with paper_targets.py

from numpyro_jko import evidence, jko, metrics, targets

# ``--config small``: the GMM preset's JKO steps (tau0 0.0025, growth 2; reference
# code), reference width 2 d + 50, on a budget that fits d = 100 in minutes on
# one core.
SMALL = dict(
    num_particles=4096,
    num_cnf=3,
    num_iterations=150,
    tau0=0.0025,
    tau_growth=2.0,
    num_blocks=2,
    batch_size=256,
)


def make_config(dim: int, config: str) -> jko.JKOConfig:
    if config == "small":
        return jko.JKOConfig(hidden=2 * dim + 50, **SMALL)
    return paper_config(f"gmm{dim}", preset=config == "preset")


def one(dim: int, num_draws: int, seed: int, config: str, chain_dir) -> dict:
    target = targets.gmm(dim)
    cfg = make_config(dim, config)
    chain, record = train(f"gmm{dim}", target, cfg, seed, chain_dir)
    jko.draw(jax.random.key(seed + 1), chain, 1000)  # compile the sampler
    start = time.perf_counter()
    x, energy, log_g = jko.draw(jax.random.key(seed + 2), chain, num_draws)
    sample_seconds = time.perf_counter() - start
    est = evidence.log_evidence(log_g, -energy)
    exact = [target.sample(jax.random.key(seed + 3 + i), num_draws) for i in range(3)]
    ed = float(metrics.energy_distance(x, exact[0], jax.random.key(seed + 10)))
    ed_floor = float(
        metrics.energy_distance(exact[1], exact[2], jax.random.key(seed + 11))
    )
    weights = np.asarray(metrics.mode_weights(x, target.modes))
    return {
        "d": dim,
        "hidden": chain.spec.hidden,
        "layers": record["layers"],
        "train_s": record["train_s"],
        "compile_s": record["compile_s"],
        "train_peak_mib": record.get("train_peak_mib", float("nan")),
        "sample_s": sample_seconds * 50_000 / num_draws,
        # ru_maxrss is in KiB on Linux.
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ed": ed,
        "floor": ed_floor,
        "log_z": est.log_Z,
        "log_z_se": est.log_Z_se,
        "elbo": est.elbo,
        "mode_err": float(np.abs(weights - 0.1).max()),
        "num_draws": num_draws,
    }


HEADER = (
    "| d | hidden | layers | train s | compile s | s / 50k draws | peak MiB (train, "
    "all) | draws | ED | floor | log Z (IS ± se) | ELBO | mode err |"
)
RULE = "|" + "---|" * (HEADER.count("|") - 1)


def compact(kinds: str) -> str:
    """``CCCRRRR`` as ``C×3 R×4``."""
    return f"C×{kinds.count('C')} R×{kinds.count('R')}"


def row(r: dict) -> str:
    return (
        f"| {r['d']} | {r['hidden']} | {compact(r['layers'])} | {r['train_s']:.0f} | "
        f"{r['compile_s']:.0f} | {r['sample_s']:.0f} | {r['train_peak_mib']:.0f}, "
        f"{r['peak_mib']:.0f} | {r['num_draws']} | {r['ed']:.1e} | {r['floor']:.1e} | {r['log_z']:+.3f} ± {r['log_z_se']:.3f} | "
        f"{r['elbo']:+.3f} | {r['mode_err']:.3f} |"
    )


CONFIGS = {
    "default": "`JKOConfig()` at every d",
    "preset": "`JKOConfig()` with `paper_targets.PRESETS['gmm<d>']`",
    "small": f"`JKOConfig(hidden=2 d + 50, **{SMALL})`",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 10, 20, 50, 100])
    parser.add_argument("--num-draws", type=int, default=5000)
    parser.add_argument(
        "--config", choices=["default", "preset", "small"], default="default"
    )
    parser.add_argument("--chain-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/scaling.md")
    args = parser.parse_args()
    if args.one:
        print(
            json.dumps(
                one(
                    args.dims[0], args.num_draws, args.seed, args.config, args.chain_dir
                )
            )
        )
        return

    rows = []
    for dim in args.dims:
        out = subprocess.run(
            [sys.executable, __file__, "--one", "--dims", str(dim)]
            + ["--num-draws", str(args.num_draws), "--seed", str(args.seed)]
            + ["--config", args.config]
            + (["--chain-dir", args.chain_dir] if args.chain_dir else []),
            check=True,
            stdout=subprocess.PIPE,  # stderr (warnings, errors) passes through
            text=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(HEADER)
        print(RULE)
        for r in rows:
            print(row(r), flush=True)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__}, backend {jax.default_backend()}"
    )
    lines = [
        "# Cost against dimension (benchmarks/scaling.py)",
        "",
        f"Machine: {machine}. GMM-d (10 modes, sd 0.1), seed {args.seed}; config "
        f"`{args.config}` ({CONFIGS[args.config]}). Draws as listed (s / 50k scaled "
        "from them; ED against as many exact draws, floor = one exact-vs-exact pair "
        "at that size); peak MiB = the process's peak resident memory once trained, "
        "and once the draws are made too; train s excludes compile s.  Above d = 32 "
        "the draws' log densities use a Hutchinson divergence (5 probes per stage "
        "by default, 10 in the GMM-50 preset).",
        "",
        HEADER,
        RULE,
        *[row(r) for r in rows],
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
