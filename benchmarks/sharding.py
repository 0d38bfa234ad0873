"""Speed of the same fit and draws on 1 vs 2 devices (forced host devices on a CPU).

Each layout runs in its own subprocess, because the device count is fixed when JAX
starts (``XLA_FLAGS=--xla_force_host_platform_device_count=N``).  On a CPU the
"devices" share the machine's cores, so this measures how well the particle-axis
sharding splits the work, not a GPU cluster; on a multi-GPU host the same code
shards over the GPUs (see the README).  Run it alone on the machine:

    python benchmarks/sharding.py                 # 1 and 2 devices
    python benchmarks/sharding.py --devices 1 2 4

The table is printed and saved to ``benchmarks/results/sharding.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, sys, time
import jax, numpy as np
from numpyro_jko import jko, targets, metrics

target = targets.shifted_eight_modes()
config = jko.JKOConfig(num_iterations=int(sys.argv[1]))
t0 = time.perf_counter()
chain, info = jko.fit(jax.random.key(0), target.logdensity_fn, target.dim, config,
                      progress_bar=False)
train = time.perf_counter() - t0
jko.draw(jax.random.key(1), chain, 1000)  # compile the draw programs
t0 = time.perf_counter()
x, energy, log_g = jko.draw(jax.random.key(2), chain, 50_000)
draws = time.perf_counter() - t0
w = np.asarray(metrics.mode_weights(x, target.modes))
print(json.dumps({"devices": jax.device_count(), "train_s": train,
                  "compile_s": info.compile_seconds, "draw_s": draws,
                  "layers": "".join(info.layer_kinds),
                  "mode_err": float(np.abs(w - 1 / 8).max())}))
"""


def run(devices: int, iterations: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    )
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(iterations)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--num-iterations", type=int, default=1000)
    parser.add_argument("--out", default="benchmarks/results/sharding.md")
    args = parser.parse_args()

    header = (
        "| devices | layers | train s (incl. compile) | compile s | s / 50k draws "
        "| speed-up (train, draws) | mode err |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    base = None
    for n in args.devices:
        r = run(n, args.num_iterations)
        base = base or r
        lines.append(
            f"| {r['devices']} | {r['layers']} | {r['train_s']:.1f} | "
            f"{r['compile_s']:.1f} | {r['draw_s']:.1f} | "
            f"{base['train_s'] / r['train_s']:.2f}x, "
            f"{base['draw_s'] / r['draw_s']:.2f}x | {r['mode_err']:.4f} |"
        )
        print("\n".join(lines), flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    text = "\n".join(
        [
            "# Particle-axis sharding (benchmarks/sharding.py)",
            "",
            f"Machine: {machine}; shifted 8 modes, default JKOConfig with "
            f"{args.num_iterations} iterations per CNF, seed 0; forced host devices "
            "(`--xla_force_host_platform_device_count`), one subprocess per row, "
            "run one after the other.",
            "",
            *lines,
            "",
            f"`python benchmarks/sharding.py --devices {' '.join(map(str, args.devices))}`",
            "",
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
