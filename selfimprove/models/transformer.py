"""Llama-family decoder-only transformer (Flax NNX), used functionally at the jit boundary.

    model = Transformer(config, rngs=nnx.Rngs(params=0))
    graphdef, params = nnx.split(model)           # once, outside jit

    @jax.jit
    def forward(params, tokens, mask):
      logits, _ = nnx.merge(graphdef, params)(tokens, mask)
      return logits

The blocks' parameters are stacked on a leading `layers` axis whether or not
`config.scan_layers` is set, so the two execution modes share checkpoints.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from selfimprove.models.config import TransformerConfig
from selfimprove.models.dense import dense
from selfimprove.models.kv_cache import KVCache
from selfimprove.models.layers import MLP, Attention, RMSNorm, make_param
from selfimprove.sharding import constrain

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nnx.Module):
  """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x)).

  With `config.post_norms` (Gemma2) the attention and MLP outputs are also
  normalised before they are added: x + post_norm(attn(norm(x))).
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    kw = dict(eps=config.norm_eps, param_dtype=config.params_dtype, rngs=rngs,
              offset=config.norm_offset)
    self.attention_norm = RMSNorm(config.embed_dim, **kw)
    self.attention = Attention(config, rngs=rngs)
    self.mlp_norm = RMSNorm(config.embed_dim, **kw)
    self.mlp = MLP(config, rngs=rngs)
    if config.post_norms:
      self.post_attention_norm = RMSNorm(config.embed_dim, **kw)
      self.post_mlp_norm = RMSNorm(config.embed_dim, **kw)

  def __call__(self, x, positions, attention_mask, cache=None):
    y, new_cache = self.attention(self.attention_norm(x), positions, attention_mask, cache)
    if self.config.post_norms:
      y = self.post_attention_norm(y)
    x = x + y
    y = self.mlp(self.mlp_norm(x))
    if self.config.post_norms:
      y = self.post_mlp_norm(y)
    x = x + y
    return x, new_cache


