"""Data parallelism: the particle axis sharded over all local devices.

Every expensive array in this package has a leading *particle* axis (training
minibatches, chunks of draws, points whose density is evaluated) and the work on
one particle never looks at another, except for means (the loss, the rejection
rate).  So data parallelism is the whole story: the compiled functions constrain
their particle arrays to a one-dimensional mesh over the local devices
(:func:`jax.lax.with_sharding_constraint`), XLA's SPMD partitioner splits every
solve across the devices, and the few reductions become all-reduces.  Parameters
stay replicated.  Nothing changes for a single device: :func:`constrain` is then
the identity and the compiled programs are the ones of a plain ``jit``.

Random numbers do not depend on the layout (JAX's partitionable threefry, the
default), so the same key gives the same draws on one device or on several, up
to floating-point reassociation in the reductions.

On a multi-GPU host this needs nothing: every local GPU joins the mesh.  On a
cluster, call :func:`jax.distributed.initialize` in every process; each process
shards over its own local devices, and since draws are i.i.d., process ``i`` can
draw with ``jax.random.fold_in(key, jax.process_index())`` from the same chain
(same key and data => the same trained chain in every process) and the draws of all
processes together are one i.i.d. sample.

Examples
--------
>>> import jax.numpy as jnp
>>> from numpyro_jko.sharding import constrain, num_particle_devices
>>> x = constrain(jnp.zeros((8, 2)))  # identity on one device
>>> x.shape, num_particle_devices() >= 1
((8, 2), True)
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["PARTICLE_AXIS", "num_particle_devices", "particle_sharding", "constrain"]

#: Name of the mesh axis the particle dimension is split over.
PARTICLE_AXIS = "particles"


def num_particle_devices() -> int:
    """Number of local devices the particle axis is split over.

    Examples
    --------
    >>> num_particle_devices() >= 1
    True
    """
    return jax.local_device_count()


def particle_sharding(ndim: int = 2) -> NamedSharding | None:
    """The sharding of an ``ndim``-array split along its first (particle) axis.

    ``None`` on a single device (nothing to shard), and under
    :func:`jax.default_device` (the caller pinned the work to one device; a
    callback from inside ``pmap`` does, while the other devices wait for it).

    Examples
    --------
    >>> s = particle_sharding(2)
    >>> s is None or s.spec[0] == PARTICLE_AXIS
    True
    """
    if num_particle_devices() < 2 or jax.config.jax_default_device is not None:
        return None
    mesh = Mesh(jax.local_devices(), (PARTICLE_AXIS,))
    return NamedSharding(mesh, PartitionSpec(PARTICLE_AXIS, *([None] * (ndim - 1))))


def constrain(x):
    """Ask XLA to split ``x`` along its first axis over the local devices.

    Use inside jitted code on arrays with a particle axis; the identity on one
    device, or when the particle count does not divide evenly (small arrays, where
    splitting would not pay anyway).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> jax.jit(lambda v: constrain(v) * 2)(jnp.ones((4, 3))).shape
    (4, 3)
    """
    sharding = particle_sharding(x.ndim)
    if sharding is None or x.shape[0] % num_particle_devices():
        return x
    return jax.lax.with_sharding_constraint(x, sharding)
