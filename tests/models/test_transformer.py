"""The transformer against a numpy reference, and KV-cache decoding against full forward passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from selfimprove.models import (PRESETS, TransformerConfig, count_params, get_preset,
                                init_cache, init_model)
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


@pytest.mark.parametrize("scan_layers", [True, False])
def test_kv_cache_decoding_matches_full_forward(small_config, scan_layers):
  config = small_config.replace(scan_layers=scan_layers)
  graphdef, params = init_model(config)
  tokens, mask = _padded_batch(config.vocab_size)
  full = _forward(graphdef)(params, tokens, mask)

  @jax.jit
  def extend(params, tokens, mask, cache):
    return nnx.merge(graphdef, params)(tokens, mask, cache)

  cache = init_cache(config, tokens.shape[0], max_len=tokens.shape[1] + 2)
  pieces = []
  # Prefill 5 tokens at once, then 2, then one token at a time.
  for start, stop in [(0, 5), (5, 7)] + [(t, t + 1) for t in range(7, tokens.shape[1])]:
    logits, cache = extend(params, tokens[:, start:stop], mask[:, start:stop], cache)
    pieces.append(logits)
  incremental = jnp.concatenate(pieces, axis=1)
  np.testing.assert_allclose(incremental[mask], full[mask], atol=1e-5, rtol=1e-5)
  assert int(cache.index) == tokens.shape[1]
  np.testing.assert_array_equal(cache.lengths, mask.sum(1))


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
