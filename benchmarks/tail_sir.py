"""How far could reweighting go from a trained chain's CNFs, with or without a wide component?

Loads a chain kept by ``paper_targets.py --chain-dir DIR``, draws 100 000 proposals
from its plain CNFs, or from the mixture ``(1 - w) p_CNF + w q`` with ``q`` the
latent Gaussian or a Student-t over it (the defensive layer's proposal,
``numpyro_jko.defensive``), resamples 20 000 of them by importance weight (SIR)
and prints the weights' ESS, the IS ``log Z`` and the energy distance of the
resampled draws against exact ones.  SIR is not what the chain does (its rejection
layers raise a region's density at most ``1 + rate`` times each); it bounds what
any reweighting of that proposal can reach:

    python benchmarks/paper_targets.py --config default --targets mustache --chain-dir chains
    python benchmarks/tail_sir.py mustache chains/mustache_default_seed0.pkl --weight 0.1 --df 3

``--df 0`` uses the Gaussian latent itself as ``q``.  Results:
``benchmarks/results/jko_levers.md`` (session 9).
"""

from __future__ import annotations

import argparse
import pickle

import jax
import jax.numpy as jnp
from paper_targets import make_target  # same directory: the targets by name

from numpyro_jko import chain as chain_lib
from numpyro_jko import defensive, jko, metrics


def sir(x, log_w, key, num):
    log_w = jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf)
    w = jnp.exp(log_w - log_w.max())
    ess = float(w.sum() ** 2 / (w**2).sum())
    log_z = float(jnp.log(jnp.mean(w)) + log_w.max())
    idx = jax.random.choice(key, x.shape[0], (num,), p=w / w.sum())
    return x[idx], ess, log_z


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("chain", help="a pickle written by paper_targets --chain-dir")
    parser.add_argument("--weight", type=float, default=0.1)
    parser.add_argument("--df", type=float, default=3.0)
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--num", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    target = make_target(args.target)
    with open(args.chain, "rb") as f:
        saved = pickle.load(f)
    chain = chain_lib.chain_from_dict(saved["chain"], target.logdensity_fn)
    cnfs = chain._replace(layers=chain.layers[: saved["layers"].index("R")])
    mean, scale = chain.latent_mean, chain.latent_scale
    exact = target.sample(jax.random.key(10 * args.seed + 7), args.num)

    x_c, e_c, lg_c = (
        jnp.asarray(a)
        for a in jko.draw(jax.random.key(10 * args.seed + 1), cnfs, args.pool)
    )
    if args.df > 0:
        layer = defensive.DefensiveLayer(args.weight, args.df)
        x_q = defensive.proposal_sample(
            jax.random.key(10 * args.seed + 2), layer, mean, scale, args.pool
        )

        def log_q(x):
            return defensive.proposal_logpdf(x, layer, mean, scale)
    else:
        x_q = mean + scale * jax.random.normal(
            jax.random.key(10 * args.seed + 2), (args.pool, target.dim)
        )

        def log_q(x):
            return -chain_lib.latent_energy(x, mean, scale)

    lp_c_at_q = chain_lib.log_prob(cnfs, x_q)
    from_q = (
        jax.random.uniform(jax.random.key(10 * args.seed + 3), (args.pool,))
        < args.weight
    )
    x = jnp.where(from_q[:, None], x_q, x_c)
    log_p_cnf = jnp.where(from_q, lp_c_at_q, -e_c)
    log_mix = jnp.logaddexp(
        jnp.log1p(-args.weight) + log_p_cnf, jnp.log(args.weight) + log_q(x)
    )
    log_g = jnp.where(
        from_q, chain_lib.eval_logdensity(target.logdensity_fn, x_q), lg_c
    )

    print(f"{args.target}: latent scale {jnp.round(scale, 2)}")
    print("| proposal | ESS / pool | log Z | ED (SIR) |\n|---|---|---|---|")
    for name, xs, log_w in (
        ("CNFs", x_c, lg_c + e_c),
        (
            f"{1 - args.weight:g} CNFs + {args.weight:g} q (df {args.df:g})",
            x,
            log_g - log_mix,
        ),
    ):
        resampled, ess, log_z = sir(
            xs, log_w, jax.random.key(10 * args.seed + 4), args.num
        )
        ed = float(
            metrics.energy_distance(
                resampled, exact, jax.random.key(10 * args.seed + 5)
            )
        )
        print(f"| {name} | {ess:.0f} / {args.pool} | {log_z:+.4f} | {ed:.2e} |")


if __name__ == "__main__":
    main()
