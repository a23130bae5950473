"""Loss pieces: pure functions of arrays, shared by every pipeline."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(targets) under logits: [..., vocab], [...] -> [...] float32.

  Computed as logits[target] - logsumexp(logits), with a hand-written backward
  (`_target_logprob`): the forward makes no [..., vocab] temporary, and the
  gradient with respect to the logits is one fused pass, g * (onehot - softmax).
  """
  return _target_logprob(logits.astype(jnp.float32), targets.astype(jnp.int32))


def _logsumexp(logits: jax.Array) -> jax.Array:
  """logsumexp over the last axis (a row of -inf gives -inf, not NaN)."""
  peak = jnp.max(logits, axis=-1, keepdims=True)
  peak = jax.lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
  return jnp.log(jnp.sum(jnp.exp(logits - peak), axis=-1)) + peak[..., 0]


def _vocab_ids(logits: jax.Array) -> jax.Array:
  """[..., vocab] int32: each entry's index along the last axis (an iota XLA fuses)."""
  return jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)


def _is_target(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """[..., vocab] one-hot of targets as a comparison XLA fuses into its consumer."""
  return _vocab_ids(logits) == targets[..., None]


@jax.custom_vjp
def _target_logprob(logits: jax.Array, targets: jax.Array) -> jax.Array:
  return _target_logprob_fwd(logits, targets)[0]


def _target_logprob_fwd(logits, targets):
  lse = _logsumexp(logits)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return picked - lse, (logits, targets, lse)


def _target_logprob_bwd(residuals, grad):
  logits, targets, lse = residuals
  probs = jnp.exp(logits - lse[..., None])
  return grad[..., None] * (_is_target(logits, targets).astype(logits.dtype) - probs), None


_target_logprob.defvjp(_target_logprob_fwd, _target_logprob_bwd)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values` where `mask` is True (0 if the mask is empty)."""
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def next_token_targets(tokens: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """What position t predicts: (tokens[:, t+1], loss_mask[:, t+1]), [batch, seq] each.

  The last position predicts nothing (target 0, masked). Losses compare these
  with the logits of every position, so the [batch, seq, vocab] logits are never
  sliced (a slice and its gradient's pad would copy them twice).
  """
  targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
  is_target = jnp.concatenate([loss_mask[:, 1:], jnp.zeros_like(loss_mask[:, :1])], axis=1)
  return targets, is_target.astype(bool)


def next_token_loss(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array) -> jax.Array:
  """Mean cross-entropy of predicting tokens[:, t+1] from position t.

  Args:
    logits: [batch, seq, vocab] from a forward pass over `tokens`.
    tokens: [batch, seq] int ids.
    loss_mask: [batch, seq] bool; True where tokens[:, t] is a target (its
      prediction comes from position t-1). Column 0 is never a target.
  """
  targets, is_target = next_token_targets(tokens, loss_mask)
  return -masked_mean(token_logprobs(logits, targets), is_target)


def first_argmax(logits: jax.Array) -> jax.Array:
  """jnp.argmax over the last axis (the first index of the maximum), as two plain reductions.

  XLA:CPU runs argmax's (value, index) reduction unvectorised; over a small
  model's [8, 256, 32000] logits it took 3% of a training step. A row holding
  NaN gives the out-of-range index vocab (argmax would give the NaN's index).
  """
  peak = jnp.max(logits, axis=-1, keepdims=True)
  return jnp.min(jnp.where(logits == peak, _vocab_ids(logits), logits.shape[-1]), axis=-1)


def teacher_forced_exact_match(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array
                               ) -> jax.Array:
  """[batch] 1.0 where every target token (as in `next_token_loss`) is the argmax.

  Equivalently: greedy decoding from the row's context would write exactly its
  targets, so this is the training rows' greedy exact match at no sampling cost.
  Rows without targets count as matched.
  """
  targets, is_target = next_token_targets(tokens, loss_mask)
  hit = first_argmax(logits) == targets
  return jnp.all(hit | ~is_target, axis=-1).astype(jnp.float32)


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


# ---- GRPO family (pipelines/rl.py) -------------------------------------------
#
# Rows are [num_prompts * G] with the G samples of one prompt contiguous; token
# arrays are [rows, len] with `mask` True at real completion tokens.

POLICY_LOSS_AGGREGATIONS = ("token_mean", "sequence_mean", "constant")


def grpo_advantages(rewards: jax.Array, group_size: int, normalize_std: bool = True,
                    eps: float = 1e-4) -> jax.Array:
  """GRPO's outcome advantage (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, sec. 4.1.2):

      A_i = (r_i - mean_g(r)) / (std_g(r) + eps)     (normalize_std=True)
      A_i =  r_i - mean_g(r)                          (normalize_std=False)

  over the G samples g of the row's prompt; every token of sample i gets A_i.
  std is the sample standard deviation (divisor G - 1, torch's default, as TRL
  and verl compute it; the paper does not say). A group whose rewards are all
  equal gets A = 0, also with eps = 0. rewards [num_prompts * G] -> [num_prompts * G].
  """
  groups = _groups(rewards, group_size)
  centred = groups - jnp.mean(groups, axis=1, keepdims=True)
  if normalize_std:
    if group_size < 2:
      raise ValueError(f"grpo advantages with normalize_std need group_size >= 2, "
                       f"got {group_size}.")
    scale = jnp.std(groups, axis=1, keepdims=True, ddof=1) + eps
    centred = centred / jnp.where(scale > 0, scale, 1.0)
  return centred.reshape(-1)


def dr_grpo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
  """Dr. GRPO's advantage (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
  Perspective", arXiv 2503.20783): A_i = r_i - mean_g(r), without GRPO's division by the
  group std (which up-weights prompts whose samples nearly all agree). Pair it with the
  "constant" aggregation of `clipped_policy_loss`, the paper's other fix.
  rewards [num_prompts * G] -> [num_prompts * G]; equals `group_mean_advantages`.
  """
  return group_mean_advantages(rewards, group_size)


def aggregate_token_losses(values: jax.Array, mask: jax.Array, aggregation: str) -> jax.Array:
  """Per-token values [B, L] -> a scalar, by `aggregation` (M = mask, |o_i| = sum_t M_it):

    "token_mean":    sum_it M_it v_it / sum_it M_it      (DAPO, Yu et al. 2025, arXiv 2503.14476:
                                                          every token weighs the same)
    "sequence_mean": (1/B) sum_i (1/|o_i|) sum_t M_it v_it   (GRPO's objective, arXiv 2402.03300)
    "constant":      sum_it M_it v_it / (B * L)          (Dr. GRPO, arXiv 2503.20783: L = the
                                                          static completion budget, no length bias)

  Rows without tokens count 0 in "sequence_mean"; an empty mask gives 0.
  """
  mask = mask.astype(jnp.float32)
  total = values.astype(jnp.float32) * mask
  if aggregation == "token_mean":
    return jnp.sum(total) / jnp.maximum(jnp.sum(mask), 1.0)
  if aggregation == "sequence_mean":
    return jnp.mean(jnp.sum(total, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0))
  if aggregation == "constant":
    return jnp.sum(total) / (mask.shape[0] * mask.shape[1])
  raise ValueError(f"aggregation must be one of {POLICY_LOSS_AGGREGATIONS}, got {aggregation!r}.")


def clipped_policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array,
                        mask: jax.Array, clip_eps_low: float, clip_eps_high: float,
                        aggregation: str) -> tuple[jax.Array, jax.Array]:
  """PPO's clipped surrogate per token (Schulman et al. 2017, arXiv 1707.06347), as GRPO uses it:

      rho_it = exp(logp_it - old_logp_it)
      l_it   = -min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i)
      loss   = aggregate_token_losses(l, mask, aggregation)

  eps_low = eps_high is PPO/GRPO; eps_high > eps_low is DAPO's "clip-higher" (0.2 / 0.28).
  clip_fraction = share of real tokens whose gradient the clip removes: (rho > 1 + eps_high
  and A > 0) or (rho < 1 - eps_low and A < 0), over all real tokens of the batch.

  Args:
    logp: [B, L] log-probs of the sampled tokens under the policy being trained.
    old_logp: [B, L] the same under the policy that sampled them (no gradient taken).
    advantages: [B], one per sequence (no gradient taken).
    mask: [B, L] bool, True at real completion tokens.

  Returns:
    (scalar loss, scalar clip_fraction).
  """
  old_logp = jax.lax.stop_gradient(old_logp)
  advantages = jax.lax.stop_gradient(advantages)[:, None]
  ratio = jnp.exp(jnp.where(mask, logp - old_logp, 0.0))
  clipped = jnp.clip(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
  per_token = -jnp.minimum(ratio * advantages, clipped * advantages)
  is_clipped = (((ratio > 1.0 + clip_eps_high) & (advantages > 0)) |
                ((ratio < 1.0 - clip_eps_low) & (advantages < 0)))
  clip_fraction = masked_mean(jax.lax.stop_gradient(is_clipped).astype(jnp.float32), mask)
  return aggregate_token_losses(per_token, mask, aggregation), clip_fraction


# ---- Preference losses over summed completion log-probs (DPO family) ---------------------

def sequence_logprobs(logp: jax.Array, mask: jax.Array) -> jax.Array:
  """[B] sum of the completion's token log-probs (logp, mask [B, L]): the convention of DPO,
  SPIN, SPPO and Self-Rewarding (summed, not averaged)."""
  return jnp.sum(jnp.where(mask, logp, 0.0), axis=-1)


def preference_margin(chosen: jax.Array, rejected: jax.Array, ref_chosen: jax.Array,
                      ref_rejected: jax.Array) -> jax.Array:
  """[B] h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)), all summed log-probs [B]."""
  return (chosen - ref_chosen) - (rejected - ref_rejected)


def pair_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
  """The mean of [B] per-pair values, or their `weights`-weighted mean (0 when all weights are
  0: pairs masked out of a batch contribute nothing, and a batch without pairs no gradient)."""
  if weights is None:
    return jnp.mean(values)
  weights = weights.astype(jnp.float32)
  return jnp.sum(jnp.where(weights > 0, values, 0.0) * weights) / jnp.maximum(jnp.sum(weights),
                                                                              1e-9)


def dpo_loss(chosen: jax.Array, rejected: jax.Array, ref_chosen: jax.Array,
             ref_rejected: jax.Array, beta: float, weights: jax.Array | None = None
             ) -> jax.Array:
  """Scalar DPO sigmoid loss (Rafailov et al. 2023, arXiv 2305.18290): mean_b -log sigmoid(beta h_b).

  Also SPIN's logistic loss (Chen et al. 2024, arXiv 2401.01335) with chosen = the data's
  answer, rejected = the previous iterate's sample and ref = that iterate (beta = lambda).
  `weights` [B]: a weighted mean (0 masks a pair out; see `pair_mean`).
  """
  return pair_mean(-jax.nn.log_sigmoid(beta * preference_margin(chosen, rejected, ref_chosen,
                                                                 ref_rejected)), weights)


def spin_hinge_loss(chosen: jax.Array, rejected: jax.Array, ref_chosen: jax.Array,
                    ref_rejected: jax.Array, beta: float) -> jax.Array:
  """Scalar mean_b max(0, 1 - beta h_b): SPIN's hinge variant (its code's loss_type "hinge")."""
  margin = beta * preference_margin(chosen, rejected, ref_chosen, ref_rejected)
  return jnp.mean(jnp.maximum(0.0, 1.0 - margin))


def chosen_nll_loss(chosen: jax.Array, chosen_lengths: jax.Array,
                    weights: jax.Array | None = None) -> jax.Array:
  """Scalar mean_b -log pi(y_w) / |y_w|: the chosen responses' per-token negative log-likelihood,
  the term Iterative RPO adds to DPO (Pang et al. 2024, arXiv 2404.19733: DPO alone lowers the
  chosen log-probs on reasoning pairs). `chosen` are summed log-probs [B], `chosen_lengths`
  their completion token counts [B]; `weights` as in `pair_mean`."""
  return pair_mean(-chosen / jnp.maximum(chosen_lengths.astype(jnp.float32), 1.0), weights)


def ipo_loss(chosen: jax.Array, rejected: jax.Array, ref_chosen: jax.Array,
             ref_rejected: jax.Array, beta: float) -> jax.Array:
  """Scalar IPO loss (Azar et al. 2023, arXiv 2310.12036): mean_b (h_b - 1 / (2 beta))^2.

  On summed log-probs like the other losses here (TRL's "ipo" averages over tokens first).
  """
  margin = preference_margin(chosen, rejected, ref_chosen, ref_rejected)
  return jnp.mean(jnp.square(margin - 1.0 / (2.0 * beta)))


def sppo_loss(chosen: jax.Array, rejected: jax.Array, ref_chosen: jax.Array,
              ref_rejected: jax.Array, win_rate_chosen: jax.Array, win_rate_rejected: jax.Array,
              beta: float, weights: jax.Array | None = None) -> jax.Array:
  """Scalar SPPO loss (Wu et al. 2024, arXiv 2405.00675; its code's loss_type "sppo"):

      mean_b 1/2 [ (log pi(y_w)/pi_t(y_w) - eta (P_w - 1/2))^2
                 + (log pi(y_l)/pi_t(y_l) - eta (P_l - 1/2))^2 ],   eta = 1 / beta,

  each response's log-ratio regressed onto eta times its centred estimated win rate P against
  the current policy pi_t (= the reference). All arrays [B]; win rates in [0, 1].
  """
  eta = 1.0 / beta
  chosen_term = jnp.square(chosen - ref_chosen - eta * (win_rate_chosen - 0.5))
  rejected_term = jnp.square(rejected - ref_rejected - eta * (win_rate_rejected - 0.5))
  return pair_mean(0.5 * (chosen_term + rejected_term), weights)


def preference_metrics(chosen: jax.Array, rejected: jax.Array, ref_chosen: jax.Array,
                       ref_rejected: jax.Array, beta: float, weights: jax.Array | None = None
                       ) -> dict[str, jax.Array]:
  """The DPO family's logged figures: implicit rewards r = beta (log pi - log ref) of both
  responses, their margin, the share of pairs with r_w > r_l, and the policy's log-probs
  (means over the pairs, `weights`-weighted when given)."""
  reward_chosen, reward_rejected = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
  mean = lambda x: pair_mean(x, weights)  # noqa: E731
  return {"train/reward_margin": mean(reward_chosen - reward_rejected),
          "train/reward_accuracy": mean((reward_chosen > reward_rejected).astype(jnp.float32)),
          "train/chosen_logp": mean(chosen), "train/rejected_logp": mean(rejected)}
