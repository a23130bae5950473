"""The KV cache: an explicit pytree, created by `init_cache`, passed in and returned.

Slots are written left to right at `index`; `slot_mask` says which slots hold a
real token (padding leaves holes that attention skips), and `lengths` counts the
real tokens of each row, which is the rotary position of that row's next token.
Because of this, prompts may be left-padded, right-padded or have holes, and
decoding still sees exactly the positions and keys an unpadded forward pass would.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from selfimprove.models.config import TransformerConfig


class KVCache(NamedTuple):
  """Keys and values of every layer: stacked (keys [layers, batch, kv_heads, head_dim, max_len],
  values [layers, batch, kv_heads, max_len, head_dim]) or, with `init_cache(..., per_layer=True)`,
  a tuple of one such [batch, ...] buffer per layer.

  Keys are stored transposed (slots last): a decode step's score matmul, q . k^T,
  then reads them in the layout XLA:CPU's dot kernels take as they are; with
  slots before head_dim that dot alone ran about 2.3x slower, and a decode
  layer's cache write + attention 1.6x (bench/README.md).

  Per-layer buffers are what a decode loop wants: each layer writes its new key
  and value into its own buffer in place and reads that buffer whole, where a
  stacked cache makes XLA slice (copy) the layer out of the stack on every step.
  """

  key: jax.Array | tuple[jax.Array, ...]
  value: jax.Array | tuple[jax.Array, ...]
  slot_mask: jax.Array  # [batch, max_len] bool: the slot holds a real token
  lengths: jax.Array    # [batch] int32: real tokens written so far
  index: jax.Array      # [] int32: next slot to write

  @property
  def max_len(self) -> int:
    return self.slot_mask.shape[1]

  @property
  def per_layer(self) -> bool:
    return isinstance(self.key, tuple)


def init_cache(config: TransformerConfig, batch_size: int, max_len: int,
               dtype: jnp.dtype | None = None, *, per_layer: bool = False) -> KVCache:
  """An empty cache for `batch_size` rows of up to `max_len` tokens in total.

  Writing past `max_len` is not checked in-graph; the sampler sizes the cache
  as prompt length + max_new_tokens. `per_layer`: one buffer per layer (see KVCache).
  """
  dtype = config.compute_dtype if dtype is None else dtype
  value_shape = (batch_size, config.num_kv_heads, max_len, config.head_dim)
  key_shape = (batch_size, config.num_kv_heads, config.head_dim, max_len)
  if per_layer:
    key = tuple(jnp.zeros(key_shape, dtype) for _ in range(config.num_layers))
    value = tuple(jnp.zeros(value_shape, dtype) for _ in range(config.num_layers))
  else:
    key = jnp.zeros((config.num_layers, *key_shape), dtype)
    value = jnp.zeros((config.num_layers, *value_shape), dtype)
  return KVCache(
      key=key,
      value=value,
      slot_mask=jnp.zeros((batch_size, max_len), bool),
      lengths=jnp.zeros((batch_size,), jnp.int32),
      index=jnp.zeros((), jnp.int32),
  )


def repeat_rows(cache: KVCache, n: int) -> KVCache:
  """Each row of the cache n times in a row (row i -> rows i*n .. i*n + n-1), as jnp.repeat."""
  if cache.per_layer:
    repeat_kv = lambda buffers: tuple(jnp.repeat(b, n, axis=0) for b in buffers)
  else:
    repeat_kv = lambda stacked: jnp.repeat(stacked, n, axis=1)
  return cache._replace(
      key=repeat_kv(cache.key),
      value=repeat_kv(cache.value),
      slot_mask=jnp.repeat(cache.slot_mask, n, axis=0),
      lengths=jnp.repeat(cache.lengths, n, axis=0))


def grow(cache: KVCache, max_len: int) -> KVCache:
  """The cache with room for `max_len` slots in all: empty slots appended (a copy of each buffer).

  A decode loop in phases starts with a short cache and grows it between
  phases, so that each step attends over the slots it can have filled by the
  end of its phase instead of over the whole completion budget."""
  extra = max_len - cache.max_len
  if extra < 0:
    raise ValueError(f"grow: the cache already has {cache.max_len} slots, more than {max_len}.")
  if extra == 0:
    return cache

  def pad(buffer, slot_axis):
    widths = [(0, 0)] * buffer.ndim
    widths[slot_axis] = (0, extra)
    return jnp.pad(buffer, widths)

  # Slots are the last axis of keys and the second-to-last of values, stacked or not.
  grow_keys = lambda keys: pad(keys, keys.ndim - 1)
  grow_values = lambda values: pad(values, values.ndim - 2)
  if cache.per_layer:
    key, value = tuple(map(grow_keys, cache.key)), tuple(map(grow_values, cache.value))
  else:
    key, value = grow_keys(cache.key), grow_values(cache.value)
  return cache._replace(key=key, value=value, slot_mask=pad(cache.slot_mask, 1))
