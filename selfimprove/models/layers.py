"""Building blocks of the Llama-family block: RMSNorm, rotary embeddings, GQA attention, gated MLP.

What the Qwen2 / Mistral / Gemma families add (biases, soft-capping, GeGLU,
norm offsets, rope scaling, LoRA adapters) is switched on by config fields
and creates no parameter while off.

Parameters carry logical axis names (`out_sharding`) and are created without
eager sharding: placement on a mesh is done once, by `selfimprove.sharding`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from selfimprove.models import lora
from selfimprove.models.config import TransformerConfig
from selfimprove.sharding import constrain

_NEG_INF = -1e30  # finite, so a query with no visible key gives a uniform row, not NaN


def make_param(rngs: nnx.Rngs, init: jax.nn.initializers.Initializer,
               shape: Sequence[int], logical_axes: Sequence[str],
               dtype: jnp.dtype) -> nnx.Param:
  return nnx.Param(init(rngs.params(), tuple(shape), dtype),
                   out_sharding=tuple(logical_axes), eager_sharding=False)


def fan_in_init(in_axis, out_axis) -> jax.nn.initializers.Initializer:
  return jax.nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis)


def _project(module: nnx.Module, name: str, equation: str, x: jax.Array) -> jax.Array:
  """Applies the module's projection `name` (and its LoRA adapter, if any) to x."""
  cfg = module.config
  return lora.project(x, equation, getattr(module, name)[...], lora.adapter_of(module, name),
                      cfg.lora_scale, cfg.compute_dtype)


