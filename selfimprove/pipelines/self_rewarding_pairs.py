"""Preference pairs from scored samples, as pure functions of arrays (pipelines/self_rewarding.py).

Scores are [P, N] (prompts x candidates, one prompt's candidates contiguous in a rollout's rows),
`finished` [P, N] bool marks candidates that ended with a stop token: the others never enter a
pair (NeMo-Aligner's Self-Rewarding drops responses without EOS). Every function returns
indices and a `valid` [P] bool: a prompt without a valid pair is masked out of the loss.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class PairChoice(NamedTuple):
  """Which candidates form each prompt's pair, [P] each."""

  chosen: jax.Array           # int32 index of the chosen candidate
  rejected: jax.Array         # int32 index of the rejected candidate
  valid: jax.Array            # bool: the pair enters the loss
  chosen_score: jax.Array     # float32; meaningful where valid (+-inf when no candidate finished)
  rejected_score: jax.Array


def best_and_worst(scores: jax.Array, finished: jax.Array) -> PairChoice:
  """Self-Rewarding's pair: the highest- and lowest-scoring finished candidates (first index on
  ties); valid only when the highest score exceeds the lowest (ties dropped, which also drops
  prompts with fewer than two finished candidates)."""
  finished = finished.astype(bool)
  high = jnp.where(finished, scores, -jnp.inf)
  low = jnp.where(finished, scores, jnp.inf)
  chosen, rejected = jnp.argmax(high, axis=1), jnp.argmin(low, axis=1)
  best, worst = jnp.max(high, axis=1), jnp.min(low, axis=1)
  valid = jnp.any(finished, axis=1) & (best > worst)
  return PairChoice(chosen.astype(jnp.int32), rejected.astype(jnp.int32), valid, best, worst)


def anchored_rejection(scores: jax.Array, finished: jax.Array, anchor_scores: jax.Array,
                       anchor_finished: jax.Array) -> tuple[PairChoice, jax.Array]:
  """Temporal Self-Rewarding's phase-1 pair over the current model's candidates [P, K] and the
  initial model's [P, K] (both scored by the current model): chosen = the best current
  candidate; rejected = the worst initial candidate if it scores below the worst current one,
  else the worst current candidate; valid when chosen scores above rejected.

  Returns (the pair with indices into the concatenation [current | anchor] of width 2K, and
  [P] bool: the rejected one is the anchor's)."""
  k = scores.shape[1]
  finished, anchor_finished = finished.astype(bool), anchor_finished.astype(bool)
  current = best_and_worst(scores, finished)
  best = jnp.max(jnp.where(finished, scores, -jnp.inf), axis=1)
  worst = jnp.min(jnp.where(finished, scores, jnp.inf), axis=1)
  anchor_worst = jnp.min(jnp.where(anchor_finished, anchor_scores, jnp.inf), axis=1)
  from_anchor = anchor_worst < worst
  rejected = jnp.where(from_anchor, k + jnp.argmin(jnp.where(anchor_finished, anchor_scores,
                                                             jnp.inf), axis=1),
                       current.rejected)
  rejected_score = jnp.where(from_anchor, anchor_worst, worst)
  valid = jnp.isfinite(best) & jnp.isfinite(rejected_score) & (best > rejected_score)
  pair = PairChoice(current.chosen, rejected.astype(jnp.int32), valid, best, rejected_score)
  return pair, from_anchor & valid


def future_guided_chosen(pair: PairChoice, future_scores: jax.Array, future_finished: jax.Array,
                         offset: int) -> tuple[PairChoice, jax.Array]:
  """Temporal Self-Rewarding's phase 2 on a phase-1 pair (`anchored_rejection`): where the
  future model's best finished candidate [P, K] scores above the current model's best (the
  pair's chosen score), it becomes the chosen one (index `offset` + its index); the rejected
  one is kept; valid when chosen scores above rejected.

  Returns (the pair, [P] bool: the chosen one is the future model's)."""
  masked = jnp.where(future_finished.astype(bool), future_scores, -jnp.inf)
  future_best = jnp.max(masked, axis=1)
  use_future = future_best > pair.chosen_score
  chosen = jnp.where(use_future, offset + jnp.argmax(masked, axis=1), pair.chosen)
  chosen_score = jnp.where(use_future, future_best, pair.chosen_score)
  valid = (jnp.isfinite(chosen_score) & jnp.isfinite(pair.rejected_score) &
           (chosen_score > pair.rejected_score))
  return (PairChoice(chosen.astype(jnp.int32), pair.rejected, valid, chosen_score,
                     pair.rejected_score), use_future & valid)


def win_rates(preference: jax.Array) -> jax.Array:
  """[P, K, K] preference (preference[:, i, j] = P(i better than j)) -> [P, K] each candidate's
  mean win rate against the other K - 1 (SPPO's estimate of P(y > pi_t))."""
  k = preference.shape[1]
  off_diagonal = ~jnp.eye(k, dtype=bool)
  return jnp.sum(jnp.where(off_diagonal, preference, 0.0), axis=2) / (k - 1)


def verifier_preference(correct: jax.Array) -> jax.Array:
  """[P, K] 0/1 verdicts -> [P, K, K] P(i better than j): 1 if only i is right, 0 if only j,
  1/2 on ties (the documented verifier option of SPPO)."""
  correct = correct.astype(jnp.float32)
  return 0.5 + 0.5 * (correct[:, :, None] - correct[:, None, :])


def take_candidates(values: jax.Array, index: jax.Array, group: int) -> jax.Array:
  """values [P * group, ...] (a rollout's rows) and index [P] -> [P, ...]: each prompt's pick."""
  grouped = values.reshape((-1, group) + values.shape[1:])
  return jnp.take_along_axis(grouped, index.reshape((-1, 1) + (1,) * (values.ndim - 1)),
                             axis=1)[:, 0]


__all__ = ["PairChoice", "best_and_worst", "anchored_rejection", "future_guided_chosen",
           "win_rates", "verifier_preference", "take_candidates"]
