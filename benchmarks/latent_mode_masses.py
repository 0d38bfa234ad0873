"""Which mode weights does a Gaussian latent hand the CNFs on GMM-d?

On GMM-50 the mode weights of the preset's draws after its eight CNFs (before any
rejection layer) follow the latent's *nearest-mode masses*: the probability, under
the latent ``N(0, s^2 I)``, that a draw lies closer to mode ``k`` than to any other.
The first CNFs take small JKO steps, so each latent draw goes to the mode nearest
to it, and no later step moves mass between modes 5.8 apart.  This script prints
those masses for a few latent scales and dimensions, and their correlation with
the weights a chain's CNFs produced (``--cnf-weights``; default: the GMM-50
preset's, ``benchmarks/results/jko_levers.md``, session 15).

    python benchmarks/latent_mode_masses.py --dims 20 50 100

A latent whose nearest-mode masses are closer to equal leaves the rejection layers
less to correct.  Writes ``--out``; takes seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from numpyro_jko import metrics, targets

# GMM-50 preset, weights of 2 000 draws through its eight CNFs (jko_levers.md).
PRESET_CNF_WEIGHTS = (
    0.064, 0.113, 0.087, 0.092, 0.082, 0.163, 0.113, 0.031, 0.086, 0.171,
)  # fmt: skip


def nearest_mode_masses(modes, scale, num_draws, seed):
    # Monte Carlo masses of the Voronoi cells of the modes under N(0, scale^2 I).
    rng = np.random.default_rng(seed)
    z = scale * rng.standard_normal((num_draws, modes.shape[1]))
    return np.asarray(metrics.mode_weights(z, modes))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--scales", type=float, nargs="+", default=[1, 1.5, 2, 3, 5])
    parser.add_argument("--cnf-weights-dim", type=int, default=50)
    parser.add_argument(
        "--cnf-weights", type=float, nargs="+", default=PRESET_CNF_WEIGHTS
    )
    parser.add_argument("--num-draws", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/latent_mode_masses.md")
    args = parser.parse_args()

    cnf_w = np.asarray(args.cnf_weights)
    lines = [
        "# Nearest-mode masses of the latent N(0, s^2 I) on GMM-d "
        "(benchmarks/latent_mode_masses.py)",
        "",
        f"{args.num_draws} latent draws per row.  `corr` is the correlation with the "
        f"CNFs' mode weights on GMM-{args.cnf_weights_dim} "
        f"({' '.join(f'{v:.3f}' for v in cnf_w)}).  Command: "
        f"`python benchmarks/latent_mode_masses.py{''.join(' ' + a for a in sys.argv[1:])}`.",
        "",
        "| d | s | nearest-mode masses | max error | corr |",
        "|---|---|---|---|---|",
    ]
    for dim in args.dims:
        modes = np.asarray(targets.gmm(dim).modes)
        for s in args.scales:
            w = nearest_mode_masses(modes, s, args.num_draws, args.seed)
            corr = ""
            if dim == args.cnf_weights_dim:
                corr = f"{np.corrcoef(w, cnf_w)[0, 1]:.2f}"
            lines.append(
                f"| {dim} | {s:g} | {' '.join(f'{v:.3f}' for v in w)} | "
                f"{np.abs(w - 1 / len(w)).max():.3f} | {corr} |"
            )
    lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
