"""Building blocks of the Llama-family block: RMSNorm, rotary embeddings, GQA attention, SwiGLU.

Parameters carry logical axis names (`out_sharding`) and are created without
eager sharding: placement on a mesh is done once, by `selfimprove.sharding`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

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


class RMSNorm(nnx.Module):
  """y = x / rms(x) * scale, computed in float32."""

  def __init__(self, dim: int, *, eps: float, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = make_param(rngs, jax.nn.initializers.ones, (dim,), ("norm",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding, half-split ("rotate_half") convention as in HF Llama.

  x: [batch, heads, seq, head_dim]; positions: [batch, seq] int.
  """
  half = x.shape[-1] // 2
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
    self.q_proj = make_param(rngs, fan_in_init(0, (1, 2)), (e, h, d), ("embed", "heads", "head_dim"), pd)
    self.k_proj = make_param(rngs, fan_in_init(0, (1, 2)), (e, k, d), ("embed", "kv_heads", "head_dim"), pd)
    self.v_proj = make_param(rngs, fan_in_init(0, (1, 2)), (e, k, d), ("embed", "kv_heads", "head_dim"), pd)
    self.o_proj = make_param(rngs, fan_in_init((0, 1), 2), (h, d, e), ("heads", "head_dim", "embed"), pd)

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
      cache: (key, value, layer, index): the stacked caches of all layers, each
        [layers, batch, kv_heads, max_len, head_dim], this layer's index, and
        the slot where x's first token is written.

    Returns:
      [batch, seq, embed] output, and the stacked (key, value) caches with x's
      keys and values written in (None without a cache).
    """
    cfg = self.config
    dt = cfg.compute_dtype
    rules = cfg.sharding_rules
    batch, seq = x.shape[:2]
    groups = cfg.num_heads // cfg.num_kv_heads
    q = jnp.einsum("bte,ehd->bhtd", x, self.q_proj[...].astype(dt))
    k = jnp.einsum("bte,ekd->bktd", x, self.k_proj[...].astype(dt))
    v = jnp.einsum("bte,ekd->bktd", x, self.v_proj[...].astype(dt))
    q = constrain(apply_rope(q, positions, cfg.rope_theta), ("batch", "act_heads", "seq", None), rules)
    k = apply_rope(k, positions, cfg.rope_theta)
    new_cache = None
    if cache is not None:
      # Write first, then read this layer back: reading before writing makes
      # XLA copy the whole stacked cache on every layer of every decode step.
      key_cache, value_cache, layer, index = cache
      start = (layer, 0, 0, index, 0)
      key_cache = jax.lax.dynamic_update_slice(key_cache, k[None].astype(key_cache.dtype), start)
      value_cache = jax.lax.dynamic_update_slice(value_cache, v[None].astype(value_cache.dtype), start)
      new_cache = (key_cache, value_cache)
      k = key_cache[layer].astype(dt)
      v = value_cache[layer].astype(dt)
    # Query head h uses KV head h // groups, as in HF's repeat_kv: fold the
    # group into the query rows, [batch, kv_heads, groups * seq, head_dim].
    q = q.reshape(batch, cfg.num_kv_heads, groups * seq, cfg.head_dim)
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    scores = scores.reshape(batch, cfg.num_kv_heads, groups, seq, -1) * cfg.head_dim ** -0.5
    scores = jnp.where(attention_mask[:, None, None, :, :], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    probs = probs.reshape(batch, cfg.num_kv_heads, groups * seq, -1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v)
    out = out.reshape(batch, cfg.num_heads, seq, cfg.head_dim)
    y = jnp.einsum("bhtd,hde->bte", out, self.o_proj[...].astype(dt))
    return y, new_cache


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    e, m, pd = config.embed_dim, config.mlp_dim, config.params_dtype
    self.gate_proj = make_param(rngs, fan_in_init(0, 1), (e, m), ("embed", "mlp"), pd)
    self.up_proj = make_param(rngs, fan_in_init(0, 1), (e, m), ("embed", "mlp"), pd)
    self.down_proj = make_param(rngs, fan_in_init(0, 1), (m, e), ("mlp", "embed"), pd)

  def __call__(self, x: jax.Array) -> jax.Array:
    dt = self.config.compute_dtype
    gate = jnp.einsum("bte,em->btm", x, self.gate_proj[...].astype(dt))
    up = jnp.einsum("bte,em->btm", x, self.up_proj[...].astype(dt))
    hidden = constrain(jax.nn.silu(gate) * up, ("batch", "seq", "act_mlp"), self.config.sharding_rules)
    return jnp.einsum("btm,me->bte", hidden, self.down_proj[...].astype(dt))
