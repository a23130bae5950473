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


def teacher_forced_exact_match(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array
                               ) -> jax.Array:
  """[batch] 1.0 where every target token (as in `next_token_loss`) is the argmax.

  Equivalently: greedy decoding from the row's context would write exactly its
  targets, so this is the training rows' greedy exact match at no sampling cost.
  Rows without targets count as matched.
  """
  hit = jnp.argmax(logits[:, :-1], axis=-1) == tokens[:, 1:]
  return jnp.all(hit | ~loss_mask[:, 1:].astype(bool), axis=-1).astype(jnp.float32)


# ---- Policy-gradient pieces (SCoRe and later RL pipelines) -------------------
#
# Conventions: `logp` and `ref_logp` are per-token log-probabilities [rows, len]
# of sampled completion tokens under the policy and the frozen reference
# policy; `mask` [rows, len] is True at real completion tokens. Rewards of
# grouped samples are [num_prompts * n] with the n rows of one prompt
# contiguous (the layout `sampling.sample` produces).

KL_ESTIMATORS = ("exact", "k1", "k3")
ADVANTAGE_ESTIMATORS = ("reinforce", "rloo", "group_mean")


def kl_k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """Per-token k1 estimate of KL(pi || ref) from samples of pi: logp - ref_logp. [...] -> [...].

  Unbiased but can be negative. Used directly as a loss term its gradient is
  the score function grad log pi, whose expectation under pi is zero, so as a
  penalty it only adds noise; it is best as a metric (or folded into a reward).
  """
  return logp - ref_logp


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """Per-token k3 estimate of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1. [...] -> [...].

  Unbiased, always >= 0 and low-variance (Schulman's k3, as in GRPO). As a loss
  term its expected gradient is that of KL(ref || pi), which pulls pi toward ref.
  """
  log_ratio = ref_logp - logp
  return jnp.exp(log_ratio) - log_ratio - 1.0


def per_token_kl(logp: jax.Array, ref_logp: jax.Array, estimator: str) -> jax.Array:
  """Per-token KL estimate [...] from sampled tokens' log-probs: "k1" or "k3" (see `kl_k1`, `kl_k3`)."""
  if estimator == "k1":
    return kl_k1(logp, ref_logp)
  if estimator == "k3":
    return kl_k3(logp, ref_logp)
  raise ValueError(f"Sampled-token KL estimator must be 'k1' or 'k3', got {estimator!r}.")


def exact_kl(log_probs: jax.Array, ref_log_probs: jax.Array) -> jax.Array:
  """Per-position KL(pi || ref) = sum_v pi(v) (log pi(v) - log ref(v)), exactly.

  log_probs, ref_log_probs: [..., vocab] normalised log-distributions -> [...].
  Zero iff the two distributions are equal; its gradient is that of KL(pi || ref)
  itself (the paper's penalty), unlike a sampled estimate's.
  """
  return jnp.sum(jnp.exp(log_probs) * (log_probs - ref_log_probs), axis=-1)


def turn_kl(log_probs: jax.Array, ref_log_probs: jax.Array, logp: jax.Array,
            ref_logp: jax.Array, estimator: str) -> jax.Array:
  """Per-token KL(pi || ref) [rows, N] of a turn by name: "exact", "k1" or "k3".

  log_probs, ref_log_probs: [rows, N, vocab] next-token log-distributions at the
  turn's positions (for "exact"); logp, ref_logp: [rows, N] the sampled tokens'
  log-probs under each (for "k1"/"k3").
  """
  if estimator == "exact":
    return exact_kl(log_probs, ref_log_probs)
  return per_token_kl(logp, ref_logp, estimator)


def _groups(rewards: jax.Array, num_samples_per_prompt: int) -> jax.Array:
  """[num_prompts * n] -> [num_prompts, n], checking the row count."""
  n = num_samples_per_prompt
  if n < 1 or rewards.shape[0] % n:
    raise ValueError(f"num_samples_per_prompt={n} must be >= 1 and divide the number of "
                     f"reward rows ({rewards.shape[0]}).")
  return rewards.reshape(-1, n)


