"""Data parallelism over devices: the same key gives the same chain and draws.

Forced host devices (``--xla_force_host_platform_device_count``) stand in for GPUs:
the XLA flag must be set before JAX starts, so each layout runs in a subprocess.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

PROBE = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from numpyro_jko import jko, sharding

def logdensity(x):  # two separated modes in 2-D
    a = -0.5 * jnp.sum((x - jnp.array([1.5, 0.0])) ** 2) / 0.25
    b = -0.5 * jnp.sum((x + jnp.array([1.5, 0.0])) ** 2) / 0.25
    return jnp.logaddexp(a, b)

config = jko.JKOConfig(num_particles=1024, num_cnf=1, num_blocks=1,
                       num_iterations=40, batch_size=128, hidden=16,
                       num_hidden_layers=2, min_elbo_gain=0.0, latent_moments=0)
chain, info = jko.fit(jax.random.key(0), logdensity, 2, config, progress_bar=False)
x, log_p = jko.sample(jax.random.key(1), chain, 4096)
lp = jko.log_prob(chain, x[:512])
# The training minibatch really is split (not only the draws).
probe = jax.jit(lambda v: sharding.constrain(v) + 0)(jnp.zeros((512, 2)))
np.savez(sys.argv[1], x=np.asarray(x), log_p=np.asarray(log_p), lp=np.asarray(lp),
         loss=np.asarray(info.losses[0]), log_c=np.asarray(info.log_c))
print(json.dumps({"devices": jax.device_count(),
                  "shards": len(probe.sharding.device_set)}))
"""


def _run(tmp_path, devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    )
    env["JAX_PLATFORMS"] = "cpu"
    out = tmp_path / f"draws_{devices}.npz"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads(proc.stdout.strip().splitlines()[-1])
    return meta, dict(np.load(out))


@pytest.mark.slow
def test_two_devices_give_the_draws_of_one(tmp_path):
    meta1, one = _run(tmp_path, 1)
    meta2, two = _run(tmp_path, 2)
    assert meta1 == {"devices": 1, "shards": 1}
    assert meta2 == {"devices": 2, "shards": 2}
    # Training: reductions are reassociated across devices, nothing else changes.
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(two["log_c"], one["log_c"], rtol=1e-4, atol=1e-4)
    # Draws: the same points, with the same densities, up to float32 round-off.  A
    # draw sitting on a rejection threshold could flip; none does here, and the
    # tolerance does not hide one (a flip moves a point by the mode separation).
    np.testing.assert_allclose(two["x"], one["x"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(two["log_p"], one["log_p"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(two["lp"], one["lp"], rtol=1e-3, atol=1e-3)
