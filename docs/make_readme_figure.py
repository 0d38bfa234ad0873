"""The README / docs picture: JKO draws vs NUTS draws on the shifted 8-modes target.

    python docs/make_readme_figure.py      # about 2-4 minutes on one CPU core

Trains the README's measured configuration for this target (2 CNFs x 1000
iterations, 12 rejection layers, width 32), runs four NUTS chains on the same
density, and saves ``docs/_static/eight_modes_vs_nuts.png`` (kept small: a
palette PNG at screen resolution).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

from numpyro_jko import jko, metrics, targets  # noqa: E402

OUT = Path(__file__).resolve().parent / "_static" / "eight_modes_vs_nuts.png"
NUM_DRAWS = 4000
NUM_CHAINS = 4


def main():
    target = targets.shifted_eight_modes()
    config = jko.JKOConfig(num_cnf=2, num_iterations=1000, hidden=32)
    chain, info = jko.fit(jax.random.key(0), target.logdensity_fn, 2, config)
    x_jko, _ = jko.sample(jax.random.key(1), chain, NUM_DRAWS)
    x_jko = np.asarray(x_jko)

    # NUTS from four random starts: its chains hop between neighbouring modes
    # now and then, far too rarely for the mode weights to come out right.
    init = jax.random.normal(jax.random.key(2), (NUM_CHAINS, 2)) * 0.7 + jnp.array(
        [-1.0, 0.0]
    )
    mcmc = MCMC(
        NUTS(potential_fn=lambda x: -target.logdensity_fn(x)),
        num_warmup=500,
        num_samples=NUM_DRAWS // NUM_CHAINS,
        num_chains=NUM_CHAINS,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(3), init_params=init)
    x_nuts = np.asarray(mcmc.get_samples(group_by_chain=True))

    w_jko = np.asarray(metrics.mode_weights(jnp.asarray(x_jko), target.modes))
    w_nuts = np.asarray(
        metrics.mode_weights(jnp.asarray(x_nuts.reshape(-1, 2)), target.modes)
    )
    print("JKO mode weights ", np.round(w_jko, 3), f"train {info.train_seconds:.0f} s")
    print("NUTS mode weights", np.round(w_nuts, 3))

    fig, axes = plt.subplots(
        1, 2, figsize=(8, 3.9), sharex=True, sharey=True, layout="constrained"
    )
    circle = np.linspace(0, 2 * np.pi, 200)
    for ax in axes:
        ax.plot(np.cos(circle) - 1, np.sin(circle), color="0.85", lw=0.8, zorder=0)
        ax.scatter(*np.asarray(target.modes).T, marker="+", color="k", s=40, zorder=3)
        ax.set_aspect("equal")
        ax.set_xlim(-2.5, 0.5)
        ax.set_ylim(-1.5, 1.5)
        ax.tick_params(labelsize=8)
    axes[0].scatter(*x_jko.T, s=1.5, alpha=0.5, color="tab:blue", lw=0)
    axes[0].set_title(
        f"numpyro_jko: {NUM_DRAWS} i.i.d. draws\n"
        f"mode weights {w_jko.min():.3f}-{w_jko.max():.3f} (exact 0.125)",
        fontsize=10,
    )
    colors = ["tab:red", "tab:green", "tab:purple", "tab:orange"]
    for c in range(NUM_CHAINS):
        axes[1].scatter(*x_nuts[c].T, s=1.5, alpha=0.5, color=colors[c], lw=0)
    axes[1].set_title(
        f"NUTS: {NUM_CHAINS} chains x {NUM_DRAWS // NUM_CHAINS} draws\n"
        f"mode weights {w_nuts.min():.3f}-{w_nuts.max():.3f} (exact 0.125)",
        fontsize=10,
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=80)
    _shrink(OUT)
    print(f"saved {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


def _shrink(path: Path) -> None:
    # A 64-colour palette keeps the PNG small for the README; skip without Pillow.
    try:
        from PIL import Image
    except ImportError:
        return
    image = Image.open(path).convert("RGB")
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


if __name__ == "__main__":
    main()
