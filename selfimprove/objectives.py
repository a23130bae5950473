"""Loss pieces: pure functions of arrays, shared by every pipeline."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(targets) under logits: [batch, seq, vocab], [batch, seq] -> [batch, seq] float32."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values` where `mask` is True (0 if the mask is empty)."""
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def next_token_loss(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array) -> jax.Array:
  """Mean cross-entropy of predicting tokens[:, t+1] from position t.

  Args:
    logits: [batch, seq, vocab] from a forward pass over `tokens`.
    tokens: [batch, seq] int ids.
    loss_mask: [batch, seq] bool; True where tokens[:, t] is a target (its
      prediction comes from position t-1). Column 0 is never a target.
  """
  logp = token_logprobs(logits[:, :-1], tokens[:, 1:])
  return -masked_mean(logp, loss_mask[:, 1:])
