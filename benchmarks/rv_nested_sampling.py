"""Evidence cross-check on BL2009 data set 1: JKOSampler vs NumPyro's NestedSampler.

    pip install -e ".[nested]"      # jaxns < 3 (benchmark only; it turns on x64)
    taskset -c 1 python benchmarks/rv_nested_sampling.py [--live-points 1000]

For 0, 1 and 2 planets, ``log Z`` of the example's fit
(:func:`examples/exoplanet_rv.fit`) is compared with that of
:class:`numpyro.contrib.nested_sampling.NestedSampler` (jaxns) on the same
likelihood and the same prior over the physical parameters.  The nested sampler
draws every site through its inverse CDF, which the model's sampler-friendly
sites (a flat Dirichlet for the ordered log periods, 2-vectors for the angles)
do not have, so it gets an equivalent model written with uniform and normal
sites: unordered i.i.d. log-uniform periods (the same evidence, the likelihood
being symmetric in the planets), ``e ~ U(0, 0.99)``, ``omega`` and the mean
longitude uniform, ``log K`` uniform, ``log jitter`` normal, and the example
model's own offset-marginal likelihood (its ``obs_marginal`` factor, evaluated
at those values).  The JKO fits run first, in float32: importing jaxns switches
JAX to x64.  Saves ``benchmarks/results/rv_nested_sampling.md``.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

import exoplanet_rv as ex  # noqa: E402

NAME = "bl2009_1"
E_MAX = 0.99


def nested_model_for(base):
    """``base`` (a Keplerian model) with inverse-CDF-friendly sites, same evidence.

    Examples
    --------
    >>> d = ex.load_rv_dataset(NAME)
    >>> base = ex.build_model(d, ex.PROBLEMS[NAME], 1)
    >>> m = nested_model_for(base)
    >>> tr = handlers.trace(handlers.seed(m, 0)).get_trace()
    >>> sorted(k for k, v in tr.items() if v["type"] == "sample")
    ['e', 'lam', 'log_K', 'log_jitter', 'loglik', 'omega', 'u_log_P']
    """
    n = base.num_planets
    k_lo, k_hi = np.log(base.K_bounds)

    def model():
        log_jitter = numpyro.sample(
            "log_jitter", dist.Normal(base.jitter_log_loc, 2.0).to_event(1)
        )
        values = {"log_jitter": log_jitter}
        if n:
            shape = dist.Uniform(0.0, 1.0).expand([n]).to_event(1)
            u = numpyro.sample("u_log_P", shape)
            e = numpyro.sample("e", dist.Uniform(0.0, E_MAX).expand([n]).to_event(1))
            angle = dist.Uniform(-math.pi, math.pi).expand([n]).to_event(1)
            omega = numpyro.sample("omega", angle)
            lam = numpyro.sample("lam", angle)
            log_K = numpyro.sample(
                "log_K", dist.Uniform(k_lo, k_hi).expand([n]).to_event(1)
            )
            # The base model orders the periods; permute every planet's values.
            order = jnp.argsort(u)
            u, e, omega, lam, log_K = (a[order] for a in (u, e, omega, lam, log_K))
            r = jnp.sqrt(-2.0 * jnp.log1p(-e / E_MAX))
            values |= {
                "log_P_spacings": jnp.diff(
                    jnp.concatenate([jnp.zeros(1), u, jnp.ones(1)])
                ),
                "ecc_vec": jnp.stack([r * jnp.cos(omega), r * jnp.sin(omega)], -1),
                "phase_vec": jnp.stack([jnp.cos(lam), jnp.sin(lam)], -1),
                "log_K": log_K,
            }
        with handlers.block():
            tr = handlers.trace(handlers.substitute(base, data=values)).get_trace()
        site = tr["obs_marginal"]
        numpyro.factor("loglik", site["fn"].log_prob(site["value"]))

    return model


def read_jko_table(path, title):
    """``{planets: (log Z, se, seconds)}`` from a table of the example."""
    out = {}
    for line in pathlib.Path(path).read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 10 and cells[0] == title:
            z, se = (float(v) for v in cells[2].split("±"))
            out[int(cells[1])] = (z, se, float(cells[8]))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--live-points", type=int, default=1000)
    parser.add_argument("--max-samples", type=int, default=200_000)
    parser.add_argument("--planets", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument(
        "--out", type=pathlib.Path, default=HERE / "results" / "rv_nested_sampling.md"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--jko-table",
        type=pathlib.Path,
        default=None,
        help="reuse the JKO rows of a table saved by examples/exoplanet_rv.py",
    )
    args = parser.parse_args(argv)
    problem = ex.PROBLEMS[NAME]
    data = ex.load_rv_dataset(NAME)

    ours = (
        {} if args.jko_table is None else read_jko_table(args.jko_table, problem.title)
    )
    for n in args.planets:
        if n not in ours:
            f = ex.fit(problem, data, n, jax.random.key(args.seed + n))
            ours[n] = (f.log_Z, f.log_Z_se, f.seconds)
        z, se, sec = ours[n]
        print(
            f"JKO, {n} planet(s): log Z = {z:.3f} ± {se:.3f} in {sec:.0f} s", flush=True
        )

    from numpyro.contrib.nested_sampling import NestedSampler  # x64 from here on

    rows = []
    for n in args.planets:
        base = ex.build_model(data, problem, n)
        ns = NestedSampler(
            nested_model_for(base),
            constructor_kwargs={
                "num_live_points": args.live_points,
                "max_samples": args.max_samples,
            },
        )
        t0 = time.perf_counter()
        ns.run(jax.random.key(args.seed + 10 + n))
        jax.block_until_ready(ns._results.log_Z_mean)
        t_ns = time.perf_counter() - t0
        res = ns._results
        z, z_se = float(res.log_Z_mean), float(res.log_Z_uncert)
        jz, jse, jsec = ours[n]
        diff = jz - z
        se = math.hypot(jse, z_se)
        ok = abs(diff) <= max(se, 0.3)
        print(
            f"NS, {n} planet(s): log Z = {z:.3f} ± {z_se:.3f} in {t_ns:.0f} s",
            flush=True,
        )
        rows.append(
            f"| {n} | {jz:.3f} ± {jse:.3f} | {jsec:.0f} | {z:.3f} ± {z_se:.3f} "
            f"| {t_ns:.0f} | {int(res.total_num_likelihood_evaluations)} "
            f"| {int(res.termination_reason)} | {diff:+.3f} | {'yes' if ok else 'NO'} |"
        )
    text = (
        f"BL2009 data set 1. NestedSampler: jaxns, {args.live_points} live points, "
        f"max_samples {args.max_samples} (jaxns termination bits: 1 = max_samples hit, "
        "4 = remaining evidence below dlogZ).\n\n"
        "| planets | JKO log Z ± se | JKO s | NS log Z ± se | NS s | NS likelihood evals "
        "| NS termination | JKO − NS | within max(se, 0.3) |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
