"""How noisy are Hutchinson log densities at d = 50, and what would exact ones cost?

Above ``JKOConfig.exact_density_max_dim`` (32) a draw's log density integrates a
5-probe Hutchinson divergence through each CNF.  This script trains the GMM-50
preset's CNFs (no rejection layers), pushes 2 000 latent draws through them, and
compares, layer by layer, Hutchinson log-determinants (5 probes held along the
solve; 5, the default since session 15, and 10 drawn fresh at every stage time)
with the exact one of the solver map (``jacfwd``): the noise each CNF adds, the noise
accumulated over the CNFs, and the time of each on the same draws.  The
rejection layers accept on ``log g - log p``; noise in ``log p`` comparable to
the mode-weight errors they should correct makes them select on noise instead.

    python benchmarks/hutchinson_noise.py      # about 10 minutes; run it alone

The table is printed and written to ``benchmarks/results/hutchinson_noise.md``.
The first row's times include compilation.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
from paper_targets import make_config, make_target  # same directory: the targets

from numpyro_jko import cnf, jko
from numpyro_jko.chain import CNFLayer

ESTIMATORS = {
    "5 held": cnf.Hutchinson(5),
    "5 per stage": cnf.Hutchinson(5, per_stage=True),
    "10 per stage": cnf.Hutchinson(10, per_stage=True),
}


def main(num_draws: int = 2000, seed: int = 0):
    target = make_target("gmm50")
    # The GMM-50 preset without rejection layers; it keeps five CNFs (the sixth
    # is dropped, benchmarks/results/scaling.md), so only five are trained here.
    config = make_config("gmm50")._replace(num_cnf=5, num_blocks=0)
    start = time.perf_counter()
    chain, info = jko.fit(
        jax.random.key(seed), target.logdensity_fn, target.dim, config
    )
    fit_seconds = time.perf_counter() - start

    x = chain.latent_mean + chain.latent_scale * jax.random.normal(
        jax.random.key(seed + 5), (num_draws, target.dim)
    )
    # All log densities start from the same latent one, so their difference is
    # the sum of the per-CNF differences of the log-determinants.
    exact = jax.jit(lambda p, x: cnf.push_forward(chain.spec, p, x))
    probed = {
        name: jax.jit(
            lambda p, x, k, est=est: cnf.push_forward(chain.spec, p, x, est, k)
        )
        for name, est in ESTIMATORS.items()
    }
    accumulated = dict.fromkeys(ESTIMATORS, 0.0)
    header = " | ".join(f"sd {n} (acc.) | mean {n} | {n} s" for n in ESTIMATORS)
    lines = [
        f"GMM-50 preset CNFs (layers {''.join(info.layer_kinds)}, fit {fit_seconds:.0f} s, "
        f"ELBO after the CNFs {info.elbo[-1]:.2f}), {num_draws} draws, seed {seed}. "
        "For each Hutchinson estimator (probes, held along the solve or fresh per "
        "stage time): the sd of its difference to the exact log-determinant of the "
        "CNF, in brackets accumulated over the CNFs so far, its mean, and its time.",
        "",
        f"| CNF | sd exact log-det | exact s | {header} |",
        "|---|---|---|" + "---|---|---|" * len(ESTIMATORS),
    ]
    index = 0
    for layer in chain.layers:
        if not isinstance(layer, CNFLayer):
            continue
        t0 = time.perf_counter()
        y, logdet = exact(layer.params, x)
        logdet.block_until_ready()
        cells = [
            f"{index + 1}",
            f"{float(logdet.std()):.3f}",
            f"{time.perf_counter() - t0:.2f}",
        ]
        for name, fn in probed.items():
            t0 = time.perf_counter()
            _, logdet_probe = fn(layer.params, x, jax.random.key(100 + index))
            logdet_probe.block_until_ready()
            seconds = time.perf_counter() - t0
            noise = logdet_probe - logdet
            accumulated[name] = accumulated[name] + noise
            cells += [
                f"{float(noise.std()):.3f} ({float(accumulated[name].std()):.3f})",
                f"{float(noise.mean()):+.3f}",
                f"{seconds:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
        x = y
        index += 1
    lines += ["", "The first row's times include compilation."]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "hutchinson_noise.md"
    out.write_text("# Hutchinson vs exact log densities, GMM-50\n\n" + text + "\n")


if __name__ == "__main__":
    main()
