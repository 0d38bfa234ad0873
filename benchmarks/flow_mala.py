# SPDX-License-Identifier: Apache-2.0
"""Benchmark: FlowMALA vs plain MALA vs NumPyro NUTS vs flowMC, side by side.

Targets (``benchmarks/flow_mala_targets.py``): flowMC's 5-D dual moon, and the
4-mode Gaussian mixture of Grenioux et al. at d = 16 and d = 32 with weights
(0.4, 0.3, 0.2, 0.1) (true log Z = 0).

Every sampler starts from the same points: draws from N(0, 2^2 I) followed by
300 Adam steps (lr 0.05) up the log density (``numpyro_jko.flow_mala.SpreadInit``,
the default init of FlowMALA), which leaves roughly equal numbers of walkers in
each mode, whatever the weights -- so only a sampler that moves mass between
modes gets the weights right. Samplers with fewer chains (NUTS 8, flowMC 20)
take their starts round-robin over the modes of the 64 points, so every mode
has chains.

Rows:

* **FlowMALA**: ``numpyro_jko.FlowMALA`` (RealNVP, 6 layers x [64, 64], default
  training schedule), 64 walkers, 1000 warmup + 1000 sampling iterations; one MALA
  step + one flow move per iteration (2 gradient evaluations).
* **MALA**: the same kernel with global moves off (``global_every=0``) and two
  MALA steps per iteration: the same number of gradients per iteration.
* **NUTS**: NumPyro NUTS, 8 chains (vectorized), 500 + 500; gradients counted
  from ``num_steps``.
* **flowMC**: flowmc 0.6.5 ``RQSpline_MALA_Bundle`` with its dual-moon tutorial
  settings (``benchmarks/_flowmc_runner.py``), run in a separate Python 3.12 venv
  given by ``--flowmc-python``; its MALA spends 2 gradients per step.

Columns: min over coordinates of bulk ESS (ArviZ), per sampling-phase gradient
evaluation and per sampling-phase second; warmup (compilation + adaptation /
training) and sampling seconds apart (sampling: execution only, timed on a
second sampling run from the post-warmup state, whose draws are reported;
flowMC: its production loops, timed inside one call); max mode-weight error (nearest mode, or
sign quadrant of (x0, x1) for the dual moon, weights 1/4 by symmetry); max rank
R-hat over coordinates after warmup; local / global acceptance in the sampling
phase; log Z (FlowMALA only: importance sampling from the frozen flow, 20 000
draws, error +- standard error).

Usage::

    taskset -c 1 python benchmarks/flow_mala.py [--flowmc-python /work/venv-flowmc/bin/python]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS
from numpyro.infer.initialization import init_to_sample

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from flow_mala_targets import (  # noqa: E402
    MIXTURE_WEIGHTS,
    dual_moon_logdensity,
    dual_moon_mode,
    make_mixture,
)

from numpyro_jko import CouplingFlowProposal, FlowMALA  # noqa: E402
from numpyro_jko.flow_mala import SpreadInit  # noqa: E402

NUM_WALKERS = 64
NUM_WARMUP = NUM_SAMPLES = 1000
NUTS_CHAINS, NUTS_WARMUP, NUTS_SAMPLES = 8, 500, 500


def targets():
    mix16, mode16 = make_mixture(16)
    mix32, mode32 = make_mixture(32)
    return [
        (
            "dual moon (5-D)",
            "dual_moon",
            5,
            dual_moon_logdensity,
            dual_moon_mode,
            (0.25,) * 4,
            None,
        ),
        ("mixture d=16", "mixture", 16, mix16, mode16, MIXTURE_WEIGHTS, 0.0),
        ("mixture d=32", "mixture", 32, mix32, mode32, MIXTURE_WEIGHTS, 0.0),
    ]


def spread_start(logdensity, dim, seed):
    start = 2.0 * jax.random.normal(jax.random.key(seed), (NUM_WALKERS, dim))
    return np.asarray(SpreadInit(300, 0.05).optimize(logdensity, start))


def balanced_subset(start, mode_fn, n):
    """``n`` of the starting points, taken round-robin over their modes.

    NUTS and flowMC run fewer chains than FlowMALA has walkers; taking the
    first ``n`` starts could leave a mode without any chain (it did for flowMC
    at d = 16 with seed 0), which no sampler could be blamed for.
    """
    modes = mode_fn(start)
    queues = [list(np.flatnonzero(modes == m)) for m in np.unique(modes)]
    order = []
    while len(order) < n:
        for queue in queues:
            if queue and len(order) < n:
                order.append(queue.pop(0))
    return start[np.asarray(order)]


def summarize(name, draws, mode_fn, weights, **row):
    """Row of the table from draws of shape (chains, steps, dim)."""
    draws = np.asarray(draws, np.float64)
    dataset = az.convert_to_dataset(draws)
    ess = float(az.ess(dataset, method="bulk").to_array().min())
    rhat = float(az.rhat(dataset, method="rank").to_array().max())
    modes = mode_fn(draws).ravel()
    found = np.bincount(modes, minlength=len(weights)) / modes.size
    row.update(
        sampler=name,
        ess=ess,
        ess_per_grad=ess / row["grads"],
        ess_per_s=ess / row["sample_s"],
        weight_err=float(np.max(np.abs(found - np.asarray(weights)))),
        weights=found,
        rhat=rhat,
    )
    return row


def timed_sampling(mcmc, rng_key, extra_fields=()):
    """Sampling phase after ``mcmc.warmup``: draws and execution-only seconds.

    The first ``run`` compiles the sampling loop; a second ``run`` from the same
    post-warmup state (a fresh key) reuses it, so its wall time is execution
    only. Its draws are the ones reported.
    """
    mcmc.run(jax.random.fold_in(rng_key, 1), extra_fields=extra_fields)
    jax.block_until_ready(mcmc.get_samples())
    t0 = time.perf_counter()
    mcmc.run(rng_key, extra_fields=extra_fields)
    draws = np.asarray(mcmc.get_samples(group_by_chain=True))
    return draws, time.perf_counter() - t0


def run_flow_mala(logdensity, start, seed, global_every=None, num_local_steps=1):
    kernel = FlowMALA(
        potential_fn=lambda x: -logdensity(x),
        proposal=CouplingFlowProposal(),
        global_every=global_every,
        num_local_steps=num_local_steps,
        init_strategy=init_to_sample,  # the start is already spread
    )
    mcmc = MCMC(
        kernel,
        num_warmup=NUM_WARMUP,
        num_samples=NUM_SAMPLES,
        num_chains=NUM_WALKERS,
        chain_method="vectorized",
        progress_bar=False,
    )
    key_warmup, key_sample = jax.random.split(jax.random.key(seed))
    t0 = time.perf_counter()
    mcmc.warmup(key_warmup, init_params=jnp.asarray(start))
    jax.block_until_ready(mcmc.post_warmup_state)
    t1 = time.perf_counter()
    draws, sample_s = timed_sampling(mcmc, key_sample)
    last = mcmc.last_state
    global_on = global_every != 0
    grads_per_iter = num_local_steps + (1 if global_on else 0)
    row = dict(
        draws=draws,
        grads=NUM_WALKERS * NUM_SAMPLES * grads_per_iter,
        warmup_grads=NUM_WALKERS * NUM_WARMUP * grads_per_iter,
        warmup_s=t1 - t0,
        sample_s=sample_s,
        local_acc=float(last.mean_accept_prob),
        global_acc=float(last.mean_global_accept_prob) if global_on else float("nan"),
        step_size=float(last.step_size),
    )
    if global_on:
        t3 = time.perf_counter()
        row["evidence"] = kernel.log_evidence(
            rng_key=jax.random.key(seed + 1000), num_samples=20000
        )
        row["evidence_s"] = time.perf_counter() - t3
    return row


def run_nuts(logdensity, start, seed):
    mcmc = MCMC(
        NUTS(potential_fn=lambda x: -logdensity(x)),
        num_warmup=NUTS_WARMUP,
        num_samples=NUTS_SAMPLES,
        num_chains=NUTS_CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )
    key_warmup, key_sample = jax.random.split(jax.random.key(seed))
    t0 = time.perf_counter()
    mcmc.warmup(
        key_warmup,
        init_params=jnp.asarray(start[:NUTS_CHAINS]),
        extra_fields=("num_steps",),
        collect_warmup=True,
    )
    warmup_grads = int(np.sum(mcmc.get_extra_fields()["num_steps"]))
    t1 = time.perf_counter()
    draws, sample_s = timed_sampling(mcmc, key_sample, ("num_steps", "accept_prob"))
    fields = mcmc.get_extra_fields()
    return dict(
        draws=draws,
        grads=int(np.sum(fields["num_steps"])),
        warmup_grads=warmup_grads,
        warmup_s=t1 - t0,
        sample_s=sample_s,
        local_acc=float(np.mean(fields["accept_prob"])),
        global_acc=float("nan"),
    )


def run_flowmc(python, target_kind, dim, start, seed):
    with tempfile.TemporaryDirectory() as tmp:
        init_path, out_path = (
            os.path.join(tmp, "init.npy"),
            os.path.join(tmp, "out.npz"),
        )
        np.save(init_path, start)
        env = dict(os.environ, PYTHONPATH=str(HERE), JAX_PLATFORMS="cpu")
        cmd = [
            python,
            str(HERE / "_flowmc_runner.py"),
            target_kind,
            str(dim),
            str(seed),
            init_path,
            out_path,
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        out = np.load(out_path)
        positions = out["positions"]
        local = out["local_accs"]
        glob = out["global_accs"]
    # The production buffers interleave blocks of 100 local and 10 global
    # steps; a buffer slot holds 1/0 for its own kind of step and -inf (never
    # written) for the other kind.
    n_chains = positions.shape[0]
    n_loops, n_local, n_global = 20, 100, 10
    return dict(
        draws=positions,
        grads=n_chains * n_loops * n_local * 2,
        warmup_grads=n_chains * n_loops * n_local * 2,
        warmup_s=float(out["train_s"]),
        sample_s=float(out["production_s"]),
        local_acc=float(np.mean(local[np.isfinite(local) & (local >= 0)])),
        global_acc=float(np.mean(glob[np.isfinite(glob) & (glob >= 0)])),
        values=n_chains * n_loops * n_global,
    )


def fmt(value, spec):
    return (
        "—"
        if value is None or (isinstance(value, float) and np.isnan(value))
        else format(value, spec)
    )


def table(rows):
    head = (
        "| target | sampler | grads (sampling) | bulk ESS (min) | ESS / grad | ESS / s "
        "| warmup s (compile + training) | sampling s | max weight err | max R-hat "
        "| local acc. | global acc. | log Z − true (± se) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ev = r.get("evidence")
        if ev is None:
            logz = "—"
        elif r["true_log_Z"] is None:
            logz = f"{ev.log_Z:.3f} ± {ev.log_Z_se:.3f} (truth unknown; k̂ {ev.pareto_k:.2f})"
        else:
            logz = f"{ev.log_Z - r['true_log_Z']:+.3f} ± {ev.log_Z_se:.3f} (k̂ {ev.pareto_k:.2f})"
        lines.append(
            f"| {r['target']} | {r['sampler']} | {r['grads']:,} | {r['ess']:.0f} "
            f"| {r['ess_per_grad']:.4f} | {r['ess_per_s']:.0f} | {r['warmup_s']:.1f} "
            f"| {r['sample_s']:.1f} | {r['weight_err']:.3f} | {r['rhat']:.3f} "
            f"| {fmt(r['local_acc'], '.2f')} | {fmt(r['global_acc'], '.2f')} | {logz} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flowmc-python", default="/work/venv-flowmc/bin/python")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results" / "flow_mala.md"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 100 + 100 iterations (NUTS 50 + 50), results not saved",
    )
    parser.add_argument("--targets", default="0,1,2", help="indices of targets to run")
    args = parser.parse_args()
    if args.quick:
        global NUM_WARMUP, NUM_SAMPLES, NUTS_WARMUP, NUTS_SAMPLES
        NUM_WARMUP = NUM_SAMPLES = 100
        NUTS_WARMUP = NUTS_SAMPLES = 50
        args.out = None
    chosen = [int(i) for i in args.targets.split(",")]

    rows, notes = [], []
    t_start = time.perf_counter()
    for index, (
        label,
        kind,
        dim,
        logdensity,
        mode_fn,
        weights,
        true_log_z,
    ) in enumerate(targets()):
        if index not in chosen:
            continue
        start = spread_start(logdensity, dim, args.seed)
        runs = [
            ("FlowMALA", lambda: run_flow_mala(logdensity, start, args.seed)),
            (
                "MALA",
                lambda: run_flow_mala(
                    logdensity, start, args.seed, global_every=0, num_local_steps=2
                ),
            ),
            (
                "NUTS",
                lambda: run_nuts(
                    logdensity, balanced_subset(start, mode_fn, NUTS_CHAINS), args.seed
                ),
            ),
        ]
        if args.flowmc_python and Path(args.flowmc_python).exists():
            runs.append(
                (
                    "flowMC 0.6.5",
                    lambda: run_flowmc(
                        args.flowmc_python,
                        kind,
                        dim,
                        balanced_subset(start, mode_fn, 20),
                        args.seed,
                    ),
                )
            )
        for name, run in runs:
            try:
                out = run()
            except Exception as err:  # noqa: BLE001 - reported in the notes
                notes.append(f"{label} / {name}: failed: {err!r}"[:500])
                print(notes[-1], flush=True)
                continue
            row = summarize(
                name,
                out.pop("draws"),
                mode_fn,
                weights,
                target=label,
                true_log_Z=true_log_z,
                **out,
            )
            rows.append(row)
            print(
                f"{label:18s} {name:14s} ESS/grad {row['ess_per_grad']:.4f} "
                f"weights {np.round(row['weights'], 3)} R-hat {row['rhat']:.3f} "
                f"warmup {row['warmup_s']:.0f}s sampling {row['sample_s']:.0f}s",
                flush=True,
            )
    total = time.perf_counter() - t_start
    text = "\n".join(
        [
            "# FlowMALA benchmark",
            "",
            f"Command: `taskset -c 1 python benchmarks/flow_mala.py` (one CPU core, float32, "
            f"jax {jax.__version__}); total {total / 60:.1f} min. "
            "Settings and column definitions: the docstring of `benchmarks/flow_mala.py`.",
            "",
            table(rows),
            "",
            *(f"- {n}" for n in notes),
        ]
    )
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
