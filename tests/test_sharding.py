"""Mesh and logical-axis sharding on 8 fake CPU devices (set in conftest.py)."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, PartitionSpec as P

from selfimprove import sharding
from selfimprove.models import Transformer, init_model
from selfimprove.sampling import SamplingConfig, sample


@pytest.fixture
def mesh():
  assert jax.device_count() == 8, "conftest.py should give 8 fake CPU devices"
  return sharding.make_mesh(data=2, fsdp=2, tensor=2)


def test_make_mesh_sizes_and_axis_types():
  mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=1)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert all(t == AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match="needs 12 devices but 8"):
    sharding.make_mesh(data=3, fsdp=2, tensor=2)
  with pytest.raises(ValueError, match="Only one mesh axis may be -1"):
    sharding.make_mesh(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.make_mesh(data=-1, fsdp=3)


def test_explicit_meshes_are_refused_with_a_clear_error(small_config):
  explicit = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
  _, params = init_model(small_config)
  with pytest.raises(ValueError, match="AxisType.Auto"):
    sharding.shard_state(params, explicit, sharding.DEFAULT_RULES)


def test_logical_to_spec():
  rules = sharding.DEFAULT_RULES
  assert sharding.logical_to_spec(("batch", "seq", "act_embed"), rules) == P(("data", "fsdp"), None, None)
  assert sharding.logical_to_spec(("layers", "embed", "heads", "head_dim"), rules) == P(None, "fsdp", "tensor", None)
  # A mesh without `fsdp` drops it; a mesh axis is used at most once per array.
  assert sharding.logical_to_spec(("batch", "embed"), rules, ("data", "tensor")) == P("data", None)
  assert sharding.logical_to_spec(("batch", "embed"), rules) == P(("data", "fsdp"), None)
  with pytest.raises(ValueError, match="'widgets' has no entry"):
    sharding.logical_to_spec(("widgets",), rules)


def test_parameters_are_sharded_as_the_rules_say(small_config, mesh):
  graphdef, params = sharding.init_sharded(lambda: Transformer(small_config, rngs=nnx.Rngs(0)),
                                           mesh, small_config.sharding_rules)
  expected = {
      ("embedding",): P("tensor", "fsdp"),
      ("lm_head",): P("fsdp", "tensor"),
      ("blocks", "attention", "q_proj"): P(None, "fsdp", "tensor", None),
      ("blocks", "attention", "k_proj"): P(None, "fsdp", "tensor", None),
      ("blocks", "attention", "o_proj"): P(None, "tensor", None, "fsdp"),
      ("blocks", "mlp", "gate_proj"): P(None, "fsdp", "tensor"),
      ("blocks", "mlp", "down_proj"): P(None, "tensor", "fsdp"),
      ("blocks", "mlp_norm", "scale"): P(None, None),
  }
  flat = dict(nnx.to_flat_state(params))
  for path, spec in expected.items():
    array = flat[path][...]
    assert array.sharding.spec == spec, path
    shard_shape = array.addressable_shards[0].data.shape
    expected_shard = tuple(dim // (mesh.shape[axis] if axis else 1)
                           for dim, axis in zip(array.shape, tuple(spec) + (None,) * array.ndim))
    assert shard_shape == expected_shard, path
  # Born sharded from the same seed = the same values as an unsharded init.
  _, unsharded = init_model(small_config, seed=0)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(unsharded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _batch(config):
  tokens = np.random.default_rng(2).integers(3, config.vocab_size, (4, 8)).astype(np.int32)
  mask = np.ones_like(tokens, bool)
  mask[1, :3] = False
  tokens[~mask] = 0
  return tokens, mask


def test_sharded_forward_equals_unsharded(small_config, mesh):
  graphdef, params = init_model(small_config)
  tokens, mask = _batch(small_config)

  def forward(params, tokens, mask):
    return nnx.merge(graphdef, params)(tokens, mask)[0]

  expected = jax.jit(forward)(params, tokens, mask)
  rules = small_config.sharding_rules
  sharded_params = sharding.shard_state(params, mesh, rules)
  sharded_tokens, sharded_mask = sharding.shard_batch((tokens, mask), mesh, rules)
  assert sharded_tokens.sharding.spec == P(("data", "fsdp"), None)
  with jax.set_mesh(mesh):
    logits = jax.jit(forward)(sharded_params, sharded_tokens, sharded_mask)
  assert logits.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)


def test_sharded_training_step_compiles_without_full_rematerialization(small_config, mesh, capfd):
  """XLA's SPMD partitioner warns (on stderr) when it must replicate a whole tensor to reshard it;
  the embedding lookup did so on a data x fsdp x tensor mesh. Forward, backward and sampling."""
  graphdef, params = init_model(small_config)
  tokens, mask = _batch(small_config)
  rules = small_config.sharding_rules
  config = SamplingConfig(max_new_tokens=3, greedy=True)

  def loss(params, tokens, mask):
    return nnx.merge(graphdef, params)(tokens, mask)[0].mean()

  def run(params, tokens, mask):
    return sample(nnx.merge(graphdef, params), tokens, mask, jax.random.key(0), config).tokens

  capfd.readouterr()
  with jax.set_mesh(mesh):
    args = (sharding.shard_state(params, mesh, rules),
            *sharding.shard_batch((tokens, mask), mesh, rules))
    jax.jit(jax.value_and_grad(loss)).lower(*args).compile()
    jax.jit(run).lower(*args).compile()
  assert "Involuntary full rematerialization" not in capfd.readouterr().err


def test_sharded_greedy_sampling_equals_unsharded(small_config, mesh):
  graphdef, params = init_model(small_config)
  tokens, mask = _batch(small_config)
  config = SamplingConfig(max_new_tokens=5, greedy=True)

  def run(params, tokens, mask):
    return sample(nnx.merge(graphdef, params), tokens, mask, jax.random.key(0), config).tokens

  expected = jax.jit(run)(params, tokens, mask)
  rules = small_config.sharding_rules
  with jax.set_mesh(mesh):
    got = jax.jit(run)(sharding.shard_state(params, mesh, rules),
                       *sharding.shard_batch((tokens, mask), mesh, rules))
  np.testing.assert_array_equal(got, expected)


def test_indivisible_parameter_names_the_parameter(small_config):
  mesh = sharding.make_mesh(data=1, fsdp=1, tensor=8)
  _, params = init_model(small_config)   # 4 heads cannot split 8 ways
  with pytest.raises(ValueError, match=r"Parameter blocks/attention/k_proj of shape \(2, 64, 2, 16\).*not divisible"):
    sharding.shard_state(params, mesh, small_config.sharding_rules)
