"""Test configuration: CPU only, fixed seeds, x64 on demand (JAX_ENABLE_X64=1)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

if os.environ.get("JAX_ENABLE_X64"):
    jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
    """A fixed key: a failure reproduces the next day (no date-based seeds)."""
    return jax.random.key(20261125)
