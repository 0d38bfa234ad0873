# SPDX-License-Identifier: Apache-2.0
"""Run flowMC's RQSpline_MALA bundle on one benchmark target (subprocess helper).

Executed by ``benchmarks/flow_mala.py`` with the Python of a separate venv that
has flowmc 0.6.5 installed (flowMC needs Python >= 3.12; it is never a
dependency of numpyro_jko). Usage::

    python _flowmc_runner.py TARGET DIM SEED INIT.npy OUT.npz

Writes production positions (chains, steps, dim), acceptance flags and timings
(``train_s``: everything before the production phase, compilation included;
``production_s``) to ``OUT.npz``.
"""

import json
import sys
import time

import jax
import numpy as np
from flow_mala_targets import dual_moon_logdensity, make_mixture

# flowMC's dual-moon tutorial settings (docs/tutorials/dualmoon.ipynb), used for
# every target: 20 chains, 100 local / 10 global steps per loop, 20 training and
# 20 production loops, 5 epochs, learning rate 5e-3, batch 5000, 5000 examples;
# everything else (RQ spline 4 layers x [32, 32] x 8 bins, MALA step 0.1 with
# its step-size adaptation) at the bundle's defaults.
SETTINGS = dict(
    n_local_steps=100,
    n_global_steps=10,
    n_training_loops=20,
    n_production_loops=20,
    n_epochs=5,
    learning_rate=5e-3,
    batch_size=5000,
    n_max_examples=5000,
)
N_CHAINS = 20


def main():
    from flowMC.resource_strategy_bundle.RQSpline_MALA import RQSpline_MALA_Bundle
    from flowMC.Sampler import Sampler
    from flowMC.strategy.lambda_function import Lambda

    target, dim, seed, init_path, out_path = sys.argv[1:6]
    dim, seed = int(dim), int(seed)
    if target == "dual_moon":
        logdensity = dual_moon_logdensity
    else:
        logdensity, _ = make_mixture(dim)
    initial = np.load(init_path)[:N_CHAINS]
    key = jax.random.key(seed)
    bundle = RQSpline_MALA_Bundle(
        key,
        N_CHAINS,
        dim,
        lambda x, data: logdensity(x),
        **SETTINGS,
    )
    sampler = Sampler(
        n_dim=dim,
        n_chains=N_CHAINS,
        rng_key=key,
        resource_strategy_bundles=bundle,
        checkpoint_interval=0,
    )
    # Time stamp at the switch to production (the "reset_steppers" strategy).
    marks = {}
    reset = sampler.strategies["reset_steppers"]

    def stamped(rng_key, resources, position, data):
        marks["production"] = time.perf_counter()
        return reset(rng_key, resources, position, data)

    sampler.strategies["reset_steppers"] = Lambda(stamped)
    start = time.perf_counter()
    sampler.sample(jax.numpy.asarray(initial), {})
    end = time.perf_counter()
    res = sampler.resources
    positions = np.asarray(res["positions_production"].data)
    local = np.asarray(res["local_accs_production"].data)
    glob = np.asarray(res["global_accs_production"].data)
    np.savez(
        out_path,
        positions=positions,
        local_accs=local,
        global_accs=glob,
        train_s=marks["production"] - start,
        production_s=end - marks["production"],
        settings=json.dumps(SETTINGS),
    )


if __name__ == "__main__":
    main()
