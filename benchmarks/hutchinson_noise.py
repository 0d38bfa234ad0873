"""How noisy are 5-probe Hutchinson log densities at d = 50, and what would exact ones cost?

Above ``JKOConfig.exact_density_max_dim`` (32) a draw's log density integrates a
5-probe Hutchinson divergence through each CNF.  This script trains the GMM-50
preset's CNFs (no rejection layers), pushes 2 000 latent draws through them, and
compares, layer by layer, the 5-probe log-determinant with the exact one of the
solver map (``jacfwd``): the noise each CNF adds, the noise accumulated over the
CNFs, and the time of both on the same draws.  The rejection layers accept on
``log g - log p``; noise in ``log p`` comparable to the mode-weight errors they
should correct makes them select on noise instead.

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
    # Both log densities start from the same latent one, so their difference is
    # the sum of the per-CNF differences of the log-determinants.
    accumulated = 0.0
    exact = jax.jit(lambda p, x: cnf.push_forward(chain.spec, p, x))
    probed = jax.jit(
        lambda p, x, k: cnf.push_forward(chain.spec, p, x, cnf.Hutchinson(5), k)
    )
    lines = [
        f"GMM-50 preset CNFs (layers {''.join(info.layer_kinds)}, fit {fit_seconds:.0f} s, "
        f"ELBO after the CNFs {info.elbo[-1]:.2f}), {num_draws} draws, seed {seed}.",
        "",
        "| CNF | sd exact log-det | sd (5-probe - exact) | mean (5-probe - exact) "
        "| accumulated noise sd | exact s | 5-probe s |",
        "|---|---|---|---|---|---|---|",
    ]
    index = 0
    for layer in chain.layers:
        if not isinstance(layer, CNFLayer):
            continue
        t0 = time.perf_counter()
        y, logdet = exact(layer.params, x)
        logdet.block_until_ready()
        t_exact = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, logdet_probe = probed(layer.params, x, jax.random.key(100 + index))
        logdet_probe.block_until_ready()
        t_probe = time.perf_counter() - t0
        x, noise = y, logdet_probe - logdet
        accumulated = accumulated + noise
        lines.append(
            f"| {index + 1} | {float(logdet.std()):.3f} | {float(noise.std()):.3f} "
            f"| {float(noise.mean()):+.3f} | {float(accumulated.std()):.3f} "
            f"| {t_exact:.2f} | {t_probe:.2f} |"
        )
        index += 1
    lines += ["", "The first row's times include compilation."]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "hutchinson_noise.md"
    out.write_text(
        "# 5-probe Hutchinson vs exact log densities, GMM-50\n\n" + text + "\n"
    )


if __name__ == "__main__":
    main()
