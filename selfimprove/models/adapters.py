"""Adding fresh LoRA adapters to a plain model (e.g. one just imported from Hugging Face).

Lives apart from `lora.py` because it builds a `Transformer`, whose layers use
`lora.py`: keeping it there made an import circle (layers -> lora -> transformer).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from selfimprove import sharding
from selfimprove.models.config import TransformerConfig
from selfimprove.models.lora import LoRAParam
from selfimprove.models.transformer import Transformer


def add_adapters(config: TransformerConfig, params: nnx.State, rank: int, alpha: float = 16.0,
                 targets: Sequence[str] | None = None, seed: int = 0,
                 ) -> tuple[TransformerConfig, nnx.GraphDef, nnx.State]:
  """Fresh adapters (A random, B zero) on a plain model, e.g. one just imported from HF.

  Returns (config with lora_rank=rank, graphdef, params with the adapters
  added); the base parameters are reused as they are. On a mesh, each
  adapter is placed in its sharding on the mesh of the base parameters.
  """
  if config.lora_rank:
    raise ValueError(f"The config already has LoRA adapters (lora_rank={config.lora_rank}).")
  lora_config = config.replace(lora_rank=rank, lora_alpha=alpha,
                               lora_targets=tuple(targets or config.lora_targets))
  abstract = nnx.eval_shape(lambda: Transformer(lora_config, rngs=nnx.Rngs(params=seed)))
  abstract_adapters = nnx.state(abstract, LoRAParam)
  base_sharding = jax.tree.leaves(params)[0].sharding
  shardings = None
  if isinstance(base_sharding, jax.sharding.NamedSharding):
    shardings = dict(nnx.to_flat_state(sharding.state_shardings(
        abstract_adapters, base_sharding.mesh, lora_config.sharding_rules)))
  flat = list(nnx.to_flat_state(abstract_adapters))

  # Only the adapters are created, in one small compiled function; all A
  # matrices come from one flat draw (XLA:CPU compiles one random op per
  # shape slowly: seconds for a handful of them).
  a_sizes = [math.prod(v.shape) for path, v in flat if path[-1].endswith("_lora_a")]

  def make_values(key):
    draws = jax.random.truncated_normal(key, -2.0, 2.0, (sum(a_sizes),), jnp.float32)
    values, offset = [], 0
    for path, variable in flat:
      shape, dtype = variable.shape, variable.dtype
      if path[-1].endswith("_lora_b"):
        values.append(jnp.zeros(shape, dtype))
        continue
      # A [layers, in..., rank]: fan-in scaled truncated normal, like the
      # base projections' init (0.8796 is the std of a unit normal cut at +-2).
      size, fan_in = math.prod(shape), math.prod(shape[1:-1])
      std = fan_in ** -0.5 / 0.87962566103423978
      values.append((draws[offset:offset + size].reshape(shape) * std).astype(dtype))
      offset += size
    return values

  out_shardings = None if shardings is None else [shardings[path].get_value() for path, _ in flat]
  values = jax.jit(make_values, out_shardings=out_shardings)(jax.random.key(seed))
  adapters = [(path, variable.replace(value)) for (path, variable), value in zip(flat, values)]
  params = nnx.merge_state(params, nnx.from_flat_state(adapters))
  return lora_config, nnx.graphdef(abstract), params
