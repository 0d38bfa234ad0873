"""Long NUTS reference for ``numpyro_models.mixed_supports`` (run once, stored as JSON).

    taskset -c 1 python tests/data/make_mixed_reference.py

Writes ``tests/data/mixed_supports_nuts.json``: posterior mean, sd and Monte Carlo
standard error (sd / sqrt(ESS)) of every latent coordinate and of the
deterministic site, from 4 NUTS chains of 25 000 draws (r_hat reported too).
"""

import json
import pathlib
import sys

import jax
import numpy as np
from numpyro.diagnostics import summary
from numpyro.infer import MCMC, NUTS

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from numpyro_models import MIXED_Y, mixed_supports  # noqa: E402


def main():
    mcmc = MCMC(
        NUTS(mixed_supports),
        num_warmup=2000,
        num_samples=25_000,
        num_chains=4,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(2024), MIXED_Y)
    samples = mcmc.get_samples(group_by_chain=True)
    stats = summary(jax.device_get(samples), group_by_chain=True)
    out = {}
    for name, site in stats.items():
        mean, sd = np.atleast_1d(site["mean"]), np.atleast_1d(site["std"])
        ess, r_hat = np.atleast_1d(site["n_eff"]), np.atleast_1d(site["r_hat"])
        out[name] = {
            "mean": mean.tolist(),
            "sd": sd.tolist(),
            "mcse": (sd / np.sqrt(ess)).tolist(),
            "ess": ess.tolist(),
            "r_hat": r_hat.tolist(),
        }
    out["_meta"] = {
        "sampler": "NUTS, 4 chains x 25000 draws, 2000 warmup, key 2024",
        "data": MIXED_Y.tolist(),
    }
    path = HERE / "mixed_supports_nuts.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
