"""How the cost of JKO-IC grows with the dimension: GMM-d for d = 2, 10, 20, 50, 100.

One fixed budget for every d (``CONFIG`` below, the GMM preset's small steps with
fewer and shorter CNFs), so that the rows differ only by the dimension: training
seconds (compile excluded, reported apart), seconds per 50 000 draws (timed on
``--num-draws`` draws after a warm-up call and scaled), peak resident memory of the
process, and the accuracy that budget reaches (sliced energy distance against as
many exact draws, with the exact-vs-exact floor; IS log Z; largest mode-weight
error).  Above ``JKOConfig.exact_density_max_dim`` (32) the draws' log densities
use a 5-probe Hutchinson divergence, so log Z there carries that noise.

Each dimension runs in its own process so that its peak memory is its own::

    python benchmarks/scaling.py                    # all dimensions, table saved
    python benchmarks/scaling.py --dims 2 10        # a subset

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

from numpyro_jko import evidence, jko, metrics, targets

# The GMM preset's JKO steps (tau0 0.0025, growth 2; reference code), reference
# width 2 d + 50, on a budget that fits d = 100 in minutes on one core.
CONFIG = dict(
    num_particles=4096,
    num_cnf=3,
    num_iterations=150,
    tau0=0.0025,
    tau_growth=2.0,
    num_blocks=2,
    batch_size=256,
)


def one(dim: int, num_draws: int, seed: int) -> dict:
    target = targets.gmm(dim)
    config = jko.JKOConfig(hidden=2 * dim + 50, **CONFIG)
    chain, info = jko.fit(
        jax.random.key(seed), target.logdensity_fn, dim, config, progress_bar=False
    )
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
        "layers": "".join(info.layer_kinds),
        "train_s": info.train_seconds - info.compile_seconds,
        "compile_s": info.compile_seconds,
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
    "| d | hidden | layers | train s | compile s | s / 50k draws | peak MiB | ED | floor "
    "| log Z (IS ± se) | ELBO | mode err |"
)


def row(r: dict) -> str:
    return (
        f"| {r['d']} | {2 * r['d'] + 50} | {r['layers']} | {r['train_s']:.0f} | "
        f"{r['compile_s']:.0f} | {r['sample_s']:.0f} | {r['peak_mib']:.0f} | "
        f"{r['ed']:.1e} | {r['floor']:.1e} | {r['log_z']:+.3f} ± {r['log_z_se']:.3f} | "
        f"{r['elbo']:+.3f} | {r['mode_err']:.3f} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 10, 20, 50, 100])
    parser.add_argument("--num-draws", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/scaling.md")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.dims[0], args.num_draws, args.seed)))
        return

    rows = []
    for dim in args.dims:
        out = subprocess.run(
            [sys.executable, __file__, "--one", "--dims", str(dim)]
            + ["--num-draws", str(args.num_draws), "--seed", str(args.seed)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(HEADER)
        print("|" + "---|" * 12)
        for r in rows:
            print(row(r), flush=True)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__}, backend {jax.default_backend()}"
    )
    lines = [
        "# Cost against dimension (benchmarks/scaling.py)",
        "",
        f"Machine: {machine}. GMM-d (10 modes, sd 0.1), seed {args.seed}; one "
        f"budget for every d: `JKOConfig(hidden=2 d + 50, **{CONFIG})`. "
        f"{args.num_draws} draws (s / 50k scaled from them; ED against as many exact "
        "draws, floor = one exact-vs-exact pair at that size); peak MiB = the "
        "process's peak resident memory; train s excludes compile s.  Above d = 32 "
        "the draws' log densities use a 5-probe Hutchinson divergence.",
        "",
        HEADER,
        "|" + "---|" * 12,
        *[row(r) for r in rows],
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
