"""Test set-up: 8 fake CPU devices for mesh tests, float32 matmuls, small model configs."""

import os
import tempfile

# Compiled programs are cached on disk and shared by the suite's processes (the launcher tests
# start several identical runs); set before jax starts so subprocesses inherit it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "selfimprove-test-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# Must happen before jax initialises its backends.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from selfimprove.models import TransformerConfig  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def small_config() -> TransformerConfig:
  """A 2-layer model small enough to compile in seconds; dims divide a 2x2x2 mesh."""
  return TransformerConfig(vocab_size=128, embed_dim=64, mlp_dim=128, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=16)
