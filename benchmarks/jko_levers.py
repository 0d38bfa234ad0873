"""One JKO configuration on one paper target: where the accuracy is lost, layer by layer.

Trains with ``JKOConfig()`` updated by ``--config`` (JSON), then reports the ELBO
after every layer and, for the chain cut below its first rejection layer and for
the whole chain, ``log Z``, the mode weights (draws and importance-weighted), the
energy distance against exact draws and the sampling time.  This is the script
behind the levers tried on GMM-10 (``benchmarks/results/jko_levers.md``):

    python benchmarks/jko_levers.py gmm10 \
        '{"num_cnf": 6, "num_iterations": 500, "tau0": 0.0025, "tau_growth": 2.0, "num_blocks": 6}' \
        --num-draws 5000

A divergence estimator is given by its fields, e.g.
``'{"density_divergence": {"num_probes": 5, "per_stage": true}}'`` is
``Hutchinson(5, per_stage=True)``.  Results are appended to ``--out`` (one section
per run).  Run it alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
from paper_targets import make_target  # same directory: the targets by name

from numpyro_jko import cnf, evidence, jko, metrics

DIVERGENCES = ("train_divergence", "density_divergence")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("config", nargs="?", default="{}")
    parser.add_argument("--num-draws", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/jko_levers.md")
    args = parser.parse_args()

    target = make_target(args.target)
    overrides = json.loads(args.config)
    config = jko.JKOConfig()._replace(
        **{
            k: cnf.Hutchinson(**v) if k in DIVERGENCES else v
            for k, v in overrides.items()
        }
    )
    lines = [f"## {args.target}, `{json.dumps(overrides)}`, {args.num_draws} draws", ""]
    start = time.perf_counter()
    chain, info = jko.fit(
        jax.random.key(args.seed), target.logdensity_fn, target.dim, config
    )
    kinds = "".join(info.layer_kinds)
    lines += [
        f"layers {kinds}; fit {time.perf_counter() - start:.0f} s "
        f"(compile {info.compile_seconds:.0f} s); taus {info.taus}",
        "",
        "ELBO after each layer: " + ", ".join(f"{e:.3f}" for e in info.elbo),
        "",
        "| cut | s / draws | log Z (IS ± se) | ELBO | k̂ | mode err | mode err (IS) "
        "| ED | mode weights |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    first_r = kinds.find("R")
    cuts = sorted({first_r if first_r > 0 else len(kinds), len(kinds)})
    exact = target.sample(jax.random.key(args.seed + 3), args.num_draws)
    for cut in cuts:
        sub = chain._replace(layers=chain.layers[:cut])
        t0 = time.perf_counter()
        x, energy, log_g = jko.draw(jax.random.key(args.seed + 2), sub, args.num_draws)
        seconds = time.perf_counter() - t0
        est = evidence.log_evidence(log_g, -energy)
        ed = float(metrics.energy_distance(x, exact, jax.random.key(args.seed + 4)))
        err = err_is = float("nan")
        weights = ""
        if target.modes is not None:
            w = np.asarray(metrics.mode_weights(x, target.modes))
            k = len(w)
            offsets = np.asarray(x)[:, None] - np.asarray(target.modes)[None]
            nearest = np.argmin((offsets**2).sum(-1), 1)
            lw = np.asarray(log_g + energy)
            lw = np.where(np.isfinite(lw), np.exp(lw - np.nanmax(lw)), 0.0)
            w_is = np.bincount(nearest, weights=lw, minlength=k) / lw.sum()
            err, err_is = np.abs(w - 1 / k).max(), np.abs(w_is - 1 / k).max()
            weights = " ".join(f"{v:.3f}" for v in w)
        lines.append(
            f"| {kinds[:cut]} | {seconds:.0f} / {args.num_draws} | "
            f"{est.log_Z:+.4f} ± {est.log_Z_se:.4f} | {est.elbo:+.3f} | "
            f"{est.pareto_k:.2f} | {err:.4f} | {err_is:.4f} | {ed:.2e} | {weights} |"
        )
        print("\n".join(lines), flush=True)
    lines.append("")
    with Path(args.out).open("a") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