class RMSNorm(nnx.Module):
  """y = x / rms(x) * (offset + scale), computed in float32.

  Gemma stores its norm weights around 0 and uses offset 1; their initial
  value is then 0, so every norm starts as the identity scale either way.
  """

  def __init__(self, dim: int, *, eps: float, param_dtype: jnp.dtype, rngs: nnx.Rngs,
               offset: float = 0.0):
    self.eps = eps
    self.offset = offset
    init = jax.nn.initializers.zeros if offset == 1.0 else jax.nn.initializers.ones
    self.scale = make_param(rngs, init, (dim,), ("norm",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    scale = self.scale[...].astype(jnp.float32)
    if self.offset:
      scale = self.offset + scale
    return (y * scale).astype(x.dtype)


def rope_inv_freq(config: TransformerConfig) -> jax.Array:
  """Rotary inverse frequencies [head_dim // 2] float32, with the config's rope scaling."""
  dim = config.head_dim
  inv_freq = 1.0 / config.rope_theta ** (jnp.arange(dim // 2, dtype=jnp.float32) * 2.0 / dim)
  if config.rope_type == "linear":
    return inv_freq / config.rope_factor
  if config.rope_type == "llama3":
    # Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth
    # blend in between (transformers' _compute_llama3_parameters).
    factor, old_len = config.rope_factor, config.rope_original_max_len
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    wavelen = 2 * jnp.pi / inv_freq
    scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return jnp.where(medium, blended, scaled)
  return inv_freq


def apply_rope(x: jax.Array, positions: jax.Array, theta: float,
               inv_freq: jax.Array | None = None) -> jax.Array:
  """Rotary embedding, half-split ("rotate_half") convention as in HF Llama.

  x: [batch, heads, seq, head_dim]; positions: [batch, seq] int; inv_freq:
  [head_dim // 2] (default: unscaled frequencies from `theta`).
  """
  half = x.shape[-1] // 2
  if inv_freq is None:
    inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) * 2.0 / x.shape[-1])
  angles = positions.astype(jnp.float32)[:, None, :, None] * inv_freq  # [batch, 1, seq, half]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x1 = x[..., :half].astype(jnp.float32)
  x2 = x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nnx.Module):
  """Grouped-query self-attention with rotary embeddings and an optional KV cache."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    e, h, k, d = config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim
    pd = config.params_dtype
    q_axes, kv_axes = ("embed", "heads", "head_dim"), ("embed", "kv_heads", "head_dim")
    o_axes = ("heads", "head_dim", "embed")
    self.q_proj = make_param(rngs, fan_in_init(0, (1, 2)), (e, h, d), q_axes, pd)
    self.k_proj = make_param(rngs, fan_in_init(0, (1, 2)), (e, k, d), kv_axes, pd)
    self.v_proj = make_param(rngs, fan_in_init(0, (1, 2)), (e, k, d), kv_axes, pd)
    self.o_proj = make_param(rngs, fan_in_init((0, 1), 2), (h, d, e), o_axes, pd)
    if config.attention_bias:
      zeros = jax.nn.initializers.zeros
      self.q_bias = make_param(rngs, zeros, (h, d), ("heads", "head_dim"), pd)
      self.k_bias = make_param(rngs, zeros, (k, d), ("kv_heads", "head_dim"), pd)
      self.v_bias = make_param(rngs, zeros, (k, d), ("kv_heads", "head_dim"), pd)
    if config.attention_out_bias:
      self.o_bias = make_param(rngs, jax.nn.initializers.zeros, (e,), ("norm",), pd)
    for name, shape, axes, num_in in [("q_proj", (e, h, d), q_axes, 1),
                                      ("k_proj", (e, k, d), kv_axes, 1),
                                      ("v_proj", (e, k, d), kv_axes, 1),
                                      ("o_proj", (h, d, e), o_axes, 2)]:
      if config.has_lora(name):
        a, b = lora.make_adapter(rngs, config, shape, axes, num_in)
        setattr(self, f"{name}_lora_a", a)
        setattr(self, f"{name}_lora_b", b)

  def __call__(self, x: jax.Array, positions: jax.Array, attention_mask: jax.Array,
               cache: tuple[jax.Array, jax.Array, jax.Array, jax.Array] | None = None,
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Attends x's queries to its own keys, or to the cache with x's keys written in.

    Heads come before the sequence in every attention tensor ([batch, heads,
    seq, head_dim]): the score and value matmuls then batch over (batch, kv
    head) with no transposes, several times faster on CPU than seq-major.

    Args:
      x: [batch, seq, embed].
      positions: [batch, seq] rotary positions.
      attention_mask: [batch, seq, kv_len] bool; kv_len is seq without a cache,
        the cache length with one.
      cache: (key, value, layer, index): the stacked caches of all layers,
        keys [layers, batch, kv_heads, head_dim, max_len] and values [layers,
        batch, kv_heads, max_len, head_dim], and this layer's index; or this
        layer's own buffers (the same without `layers`) and layer None.
        `index` is the slot where x's first token is written.

    Returns:
      [batch, seq, embed] output, and the (key, value) caches, as given, with
      x's keys and values written in (None without a cache).
    """
    cfg = self.config
    dt = cfg.compute_dtype
    rules = cfg.sharding_rules
    batch, seq = x.shape[:2]
    groups = cfg.num_heads // cfg.num_kv_heads
    # Project sequence-major (a plain [tokens, embed] @ [embed, heads * head_dim]
    # matmul on the weights as stored), then move heads before the sequence:
    # projecting straight to head-major makes XLA transpose the weights on every
    # call, inside a decode loop on every step.
    q = jnp.swapaxes(_project(self, "q_proj", "bte,ehd->bthd", x), 1, 2)
    k = jnp.swapaxes(_project(self, "k_proj", "bte,ekd->btkd", x), 1, 2)
    v = jnp.swapaxes(_project(self, "v_proj", "bte,ekd->btkd", x), 1, 2)
    if cfg.attention_bias:
      q = q + self.q_bias[...].astype(dt)[None, :, None, :]
      k = k + self.k_bias[...].astype(dt)[None, :, None, :]
      v = v + self.v_bias[...].astype(dt)[None, :, None, :]
    # The default rope keeps computing its frequencies in place (bit-identical
    # to before rope scaling existed); scaled ropes use rope_inv_freq.
    inv_freq = None if cfg.rope_type == "default" else rope_inv_freq(cfg)
    q = apply_rope(q, positions, cfg.rope_theta, inv_freq)
    q = constrain(q, ("batch", "act_heads", "seq", None), rules)
    k = apply_rope(k, positions, cfg.rope_theta, inv_freq)
    new_cache = None
    if cache is not None:
      # Write first, then read this layer back: reading before writing makes
      # XLA copy the whole stacked cache on every layer of every decode step.
      # Keys are cached transposed, [..., head_dim, max_len]: the score matmul
      # then reads the cache in the form CPU dot kernels take without repacking.
      key_cache, value_cache, layer, index = cache
      k = jnp.swapaxes(k, 2, 3)
      if layer is None:     # this layer's own buffers
        key_start, value_start = (0, 0, 0, index), (0, 0, index, 0)
      else:                 # the stacked buffers of all layers
        key_start, value_start = (layer, 0, 0, 0, index), (layer, 0, 0, index, 0)
        k, v = k[None], v[None]
      key_cache = jax.lax.dynamic_update_slice(key_cache, k.astype(key_cache.dtype), key_start)
      value_cache = jax.lax.dynamic_update_slice(value_cache, v.astype(value_cache.dtype),
                                                 value_start)
      new_cache = (key_cache, value_cache)
      keys_t = (key_cache if layer is None else key_cache[layer]).astype(dt)
      v = (value_cache if layer is None else value_cache[layer]).astype(dt)
    # Query head h uses KV head h // groups, as in HF's repeat_kv: fold the
    # group into the query rows, [batch, kv_heads, groups * seq, head_dim].
    q = q.reshape(batch, cfg.num_kv_heads, groups * seq, cfg.head_dim)
    if cache is None:
      scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    else:
      scores = jnp.einsum("bkqd,bkds->bkqs", q, keys_t, preferred_element_type=jnp.float32)
    scores = scores.reshape(batch, cfg.num_kv_heads, groups, seq, -1) * cfg.attention_scale
    if cfg.attn_logit_softcap is not None:
      scores = jnp.tanh(scores / cfg.attn_logit_softcap) * cfg.attn_logit_softcap
    scores = jnp.where(attention_mask[:, None, None, :, :], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    probs = probs.reshape(batch, cfg.num_kv_heads, groups * seq, -1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v)
    out = jnp.swapaxes(out.reshape(batch, cfg.num_heads, seq, cfg.head_dim), 1, 2)
    y = _project(self, "o_proj", "bthd,hde->bte", out)
    if cfg.attention_out_bias:
      y = y + self.o_bias[...].astype(dt)
    return y, new_cache


_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


class MLP(nnx.Module):
  """Gated MLP: down(act(gate(x)) * up(x)); SwiGLU with silu, GeGLU with gelu."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    e, m, pd = config.embed_dim, config.mlp_dim, config.params_dtype
    self.gate_proj = make_param(rngs, fan_in_init(0, 1), (e, m), ("embed", "mlp"), pd)
    self.up_proj = make_param(rngs, fan_in_init(0, 1), (e, m), ("embed", "mlp"), pd)
    self.down_proj = make_param(rngs, fan_in_init(0, 1), (m, e), ("mlp", "embed"), pd)
    for name, shape, axes in [("gate_proj", (e, m), ("embed", "mlp")),
                              ("up_proj", (e, m), ("embed", "mlp")),
                              ("down_proj", (m, e), ("mlp", "embed"))]:
      if config.has_lora(name):
        a, b = lora.make_adapter(rngs, config, shape, axes, 1)
        setattr(self, f"{name}_lora_a", a)
        setattr(self, f"{name}_lora_b", b)

  def __call__(self, x: jax.Array) -> jax.Array:
    gate = _project(self, "gate_proj", "bte,em->btm", x)
    up = _project(self, "up_proj", "bte,em->btm", x)
    hidden = _ACTIVATIONS[self.config.activation](gate) * up
    hidden = constrain(hidden, ("batch", "seq", "act_mlp"), self.config.sharding_rules)
    return _project(self, "down_proj", "btm,me->bte", hidden)