class Transformer(nnx.Module):
  """Token ids in, float32 next-token logits out; optionally reading/writing a KVCache."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    pd = config.params_dtype
    self.embedding = make_param(rngs, jax.nn.initializers.normal(config.embed_dim ** -0.5),
                                (config.vocab_size, config.embed_dim), ("vocab", "embed"), pd)

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(rngs: nnx.Rngs) -> Block:
      return Block(config, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.final_norm = RMSNorm(config.embed_dim, eps=config.norm_eps, param_dtype=pd, rngs=rngs,
                              offset=config.norm_offset)
    if not config.tie_embeddings:
      self.lm_head = make_param(
          rngs, jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
          (config.embed_dim, config.vocab_size), ("embed", "vocab"), pd)

  def unstacked_layers(self) -> tuple[nnx.State, ...]:
    """The blocks' parameters one layer at a time (a tuple of per-layer States).

    A loop that calls the model many times (decoding) takes these once, before
    the loop, and passes them as `layers=`: each call then reads every weight
    where it lies, instead of slicing (copying) each layer out of the stack.
    """
    _, block_params = nnx.split(self.blocks)
    return split_layers(block_params, self.config.num_layers)

  def __call__(self, tokens: jax.Array, input_mask: jax.Array,
               cache: KVCache | None = None, *, return_hidden: bool = False,
               layers: tuple | None = None) -> tuple[jax.Array, KVCache | None]:
    """Runs the model over `tokens`.

    Args:
      tokens: [batch, seq] int token ids.
      input_mask: [batch, seq] bool; False marks padding (any layout: left,
        right or holes). Padding tokens are invisible to every other token and
        do not advance positions. Their own outputs are meaningless.
      cache: if given, `tokens` continue the cached sequence: they are written
        at slots [cache.index, cache.index + seq) and attend to everything
        cached before them.

      return_hidden: return the last hidden states (after the final norm, the
        `last_hidden_state` of a Hugging Face model body) instead of the logits.
      layers: `self.unstacked_layers()`, taken once outside a decode loop; only
        with a per-layer cache (`init_cache(..., per_layer=True)`), which runs
        the blocks one by one.

    Returns:
      logits [batch, seq, vocab] float32 (or hidden states [batch, seq, embed_dim]
      in the compute dtype), and the updated cache (None without one).
    """
    cfg = self.config
    rules = cfg.sharding_rules
    input_mask = input_mask.astype(bool)
    seq = tokens.shape[1]
    offset = jnp.cumsum(input_mask, axis=1, dtype=jnp.int32) - 1
    if cache is None:
      positions = jnp.maximum(offset, 0)
      key_valid = input_mask                          # [batch, seq]
      query_slots = jnp.arange(seq)
    else:
      positions = jnp.maximum(cache.lengths[:, None] + offset, 0)
      key_valid = jax.lax.dynamic_update_slice(cache.slot_mask, input_mask, (0, cache.index))
      query_slots = cache.index + jnp.arange(seq)
    key_slots = jnp.arange(key_valid.shape[1])
    causal = key_slots[None, :] <= query_slots[:, None]          # [seq, kv_len]
    global_mask = key_valid[:, None, :] & causal[None]          # [batch, seq, kv_len]
    local_mask = self._sliding_window_mask(global_mask, positions, key_valid)
    local_layers = jnp.asarray(cfg.local_layers)                 # [layers] bool

    # Gather the table's embed dimension first (as FSDP gathers every weight):
    # a lookup into an embed-sharded table yields embed-sharded activations, and
    # resharding those to batch-sharded makes XLA replicate them whole.
    table = constrain(self.embedding[...], ("vocab", None), rules)
    x = table.astype(cfg.compute_dtype)[tokens]
    if cfg.scale_embeddings:
      # In the compute dtype, as HF does (sqrt(3072) is 55.5 in bfloat16).
      x = x * jnp.asarray(cfg.embed_dim ** 0.5, cfg.compute_dtype)
    x = constrain(x, ("batch", "seq", "act_embed"), rules)
    block_def, block_params = nnx.split(self.blocks)

    def run_block(x, layer_params, is_local, layer_cache):
      # is_local is per-layer scanned data (a traced bool), so alternating
      # local/global layers share one compiled block.
      if local_mask is None:
        attention_mask = global_mask
      else:
        attention_mask = jnp.where(is_local, local_mask, global_mask)
      block = nnx.merge(block_def, layer_params)
      x, new_cache = block(x, positions, attention_mask, layer_cache)
      return constrain(x, ("batch", "seq", "act_embed"), rules), new_cache

    if cfg.remat != "none":
      run_block = jax.checkpoint(run_block, policy=_REMAT_POLICIES[cfg.remat])

    if layers is not None and (cache is None or not cache.per_layer):
      raise ValueError("Transformer: `layers=` goes with a per-layer KV cache "
                       "(init_cache(..., per_layer=True)).")
    if cache is None:
      x = self._run_blocks_without_cache(run_block, x, block_params, local_layers)
      new_cache = None
    elif cache.per_layer:
      if layers is None:
        layers = self.unstacked_layers()
      key, value = list(cache.key), list(cache.value)
      for i, layer_params in enumerate(layers):
        x, (key[i], value[i]) = run_block(x, layer_params, local_layers[i],
                                          (key[i], value[i], None, cache.index))
      key, value = tuple(key), tuple(value)
    else:
      x, key, value = self._run_blocks_with_cache(run_block, x, block_params, local_layers, cache)
    if cache is not None:
      new_cache = KVCache(key=key, value=value, slot_mask=key_valid,
                          lengths=cache.lengths + input_mask.sum(axis=1, dtype=jnp.int32),
                          index=cache.index + seq)

    x = self.final_norm(x)
    if return_hidden:
      return x, new_cache
    if cfg.tie_embeddings:
      head = self.embedding[...].T
    else:
      head = self.lm_head[...]
    # `dense`, not einsum: its backward transposes the [tokens, embed] input
    # instead of the [tokens, vocab] logits' gradient (the small preset's
    # training step about 8% faster; bench/README.md).
    logits = dense(x, head.astype(cfg.compute_dtype), 1, jnp.float32)
    if cfg.final_logit_softcap is not None:
      logits = jnp.tanh(logits / cfg.final_logit_softcap) * cfg.final_logit_softcap
    return constrain(logits, ("batch", "seq", "act_vocab"), rules), new_cache

  def _sliding_window_mask(self, global_mask: jax.Array, positions: jax.Array,
                           key_valid: jax.Array) -> jax.Array | None:
    """global_mask restricted to keys less than sliding_window real tokens back (None: no window).

    Distances count real tokens (rotary positions), so padding holes do not
    shrink the window; with left or right padding this is HF's slot distance.
    """
    window = self.config.sliding_window
    if window is None:
      return None
    # A real key's position is the number of real slots before it; padded
    # slots are masked anyway.
    key_positions = jnp.cumsum(key_valid, axis=1, dtype=jnp.int32) - 1     # [batch, kv_len]
    distance = positions[:, :, None] - key_positions[:, None, :]          # [batch, seq, kv_len]
    return global_mask & (distance < window)

  def _run_blocks_without_cache(self, run_block, x, block_params, local_layers):
    if self.config.scan_layers:
      def body(x, layer):
        layer_params, is_local = layer
        return run_block(x, layer_params, is_local, None)[0], None
      return jax.lax.scan(body, x, (block_params, local_layers))[0]
    for i, layer_params in enumerate(split_layers(block_params, self.config.num_layers)):
      x = run_block(x, layer_params, local_layers[i], None)[0]
    return x

  def _run_blocks_with_cache(self, run_block, x, block_params, local_layers, cache: KVCache):
    """Runs the blocks, each writing its new keys/values into the stacked cache in place."""

    def body(carry, layer):
      x, key, value = carry
      layer_params, is_local, i = layer
      x, (key, value) = run_block(x, layer_params, is_local, (key, value, i, cache.index))
      return (x, key, value), None

    carry = (x, cache.key, cache.value)
    if self.config.scan_layers:
      layers = (block_params, local_layers, jnp.arange(self.config.num_layers))
      return jax.lax.scan(body, carry, layers)[0]
    for i in range(self.config.num_layers):
      carry = body(carry, (jax.tree.map(lambda p: p[i], block_params), local_layers[i], i))[0]
    return carry


def split_layers(stacked, num_layers: int) -> tuple:
  """A tree of [num_layers, ...] leaves -> a tuple of per-layer trees.

  One split per leaf, not a slice per layer: in the backward pass a split's
  transpose is one concatenate of the layers' gradients, where slicing each
  layer out gives a sum of zero-padded [num_layers, ...] gradients. The values
  are the same, bit for bit; `small`'s training step measured about 1.5%
  faster (bench/README.md).
  """
  leaves, treedef = jax.tree.flatten(stacked)
  parts = [[piece.reshape(piece.shape[1:]) for piece in jnp.split(leaf, num_layers)]
           for leaf in leaves]
  return tuple(treedef.unflatten([leaf_parts[i] for leaf_parts in parts])
               for i in range(num_layers))


def init_model(config: TransformerConfig, seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
  """Creates a model on the default device and splits it into (graphdef, params)."""
  return nnx.split(Transformer(config, rngs=nnx.Rngs(params=seed)))


def count_params(params: nnx.State) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
