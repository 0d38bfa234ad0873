"""How much energy distance do mode weights alone cost on GMM-d?

Draws exactly from the GMM-d mixture (``numpyro_jko.targets.gmm``) but with the
mode weights a sampler produced, and measures their energy distance to exact draws
with equal weights.  Inside each mode these draws are perfect, so the ED they show
is the part of a sampler's ED that only better mode weights can remove.  The weight
error is then scaled down, ``w(s) = 1/K + s (w - 1/K)``, to find the error an ED
target needs.  The default weights are those of the GMM-50 preset's 2 000 draws
(``benchmarks/results/jko_levers.md``, session 15: ED 1.15e-2).

    python benchmarks/ed_mode_weights.py --dim 50 --num-draws 50000

Each row is the mean over ``--seeds`` independent pairs of draw sets; ``floor`` is
the ED of exact against exact draws at the same size (the same pairs' second
exact set).  Writes ``--out``.  About 18 minutes on 2 cores (the 50 000-draw
rows); run it alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_jko import metrics, targets

# Mode weights of the GMM-50 preset's 2 000 draws (jko_levers.md, session 15).
PRESET_WEIGHTS = (0.088, 0.112, 0.106, 0.103, 0.105, 0.128, 0.102, 0.051, 0.085, 0.123)
SCALES = (1.0, 0.5, 0.25, 0.15, 0.1, 0.0)


def mixture_draws(rng_key, target, weights, n):
    # The target's own components, picked with the given weights.
    key_c, key_x = jax.random.split(rng_key)
    comp = jax.random.choice(key_c, len(weights), (n,), p=jnp.asarray(weights))
    noise = jax.random.normal(key_x, (n, target.dim))
    return target.modes[comp] + 0.1 * noise  # GMM-d components have sd 0.1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--weights", type=float, nargs="+", default=PRESET_WEIGHTS)
    parser.add_argument("--num-draws", type=int, nargs="+", default=[2000, 50000])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/ed_mode_weights.md")
    args = parser.parse_args()

    target = targets.gmm(args.dim)
    w = np.asarray(args.weights, float)
    w = w / w.sum()
    k = len(w)
    lines = [
        f"# Energy distance from mode weights alone, GMM-{args.dim} "
        "(benchmarks/ed_mode_weights.py)",
        "",
        f"Sampler's weights: {' '.join(f'{v:.3f}' for v in w)}; "
        f"{args.seeds} seeds per row.  Command: `python benchmarks/ed_mode_weights.py"
        f"{''.join(' ' + a for a in sys.argv[1:])}` (alone on the machine).",
        "",
        "| draws | scale s | max weight error | ED (mean ± sd) | floor (mean) |",
        "|---|---|---|---|---|",
    ]
    t0 = time.perf_counter()
    for n in args.num_draws:
        for s in SCALES:
            ws = 1.0 / k + s * (w - 1.0 / k)
            eds, floors = [], []
            for seed in range(args.seeds):
                keys = jax.random.split(jax.random.key(seed), 4)
                exact = target.sample(keys[0], n)
                x = mixture_draws(keys[1], target, ws, n)
                exact2 = target.sample(keys[2], n)
                eds.append(float(metrics.energy_distance(x, exact, keys[3])))
                floors.append(float(metrics.energy_distance(exact2, exact, keys[3])))
            lines.append(
                f"| {n} | {s:.2f} | {np.abs(ws - 1 / k).max():.4f} | "
                f"{np.mean(eds):.2e} ± {np.std(eds):.1e} | {np.mean(floors):.2e} |"
            )
            print(lines[-1], flush=True)
    lines += ["", f"{time.perf_counter() - t0:.0f} s.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
