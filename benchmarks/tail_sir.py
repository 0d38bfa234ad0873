"""How far could reweighting go from a trained chain's CNFs, with or without a wide component?

Loads a chain kept by ``paper_targets.py --chain-dir DIR``, draws 100 000 proposals
from its plain CNFs, from the mixture ``(1 - w) p_CNF + w q`` with ``q`` a
Student-t over the latent (the defensive layer's proposal above the CNFs,
``numpyro_jko.defensive``), and from the CNFs over the mixture ``(1 - w) N + w q``
taken in the latent (the defensive layer's default place), resamples 20 000 of
each by importance weight (SIR)
and prints the weights' ESS, the IS ``log Z`` and the energy distance of the
resampled draws against exact ones.  SIR is not what the chain does (its rejection
layers raise a region's density at most ``1 + rate`` times each); it bounds what
any reweighting of that proposal can reach:

    python benchmarks/paper_targets.py --config default --targets mustache --chain-dir chains
    python benchmarks/tail_sir.py mustache chains/mustache_default_seed0.pkl --weight 0.1 --df 3

Results: ``benchmarks/results/jko_levers.md`` (sessions 9 and 10).
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
    parser.add_argument("--scale", type=float, default=1.0, help="q's scale / latent's")
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--num", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    target = make_target(args.target)
    with open(args.chain, "rb") as f:
        saved = pickle.load(f)
    chain = chain_lib.chain_from_dict(saved["chain"], target.logdensity_fn)
    # The plain CNFs: every CNF under the first rejection layer (a kept chain may
    # have a defensive layer among them, which is left out here).
    first_r = saved["layers"].index("R")
    cnf_layers = tuple(
        lay for lay in chain.layers[:first_r] if isinstance(lay, chain_lib.CNFLayer)
    )
    layer = defensive.DefensiveLayer(args.weight, args.df, args.scale)
    proposals = {
        "CNFs": cnf_layers,
        f"{1 - args.weight:g} CNFs + {args.weight:g} q over them": cnf_layers
        + (layer,),
        f"CNFs over {1 - args.weight:g} latent + {args.weight:g} q": (layer,)
        + cnf_layers,
    }
    exact = target.sample(jax.random.key(10 * args.seed + 7), args.num)
    print(
        f"{args.target}: latent scale {jnp.round(chain.latent_scale, 2)}; "
        f"q: Student-t df {args.df:g}, scale x {args.scale:g}"
    )
    print("| proposal | ESS / pool | log Z | ED (SIR) |\n|---|---|---|---|")
    for name, layers in proposals.items():
        x, energy, log_g = jko.draw(
            jax.random.key(10 * args.seed + 1), chain._replace(layers=layers), args.pool
        )
        resampled, ess, log_z = sir(
            jnp.asarray(x),
            jnp.asarray(log_g + energy),
            jax.random.key(10 * args.seed + 4),
            args.num,
        )
        ed = float(
            metrics.energy_distance(
                resampled, exact, jax.random.key(10 * args.seed + 5)
            )
        )
        print(f"| {name} | {ess:.0f} / {args.pool} | {log_z:+.4f} | {ed:.2e} |")


if __name__ == "__main__":
    main()
