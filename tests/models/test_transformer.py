"""The transformer against a numpy reference, and KV-cache decoding against full forward passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from selfimprove.models import (PRESETS, TransformerConfig, count_params, get_preset,
                                init_cache, init_model)
from selfimprove.models.kv_cache import grow
from tests.reference_model import reference_logits


def _forward(graphdef):
  return jax.jit(lambda params, tokens, mask: nnx.merge(graphdef, params)(tokens, mask)[0])


def _float64_params(params):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), nnx.to_pure_dict(params))


@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_forward_matches_numpy_reference(small_config, tie_embeddings):
  config = small_config.replace(tie_embeddings=tie_embeddings, rope_theta=500.0)
  graphdef, params = init_model(config, seed=3)
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 11))
  logits = _forward(graphdef)(params, tokens, np.ones_like(tokens, bool))
  for row in range(2):
    expected = reference_logits(_float64_params(params), config, tokens[row])
    np.testing.assert_allclose(logits[row], expected, atol=2e-5, rtol=1e-5)


def _padded_batch(vocab_size, seq=12):
  """Three rows: unpadded, left-padded, right-padded, plus a row with a hole."""
  tokens = np.random.default_rng(1).integers(3, vocab_size, (4, seq)).astype(np.int32)
  mask = np.ones((4, seq), bool)
  mask[1, :4] = False       # left padding
  mask[2, -5:] = False      # right padding
  mask[3, 5:7] = False      # a hole in the middle
  tokens[~mask] = 0
  return tokens, mask


def test_padding_does_not_change_real_tokens_logits(small_config):
  graphdef, params = init_model(small_config)
  forward = _forward(graphdef)
  tokens, mask = _padded_batch(small_config.vocab_size)
  padded_logits = forward(params, tokens, mask)
  for row in range(tokens.shape[0]):
    real = tokens[row][mask[row]][None]
    alone = forward(params, real, np.ones_like(real, bool))[0]
    np.testing.assert_allclose(padded_logits[row][mask[row]], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scan_layers, per_layer", [(True, False), (False, False), (True, True)])
def test_kv_cache_decoding_matches_full_forward(small_config, scan_layers, per_layer):
  """Stacked or per-layer cache buffers (the sampler's, with the layers unstacked once)."""
  config = small_config.replace(scan_layers=scan_layers)
  graphdef, params = init_model(config)
  tokens, mask = _padded_batch(config.vocab_size)
  full = _forward(graphdef)(params, tokens, mask)

  @jax.jit
  def extend(params, tokens, mask, cache):
    model = nnx.merge(graphdef, params)
    layers = model.unstacked_layers() if per_layer else None
    return model(tokens, mask, cache, layers=layers)

  cache = init_cache(config, tokens.shape[0], max_len=tokens.shape[1] + 2, per_layer=per_layer)
  assert cache.per_layer == per_layer
  pieces = []
  # Prefill 5 tokens at once, then 2, then one token at a time.
  for start, stop in [(0, 5), (5, 7)] + [(t, t + 1) for t in range(7, tokens.shape[1])]:
    logits, cache = extend(params, tokens[:, start:stop], mask[:, start:stop], cache)
    pieces.append(logits)
  incremental = jnp.concatenate(pieces, axis=1)
  np.testing.assert_allclose(incremental[mask], full[mask], atol=1e-5, rtol=1e-5)
  assert int(cache.index) == tokens.shape[1]
  np.testing.assert_array_equal(cache.lengths, mask.sum(1))


@pytest.mark.parametrize("per_layer", [False, True])
def test_a_cache_grown_between_calls_decodes_as_one_allocated_whole(small_config, per_layer):
  """kv_cache.grow appends empty slots: decoding then matches the full forward pass."""
  graphdef, params = init_model(small_config)
  tokens, mask = _padded_batch(small_config.vocab_size)
  full = _forward(graphdef)(params, tokens, mask)
  extend = jax.jit(lambda p, t, m, c: nnx.merge(graphdef, p)(t, m, c))
  cache = init_cache(small_config, tokens.shape[0], max_len=5, per_layer=per_layer)
  logits, cache = extend(params, tokens[:, :5], mask[:, :5], cache)
  pieces = [logits]
  for t in range(5, tokens.shape[1]):
    cache = grow(cache, t + 1)            # one more slot before each token
    assert cache.max_len == t + 1
    logits, cache = extend(params, tokens[:, t:t + 1], mask[:, t:t + 1], cache)
    pieces.append(logits)
  incremental = jnp.concatenate(pieces, axis=1)
  np.testing.assert_allclose(incremental[mask], full[mask], atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(cache.lengths, mask.sum(1))
  assert grow(cache, cache.max_len) is cache
  with pytest.raises(ValueError, match="already has"):
    grow(cache, cache.max_len - 1)


def test_per_layer_and_stacked_caches_hold_the_same_keys_and_values(small_config):
  graphdef, params = init_model(small_config)
  tokens, mask = _padded_batch(small_config.vocab_size)
  model = nnx.merge(graphdef, params)
  caches = {}
  for per_layer in (False, True):
    cache = init_cache(small_config, tokens.shape[0], max_len=tokens.shape[1], per_layer=per_layer)
    _, caches[per_layer] = model(tokens[:, :5], mask[:, :5], cache)
  stacked, per_layer = caches[False], caches[True]
  np.testing.assert_allclose(stacked.key, jnp.stack(per_layer.key), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(stacked.value, jnp.stack(per_layer.value), atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(stacked.slot_mask, per_layer.slot_mask)
  with pytest.raises(ValueError, match="per-layer KV cache"):
    model(tokens, mask, init_cache(small_config, tokens.shape[0], tokens.shape[1]),
          layers=model.unstacked_layers())


def test_scan_and_unrolled_layers_share_parameters_and_outputs(small_config):
  graphdef_scan, params = init_model(small_config.replace(scan_layers=True))
  graphdef_loop, params_loop = init_model(small_config.replace(scan_layers=False))
  assert jax.tree.structure(params) == jax.tree.structure(params_loop)
  tokens, mask = _padded_batch(small_config.vocab_size)
  np.testing.assert_allclose(_forward(graphdef_scan)(params, tokens, mask),
                             _forward(graphdef_loop)(params, tokens, mask), atol=1e-6)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_gradients(small_config, remat):
  tokens, mask = _padded_batch(small_config.vocab_size)

  def grads(config):
    graphdef, params = init_model(config)

    def loss(params):
      logits, _ = nnx.merge(graphdef, params)(tokens, mask)
      return jnp.mean(jax.nn.logsumexp(logits, -1))

    return jax.jit(jax.grad(loss))(params)

  baseline, rematted = grads(small_config), grads(small_config.replace(remat=remat))
  for a, b in zip(jax.tree.leaves(baseline), jax.tree.leaves(rematted)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_bfloat16_compute_and_parameter_dtypes(small_config):
  config = small_config.replace(dtype="bfloat16", param_dtype="bfloat16")
  graphdef, params = init_model(config)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  f32_graphdef, f32_params = init_model(small_config)
  tokens, mask = _padded_batch(config.vocab_size)
  expected = _forward(f32_graphdef)(f32_params, tokens, mask)
  # The float32 weights rounded to bf16 and run in bf16 agree with float32 up to bf16 error.
  logits = _forward(graphdef)(jax.tree.map(lambda x: x.astype(jnp.bfloat16), f32_params),
                              tokens, mask)
  assert logits.dtype == jnp.float32
  error = jnp.abs(logits - expected)[mask]
  assert float(jnp.mean(error)) < 0.05 * float(jnp.mean(jnp.abs(expected[mask])))


def test_presets_have_the_documented_sizes():
  assert PRESETS["tiny"].num_params == 3_410_176
  graphdef, params = init_model(PRESETS["tiny"])
  assert count_params(params) == PRESETS["tiny"].num_params
  abstract = nnx.eval_shape(lambda: init_model(PRESETS["small"])[1])
  small = sum(x.size for x in jax.tree.leaves(abstract))
  assert small == PRESETS["small"].num_params
  assert 120e6 < small < 130e6


@pytest.mark.parametrize("field, value, message", [
    ("num_kv_heads", 3, "multiple of num_kv_heads"),
    ("head_dim", 15, "even"),
    ("remat", "sometimes", "remat must be one of"),
    ("dtype", "float99", "must name a dtype"),
    ("num_layers", 0, "num_layers must be a positive integer"),
])
def test_config_errors_name_the_field(small_config, field, value, message):
  with pytest.raises(ValueError, match=message):
    small_config.replace(**{field: value})


def test_unknown_preset_lists_the_available_ones():
  with pytest.raises(ValueError, match="available presets"):
    get_preset("huge")


# Every family feature at once (Gemma2-style norms, soft-caps and alternating
# sliding windows, biases, llama3 rope, LoRA), to check that the execution
# paths (scan / unrolled, cache / full, padding) agree with each other.
FAMILY_FEATURES = dict(
    attention_bias=True, attention_out_bias=True, activation="gelu_tanh", norm_offset=1.0,
    scale_embeddings=True, post_norms=True, query_pre_attn_scalar=24.0, attn_logit_softcap=3.0,
    final_logit_softcap=5.0, sliding_window=3, sliding_window_layers=(True, False),
    rope_type="llama3", rope_factor=4.0, rope_original_max_len=8, lora_rank=2,
    lora_targets=("q_proj", "down_proj"))


def _feature_model(config, seed=0):
  """init_model with every parameter perturbed, so zero-initialised biases, norms and LoRA B matter."""
  graphdef, params = init_model(config)
  rng = np.random.default_rng(seed)
  return graphdef, jax.tree.map(lambda x: x + 0.2 * rng.standard_normal(x.shape, np.float32), params)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_family_features_kv_cache_decoding_matches_full_forward(small_config, scan_layers):
  config = small_config.replace(scan_layers=scan_layers, **FAMILY_FEATURES)
  graphdef, params = _feature_model(config)
  assert count_params(params) == config.num_params
  tokens, mask = _padded_batch(config.vocab_size)
  full = _forward(graphdef)(params, tokens, mask)

  @jax.jit
  def extend(params, tokens, mask, cache):
    return nnx.merge(graphdef, params)(tokens, mask, cache)

  cache = init_cache(config, tokens.shape[0], max_len=tokens.shape[1])
  pieces = []
  for start, stop in [(0, 5)] + [(t, t + 1) for t in range(5, tokens.shape[1])]:
    logits, cache = extend(params, tokens[:, start:stop], mask[:, start:stop], cache)
    pieces.append(logits)
  incremental = jnp.concatenate(pieces, axis=1)
  np.testing.assert_allclose(incremental[mask], full[mask], atol=1e-5, rtol=1e-5)


def test_family_features_scan_unrolled_and_padding_agree(small_config):
  config = small_config.replace(**FAMILY_FEATURES)
  graphdef, params = _feature_model(config)
  graphdef_loop, _ = init_model(config.replace(scan_layers=False))
  tokens, mask = _padded_batch(config.vocab_size)
  scanned = _forward(graphdef)(params, tokens, mask)
  np.testing.assert_allclose(_forward(graphdef_loop)(params, tokens, mask), scanned,
                             atol=1e-5, rtol=1e-5)
  # Padding (left, right, holes) leaves every real token's logits as if alone:
  # the sliding window counts real tokens, not slots.
  for row in (1, 3):   # left padding; a hole inside the window
    real = tokens[row][mask[row]][None]
    alone = _forward(graphdef)(params, real, np.ones_like(real, bool))[0]
    np.testing.assert_allclose(scanned[row][mask[row]], alone, atol=1e-5, rtol=1e-5)


def test_sliding_window_bounds_the_receptive_field(small_config):
  # Window 3 on both layers: position t sees t-2..t per layer, so t-4..t in all.
  config = small_config.replace(sliding_window=3)
  graphdef, params = init_model(config)
  tokens = np.random.default_rng(2).integers(0, config.vocab_size, (1, 10))
  changed = tokens.copy()
  changed[0, 0] = (tokens[0, 0] + 1) % config.vocab_size
  mask = np.ones_like(tokens, bool)
  forward = _forward(graphdef)
  delta = np.abs(forward(params, tokens, mask) - forward(params, changed, mask))[0].max(-1)
  assert np.all(delta[:5] > 1e-4) and np.all(delta[5:] == 0)
  # Without the window every later position sees the change.
  full = _forward(init_model(small_config)[0])
  delta = np.abs(full(params, tokens, mask) - full(params, changed, mask))[0].max(-1)
  assert np.all(delta > 1e-4)


@pytest.mark.parametrize("changes, message", [
    (dict(activation="relu"), "activation must be one of"),
    (dict(rope_type="yarn"), "rope_type must be one of"),
    (dict(sliding_window=4, sliding_window_layers=(True,)), "sliding_window_layers has 1 entries"),
    (dict(sliding_window_layers=(True, False)), "sliding_window is None"),
    (dict(lora_rank=2, lora_targets=("qkv",)), r"lora_targets has unknown projections \['qkv'\]"),
    (dict(final_logit_softcap=0.0), "final_logit_softcap must be > 0"),
])
def test_family_field_errors_name_the_field(small_config, changes, message):
  with pytest.raises(ValueError, match=message):
    small_config.replace(**changes)


def test_config_json_round_trip(small_config):
  config = small_config.replace(**FAMILY_FEATURES)
  import json
  again = TransformerConfig.from_dict(json.loads(json.dumps(config.to_dict())))
  assert again == config and hash(again) == hash(config)


def test_split_layers_gives_each_layer_and_the_same_gradient_as_slicing():
  from selfimprove.models.transformer import split_layers
  rng = np.random.default_rng(0)
  stacked = {"w": jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32),
             "norm": {"scale": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)}}
  layers = split_layers(stacked, 3)
  assert len(layers) == 3
  for i, layer in enumerate(layers):
    np.testing.assert_array_equal(layer["w"], stacked["w"][i])
    np.testing.assert_array_equal(layer["norm"]["scale"], stacked["norm"]["scale"][i])

  x = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)

  def loss(per_layer):
    h = x
    for layer in per_layer:
      h = jnp.tanh(h @ layer["w"] * layer["norm"]["scale"])[:, :4]
    return jnp.sum(h ** 2)

  by_split = jax.grad(lambda s: loss(split_layers(s, 3)))(stacked)
  by_slices = jax.grad(lambda s: loss([jax.tree.map(lambda p, i=i: p[i], s) for i in range(3)]))(
      stacked)
  jax.tree.map(np.testing.assert_array_equal, by_split, by_slices)
