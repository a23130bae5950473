"""Two-turn conversations as static-shape arrays: the second-turn context and per-turn log-probs.

Turn 1 sees the prompt x; turn 2 sees [x, y1, p]: the prompt, attempt 1
exactly as sampled, then a fixed correction instruction p. Everything is
concatenated column-wise with the masks, so padding inside the prompt and
after attempt 1's stop token stays in place as holes: the transformer makes
padding invisible and does not advance positions over it, so the model sees
exactly the real tokens in order. No compaction (a data-dependent gather) is
needed, and all shapes are static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from selfimprove.models.transformer import Transformer


def build_turn2_context(prompt_tokens: jax.Array, prompt_mask: jax.Array,
                        attempt_tokens: jax.Array, attempt_mask: jax.Array,
                        instruction_ids: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """The second-turn prompt [x, y1, p] with holes where x or y1 has padding.

  Args:
    prompt_tokens, prompt_mask: [rows, P] the turn-1 prompts (as in
      `Rollout.prompt_tokens`, i.e. already repeated per sample).
    attempt_tokens, attempt_mask: [rows, N] attempt 1 (`Rollout.tokens`,
      `Rollout.completion_mask`); its stop token is kept.
    instruction_ids: the correction instruction's token ids (static, non-empty).

  Returns:
    (tokens int32 [rows, P + N + I], mask bool [rows, P + N + I]). The last I
    columns are the instruction, always real, so the context ends on a real
    token (where the sampler reads its first logits).
  """
  if not instruction_ids:
    raise ValueError("build_turn2_context: instruction_ids is empty; the correction "
                     "instruction needs at least one token.")
  rows = prompt_tokens.shape[0]
  instruction = jnp.broadcast_to(jnp.asarray(instruction_ids, jnp.int32), (rows, len(instruction_ids)))
  tokens = jnp.concatenate([prompt_tokens.astype(jnp.int32), attempt_tokens.astype(jnp.int32),
                            instruction], axis=1)
  mask = jnp.concatenate([prompt_mask.astype(bool), attempt_mask.astype(bool),
                          jnp.ones(instruction.shape, bool)], axis=1)
  return tokens, mask


def build_scoring_sequence(context_tokens: jax.Array, context_mask: jax.Array,
                           completion_tokens: jax.Array, completion_mask: jax.Array
                           ) -> tuple[jax.Array, jax.Array]:
  """Context then completion, to re-score a turn in one forward pass.

  [rows, C] and [rows, N] -> (tokens int32 [rows, C + N], mask bool [rows, C + N]).
  """
  tokens = jnp.concatenate([context_tokens.astype(jnp.int32),
                            completion_tokens.astype(jnp.int32)], axis=1)
  mask = jnp.concatenate([context_mask.astype(bool), completion_mask.astype(bool)], axis=1)
  return tokens, mask


def previous_real_position(mask: jax.Array) -> jax.Array:
  """For each column t, the last column s < t with mask[s] (-1 if none). [rows, S] -> [rows, S] int32.

  With holes, the logits predicting token t sit at the previous *real* token,
  not at column t - 1.
  """
  seq = mask.shape[1]
  real_index = jnp.where(mask, jnp.arange(seq, dtype=jnp.int32)[None, :], -1)
  last_real_up_to = jax.lax.cummax(real_index, axis=1)
  return jnp.concatenate([jnp.full((mask.shape[0], 1), -1, jnp.int32), last_real_up_to[:, :-1]],
                         axis=1)


def completion_log_distributions(model: Transformer, context_tokens: jax.Array,
                                 context_mask: jax.Array, completion_tokens: jax.Array,
                                 completion_mask: jax.Array) -> jax.Array:
  """log pi(. | context, earlier completion tokens) at each completion position, one forward pass.

  Args:
    model: the policy or the reference policy (`nnx.merge(graphdef, params)`).
    context_tokens, context_mask: [rows, C]; at least one real token per row.
    completion_tokens, completion_mask: [rows, N].

  Returns:
    float32 [rows, N, vocab] next-token log-distributions at temperature 1 (the
    model's own), taken at the previous real token of each completion column.
  """
  tokens, mask = build_scoring_sequence(context_tokens, context_mask, completion_tokens,
                                        completion_mask)
  logits, _ = model(tokens, mask)
  context_len = context_tokens.shape[1]
  # Gather the predicting positions first, so the log-softmax runs on [rows, N, vocab] only.
  source = jnp.maximum(previous_real_position(mask)[:, context_len:], 0)       # [rows, N]
  predicting = jnp.take_along_axis(logits, source[:, :, None], axis=1)         # [rows, N, vocab]
  return jax.nn.log_softmax(predicting.astype(jnp.float32), axis=-1)


def token_logprobs_of(log_distributions: jax.Array, completion_tokens: jax.Array,
                      completion_mask: jax.Array) -> jax.Array:
  """[rows, N, vocab] log-distributions -> [rows, N] log-probs of the tokens (0 where masked)."""
  logp = jnp.take_along_axis(log_distributions, completion_tokens.astype(jnp.int32)[:, :, None],
                             axis=-1)[..., 0]
  return jnp.where(completion_mask, logp, 0.0)


def completion_logprobs(model: Transformer, context_tokens: jax.Array, context_mask: jax.Array,
                        completion_tokens: jax.Array, completion_mask: jax.Array) -> jax.Array:
  """log pi(completion token | context, earlier completion tokens): float32 [rows, N], 0 where
  the completion is masked out (see `completion_log_distributions`)."""
  return token_logprobs_of(completion_log_distributions(
      model, context_tokens, context_mask, completion_tokens, completion_mask),
      completion_tokens, completion_mask)


def edit_distance(tokens_a: jax.Array, length_a: jax.Array, tokens_b: jax.Array,
                  length_b: jax.Array) -> jax.Array:
  """Levenshtein distance between each row's first length_a / length_b tokens, in-graph.

  tokens_a [rows, Na], tokens_b [rows, Nb] int; lengths [rows] int -> [rows] int32.

  Static-shape DP over the padded arrays: row i of the table only depends on
  a[:i] and b, so the answer is read at (length_a, length_b) whatever follows.
  Within a row, D[i, j] = min(c[j], D[i, j-1] + 1) (c: deletion/substitution)
  unrolls to j + cummin_k<=j (c[k] - k), so each row is vectorised and the
  scan runs over Na steps only.
  """
  rows, nb = tokens_b.shape
  columns = jnp.arange(nb + 1, dtype=jnp.int32)
  first_row = jnp.broadcast_to(columns, (rows, nb + 1))                       # D[0, j] = j

  def next_row(previous, inputs):
    i, token_a = inputs                                                       # [], [rows]
    cost = (token_a[:, None] != tokens_b).astype(jnp.int32)                   # [rows, Nb]
    candidates = jnp.concatenate([
        jnp.full((rows, 1), i, jnp.int32),                                    # D[i, 0] = i
        jnp.minimum(previous[:, 1:] + 1, previous[:, :-1] + cost)], axis=1)
    row = columns + jax.lax.cummin(candidates - columns, axis=1)
    return row, row

  steps = (jnp.arange(1, tokens_a.shape[1] + 1, dtype=jnp.int32), tokens_a.T)
  _, table = jax.lax.scan(next_row, first_row, steps)                         # [Na, rows, Nb+1]
  table = jnp.concatenate([first_row[None], table], axis=0)                   # [Na+1, rows, Nb+1]
  return table[length_a, jnp.arange(rows), length_b].astype(jnp.int32)


def normalized_edit_distance(tokens_a: jax.Array, length_a: jax.Array, tokens_b: jax.Array,
                             length_b: jax.Array) -> jax.Array:
  """`edit_distance` / max(length_a, length_b): float32 [rows] in [0, 1] (0 when both are empty)."""
  distance = edit_distance(tokens_a, length_a, tokens_b, length_b).astype(jnp.float32)
  return distance / jnp.maximum(jnp.maximum(length_a, length_b), 1).astype(jnp.float32)
