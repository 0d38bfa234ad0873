"""Bimodal NumPyro model: JKO sampler vs NUTS (4 chains) vs quadrature, in one run.

    taskset -c 1 python benchmarks/bimodal_vs_nuts.py

The model (``tests/numpyro_models.py::bimodal``) has modes at x = -2 and x = +2
with weights 0.378 / 0.622 and a valley ~e^-24 deep between them.  Prints a table
(mode weight P(x > 0), log Z, r_hat of x, wall time) and saves it to
``benchmarks/results/bimodal_vs_nuts.txt``.
"""

import pathlib
import sys
import time

import jax
import numpy as np
from numpyro.diagnostics import split_gelman_rubin
from numpyro.infer import MCMC, NUTS

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from numpyro_models import BIMODAL_Y, bimodal, bimodal_exact  # noqa: E402

from numpyro_jko import JKOConfig, JKOSampler, NeuralJKO  # noqa: E402
from numpyro_jko.jko import TWO_STEP  # noqa: E402

NUM_CHAINS, NUM_SAMPLES = 4, 2000
# The quickstart's recipe: a wide latent at the prior median (latent_steps=0).
CONFIG = JKOConfig(
    **TWO_STEP, num_particles=4096, num_iterations=200, num_blocks=5, latent_scale=1.5
)
LATENT_STEPS = 0


def main():
    rows = []
    weight, log_z = bimodal_exact()
    rows.append(("quadrature", f"{weight:.4f}", f"{log_z:.4f}", "-", "-", "-"))

    t0 = time.perf_counter()
    sampler = JKOSampler(bimodal, CONFIG, progress_bar=False, latent_steps=LATENT_STEPS)
    sampler.run(jax.random.key(0), BIMODAL_Y)
    train = time.perf_counter() - t0
    est = sampler.log_evidence()
    samples, log_w = sampler.get_weighted_samples(jax.random.key(1), 20_000)
    x, log_w = np.asarray(samples["x"]), np.asarray(log_w, np.float64)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    total = time.perf_counter() - t0
    z = f"{est.log_Z:.4f} ± {est.log_Z_se:.4f}"
    rows.append(
        (
            "JKOSampler, 20000 draws",
            f"{np.mean(x > 0):.4f}",
            z,
            "-",
            f"{train:.0f}",
            f"{total:.0f}",
        )
    )
    rows.append(
        ("  same draws, IS-weighted", f"{np.sum(w * (x > 0)):.4f}", z, "-", "-", "-")
    )

    t0 = time.perf_counter()
    mcmc = MCMC(
        NeuralJKO.from_sampler(sampler),
        num_warmup=0,
        num_samples=NUM_SAMPLES,
        num_chains=NUM_CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(2), BIMODAL_Y)
    x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    rows.append(
        (
            f"MCMC(NeuralJKO), {NUM_CHAINS}x{NUM_SAMPLES}",
            f"{np.mean(x > 0):.4f}",
            "-",
            f"{float(split_gelman_rubin(x)):.3f}",
            "(shared)",
            f"{time.perf_counter() - t0:.0f}",
        )
    )

    t0 = time.perf_counter()
    nuts = MCMC(
        NUTS(bimodal),
        num_warmup=1000,
        num_samples=NUM_SAMPLES,
        num_chains=NUM_CHAINS,
        chain_method="sequential",
        progress_bar=False,
    )
    nuts.run(jax.random.key(3), BIMODAL_Y)
    x = np.asarray(nuts.get_samples(group_by_chain=True)["x"])
    per_chain = ", ".join(f"{v:.2f}" for v in np.mean(x > 0, axis=1))
    rows.append(
        (
            f"NUTS, {NUM_CHAINS}x{NUM_SAMPLES} (+1000 warmup)",
            f"{np.mean(x > 0):.4f}",
            "-",
            f"{float(split_gelman_rubin(x)):.3f}",
            "-",
            f"{time.perf_counter() - t0:.0f}",
        )
    )
    rows.append(("  NUTS per chain", per_chain, "-", "-", "-", "-"))

    header = ("method", "P(x > 0)", "log Z", "r_hat(x)", "run s", "total s")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(6)]
    lines = [
        "Bimodal model y ~ N(x^2, s), y = " + np.array2string(BIMODAL_Y),
        f"JKO config: {CONFIG.num_particles} particles, {CONFIG.num_cnf} CNFs x "
        f"{CONFIG.num_iterations} iterations, {CONFIG.num_blocks} x "
        f"{CONFIG.rejections_per_block} rejection layers; weight ESS "
        f"{est.ess:.0f}/{est.num_draws}, PSIS k {est.pareto_k:.2f}",
        "",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
    ]
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
    ]
    text = "\n".join(lines)
    print(text)
    out = HERE / "results" / "bimodal_vs_nuts.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
