"""LoRA: low-rank adapters on the attention and MLP projections.

A projection W (input axes first, then output axes, e.g. q_proj [embed,
heads, head_dim]) gets two adapter matrices, A [in..., rank] and B [rank,
out...], and computes x.W + (alpha / rank) * (x.A).B. B starts at zero, so a
fresh adapter leaves the model unchanged. Adapters are `LoRAParam`s, a subclass
of `nnx.Param`, so one filter separates them from the frozen base:

    graphdef, adapters, base = nnx.split(model, LoRAParam, ...)
    grads = jax.grad(lambda a: loss(nnx.merge(graphdef, a, base)))(adapters)

`merge_lora` folds trained adapters into the base weights (for export).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from selfimprove.models.config import TransformerConfig
from selfimprove.models.dense import dense


class LoRAParam(nnx.Param):
  """A trainable LoRA adapter matrix (the base weights stay plain `nnx.Param`)."""


def make_adapter(rngs: nnx.Rngs, config: TransformerConfig, weight_shape: Sequence[int],
                 logical_axes: Sequence[str], num_in_axes: int
                 ) -> tuple[LoRAParam, LoRAParam]:
  """Adapter (A, B) for a weight whose first `num_in_axes` axes are contracted with the input.

  A is fan-in scaled random, B is zero; the rank axis is replicated (it is small).
  """
  r, pd = config.lora_rank, config.params_dtype
  in_shape, out_shape = tuple(weight_shape[:num_in_axes]), tuple(weight_shape[num_in_axes:])
  init = jax.nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=tuple(range(num_in_axes)),
      out_axis=num_in_axes)
  a = LoRAParam(init(rngs.params(), in_shape + (r,), pd),
                out_sharding=tuple(logical_axes[:num_in_axes]) + (None,), eager_sharding=False)
  b = LoRAParam(jnp.zeros((r,) + out_shape, pd),
                out_sharding=(None,) + tuple(logical_axes[num_in_axes:]), eager_sharding=False)
  return a, b


def project(x: jax.Array, equation: str, weight: jax.Array,
            adapter: tuple[jax.Array, jax.Array] | None, scale: float,
            dtype: jnp.dtype) -> jax.Array:
  """einsum(equation, x, weight), plus the low-rank adapter's contribution if any.

  `equation` is the base projection, e.g. "bte,ehd->bhtd"; the weight's axes
  that also appear in x's subscripts are its input axes. The adapter path
  runs as two small einsums (x.A, then .B), never forming A.B.
  """
  inputs, out_sub = equation.split("->")
  x_sub, w_sub = inputs.split(",")
  in_axes = "".join(c for c in w_sub if c in x_sub)
  out_axes = "".join(c for c in w_sub if c not in x_sub)
  if x_sub.endswith(in_axes) and w_sub.startswith(in_axes) and out_sub == x_sub[
      :len(x_sub) - len(in_axes)] + out_axes:
    y = dense(x, weight.astype(dtype), len(in_axes))    # the same values, a faster backward
  else:
    y = jnp.einsum(equation, x, weight.astype(dtype))
  if adapter is None:
    return y
  low_sub = "".join(c for c in x_sub if c not in in_axes) + "r"
  a, b = adapter
  low = jnp.einsum(f"{x_sub},{in_axes}r->{low_sub}", x, a.astype(dtype))
  delta = jnp.einsum(f"{low_sub},r{out_axes}->{out_sub}", low, b.astype(dtype))
  return y + (delta * scale).astype(y.dtype)


def adapter_of(module: nnx.Module, name: str) -> tuple[jax.Array, jax.Array] | None:
  """The (A, B) arrays of projection `name` on `module`, or None without an adapter."""
  a = getattr(module, f"{name}_lora_a", None)
  if a is None:
    return None
  return a[...], getattr(module, f"{name}_lora_b")[...]


def merge_lora(config: TransformerConfig, params: nnx.State
               ) -> tuple[TransformerConfig, nnx.State]:
  """Folds every adapter into its base weight: W + (alpha / rank) * A.B.

  Args:
    config: the config the adapted model was built with (lora_rank > 0).
    params: the model's full state (base and adapters), stacked over layers.

  Returns:
    (config with the LoRA fields back at their defaults, params of the
    plain model with that config); the merged weights keep their dtype and
    sharding. The product is formed in float32.
  """
  flat = dict(nnx.to_flat_state(params))
  merged = []
  for path, variable in flat.items():
    name = path[-1]
    if isinstance(variable, LoRAParam):
      continue
    a_var = flat.get(path[:-1] + (f"{name}_lora_a",))
    if a_var is not None:
      b_var = flat[path[:-1] + (f"{name}_lora_b",)]
      weight = variable[...]
      a, b = a_var[...], b_var[...]
      # Stacked: A [layers, in..., r], B [layers, r, out...], W [layers, in..., out...].
      layers, rank = a.shape[0], a.shape[-1]
      a2 = a.reshape(layers, -1, rank).astype(jnp.float32)
      b2 = b.reshape(layers, rank, -1).astype(jnp.float32)
      delta = jnp.einsum("lir,lro->lio", a2, b2,
                         precision=jax.lax.Precision.HIGHEST).reshape(weight.shape)
      new = (weight.astype(jnp.float32) + config.lora_scale * delta).astype(weight.dtype)
      if isinstance(weight, jax.Array):
        new = jax.device_put(new, weight.sharding)
      variable = variable.replace(new)
    merged.append((path, variable))
  defaults = {f.name: f.default for f in dataclasses.fields(TransformerConfig)
              if f.name.startswith("lora_")}
  return config.replace(**defaults), nnx.from_flat_state(merged)


def split_adapters(params: nnx.State) -> tuple[nnx.State, nnx.State]:
  """(adapters, base) parts of a model state; `nnx.merge(graphdef, adapters, base)` rejoins them."""
  return nnx.split_state(params, LoRAParam, ...)
