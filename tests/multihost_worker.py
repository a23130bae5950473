"""One process of the two-process test in test_multihost.py (not collected by pytest).

Usage: python tests/multihost_worker.py PROCESS_ID PORT
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")
process_id, port = int(sys.argv[1]), int(sys.argv[2])
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=process_id)

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from selfimprove import sharding  # noqa: E402
from selfimprove.models import Transformer, TransformerConfig  # noqa: E402
from selfimprove.sampling import SamplingConfig, sample  # noqa: E402

assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4

config = TransformerConfig(vocab_size=128, embed_dim=64, mlp_dim=128, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=16)
rules = config.sharding_rules
mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
graphdef, params = sharding.init_sharded(lambda: Transformer(config, rngs=nnx.Rngs(0)), mesh, rules)

global_tokens = np.random.default_rng(0).integers(3, 128, (8, 6)).astype(np.int32)
global_mask = np.ones_like(global_tokens, bool)
global_mask[::3, :2] = False
rows = slice(4 * process_id, 4 * process_id + 4)   # this process's half of the global batch
tokens, mask = sharding.shard_batch((global_tokens[rows], global_mask[rows]), mesh, rules)
assert tokens.shape == (8, 6)


def run(params, tokens, mask):
  model = nnx.merge(graphdef, params)
  logits, _ = model(tokens, mask)
  rollout = sample(model, tokens, mask, jax.random.key(0), SamplingConfig(max_new_tokens=4, greedy=True))
  return logits, rollout.tokens


with jax.set_mesh(mesh):
  logits, sampled = jax.jit(run)(params, tokens, mask)
logits = multihost_utils.process_allgather(logits, tiled=True)
sampled = multihost_utils.process_allgather(sampled, tiled=True)

# Reference: the same model, unsharded, on this process's first local device.
local = jax.local_devices()[0]
reference_params = jax.device_put(multihost_utils.process_allgather(params, tiled=True), local)
expected_logits, expected_sampled = jax.jit(run)(reference_params, jax.device_put(global_tokens, local),
                                                 jax.device_put(global_mask, local))
np.testing.assert_allclose(logits, expected_logits, atol=1e-5, rtol=1e-5)
np.testing.assert_array_equal(sampled, expected_sampled)
print(f"process {process_id}: OK")
