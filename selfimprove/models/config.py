"""Transformer configuration: one frozen dataclass and its named presets."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from selfimprove import sharding

REMAT_POLICIES = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shape and numerics of a Llama-family decoder-only transformer.

  Attributes:
    vocab_size: number of token ids.
    embed_dim: width of the residual stream.
    mlp_dim: hidden width of the SwiGLU MLP.
    num_layers: number of transformer blocks.
    num_heads: query heads per block.
    num_kv_heads: key/value heads (grouped-query attention); divides num_heads.
    head_dim: width of each attention head.
    rope_theta: base of the rotary position embedding frequencies.
    norm_eps: epsilon of RMSNorm.
    tie_embeddings: reuse the token embedding as the LM head.
    dtype: compute dtype name (activations, matmul inputs), e.g. "bfloat16".
    param_dtype: storage dtype name of the parameters.
    remat: rematerialisation of each block in the backward pass: "none",
      "full" (save nothing inside a block) or "dots" (save matmul outputs).
    scan_layers: run the blocks under `jax.lax.scan` (one compiled block,
      fast compiles on deep models) instead of an unrolled Python loop. The
      parameter layout is the same either way (stacked on a `layers` axis),
      so checkpoints move freely between the two.
    sharding_rules: logical-axis -> mesh-axis table (see `sharding.py`).
  """

  vocab_size: int
  embed_dim: int
  mlp_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = True
  sharding_rules: sharding.Rules = sharding.DEFAULT_RULES

  def __post_init__(self):
    for name in ("vocab_size", "embed_dim", "mlp_dim", "num_layers",
                 "num_heads", "num_kv_heads", "head_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"TransformerConfig.{name} must be a positive integer, got {value!r}.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"TransformerConfig.num_heads ({self.num_heads}) must be a multiple "
          f"of num_kv_heads ({self.num_kv_heads}) for grouped-query attention.")
    if self.head_dim % 2:
      raise ValueError(
          f"TransformerConfig.head_dim must be even for rotary embeddings, "
          f"got {self.head_dim}.")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(
          f"TransformerConfig.remat must be one of {REMAT_POLICIES}, got "
          f"{self.remat!r}.")
    for name in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError:
        raise ValueError(
            f"TransformerConfig.{name} must name a dtype such as 'float32' or "
            f"'bfloat16', got {getattr(self, name)!r}.") from None

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def num_params(self) -> int:
    """Parameter count implied by the shapes (embedding counted once if tied)."""
    e, h, k, d = self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim
    attention = e * h * d * 2 + e * k * d * 2
    mlp = 3 * e * self.mlp_dim
    norms = 2 * e
    embedding = self.vocab_size * e
    head = 0 if self.tie_embeddings else self.vocab_size * e
    return self.num_layers * (attention + mlp + norms) + embedding + head + e

  def replace(self, **changes: Any) -> "TransformerConfig":
    return dataclasses.replace(self, **changes)


PRESETS: dict[str, TransformerConfig] = {
    # ~3.4M parameters: tests, CPU demos and benchmarks.
    "tiny": TransformerConfig(
        vocab_size=512, embed_dim=256, mlp_dim=768, num_layers=4,
        num_heads=8, num_kv_heads=4, head_dim=32),
    # ~125M parameters (GPT-2-small scale with a Llama-style block).
    "small": TransformerConfig(
        vocab_size=32000, embed_dim=768, mlp_dim=2048, num_layers=12,
        num_heads=12, num_kv_heads=4, head_dim=64),
}


def get_preset(name: str, **overrides: Any) -> TransformerConfig:
  """Returns the named preset, with any field replaced by `overrides`."""
  if name not in PRESETS:
    raise ValueError(
        f"Unknown model preset {name!r}; available presets: {sorted(PRESETS)}.")
  return PRESETS[name].replace(**overrides)