def reinforce_advantages(rewards: jax.Array, baseline: float = 0.0) -> jax.Array:
  """Plain REINFORCE (the SCoRe paper's choice): rewards [rows] minus a constant baseline -> [rows]."""
  return rewards - baseline


def rloo_advantages(rewards: jax.Array, num_samples_per_prompt: int) -> jax.Array:
  """Leave-one-out baseline: r_i minus the mean of the other n-1 rewards of its prompt.

  rewards [num_prompts * n] (rows of a prompt contiguous) -> [num_prompts * n].
  Needs n >= 2 (with one sample there is no other sample to compare with).
  """
  if num_samples_per_prompt < 2:
    raise ValueError(f"rloo advantages need num_samples_per_prompt >= 2, "
                     f"got {num_samples_per_prompt}.")
  groups = _groups(rewards, num_samples_per_prompt)
  others = (jnp.sum(groups, axis=1, keepdims=True) - groups) / (num_samples_per_prompt - 1)
  return (groups - others).reshape(-1)


def group_mean_advantages(rewards: jax.Array, num_samples_per_prompt: int) -> jax.Array:
  """Reward minus the mean reward of its prompt's group (no std normalisation).

  rewards [num_prompts * n] (rows of a prompt contiguous) -> [num_prompts * n].
  Equals (n-1)/n times the RLOO advantage.
  """
  groups = _groups(rewards, num_samples_per_prompt)
  return (groups - jnp.mean(groups, axis=1, keepdims=True)).reshape(-1)


def advantages(rewards: jax.Array, num_samples_per_prompt: int, estimator: str) -> jax.Array:
  """Advantages [rows] by name: "reinforce" (no baseline), "rloo" or "group_mean"."""
  if estimator == "reinforce":
    return reinforce_advantages(rewards)
  if estimator == "rloo":
    return rloo_advantages(rewards, num_samples_per_prompt)
  if estimator == "group_mean":
    return group_mean_advantages(rewards, num_samples_per_prompt)
  raise ValueError(f"advantage estimator must be one of {ADVANTAGE_ESTIMATORS}, got {estimator!r}.")


def score_shaped_rewards(r1: jax.Array, r2: jax.Array, alpha: float
                         ) -> tuple[jax.Array, jax.Array]:
  """SCoRe Stage II rewards: (turn 1: r1, turn 2: r2 + alpha * (r2 - r1)). [rows] each.

  With binary rewards and alpha = 10 the turn-2 reward is 11 for wrong->right,
  1 for right->right, -10 for right->wrong and 0 for wrong->wrong.
  """
  return r1, r2 + alpha * (r2 - r1)


def policy_gradient_loss(logp: jax.Array, mask: jax.Array, advantages: jax.Array,
                         kl: jax.Array, kl_coef: float | jax.Array) -> jax.Array:
  """REINFORCE with a KL penalty on one turn: a scalar to minimise.

    loss = -mean_rows(A_i * sum_t m_it logp_it) + kl_coef * mean_rows(sum_t m_it kl_it)

  Normalisation: token terms are summed over each sequence (the log-probability
  of the whole completion, and the sequence KL), then averaged over rows. So
  the gradient is the textbook per-sequence REINFORCE estimate and a longer
  completion is not down-weighted per token.

  Args:
    logp: [rows, len] log-probabilities of the sampled tokens (differentiable).
    mask: [rows, len] bool, True at real completion tokens.
    advantages: [rows], treated as constants (no gradient flows through them).
    kl: [rows, len] per-token KL estimates (e.g. `per_token_kl`).
    kl_coef: the KL weight (a float or a traced scalar).
  """
  mask = mask.astype(logp.dtype)
  sequence_logp = jnp.sum(logp * mask, axis=1)
  sequence_kl = jnp.sum(kl * mask, axis=1)
  advantages = jax.lax.stop_gradient(advantages)
  return -jnp.mean(advantages * sequence_logp) + kl_coef * jnp.mean(sequence_kl)
