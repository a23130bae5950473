"""SCoRe's SFT baselines as the paper builds them: offline STaR D+ and Pair-SFT D+.

Both fine-tune on correction data sampled **once from the starting model** (the
frozen reference policy, `state.extra["ref_params"]`), which is the point of
the paper's comparison: the data's mistakes are the starting model's, not the
current model's (distribution shift), and the D+ data's many right-to-right
examples reward leaving the answer alone (collapse). Section 4 of Kumar et al.
2024 (arXiv 2409.12917):

  STaR D+   (`star_examples`): two-turn traces (x, y1, p, y2) of the starting
            model; keep those whose attempt 2 is right (wrong->right and, the
            "+", right->right); SFT on y2 given [x, y1, p].
  Pair-SFT D+ (`pair_examples`): first attempts of the starting model, sampled
            independently (num_samples_per_prompt per problem); pair each wrong
            attempt y- with a right attempt y+ of the same problem -> SFT on y+
            given [x, y-, p]; each right attempt is paired with itself (the "+").
            A wrong attempt whose problem has no right sample is dropped.

"Sampled once" without a data-generation phase: each problem's samples are
drawn with a key that is a fixed function of (config.seed, the problem's
tokens) (`problem_keys`), from the frozen starting model. So a problem's
examples are the same whenever it comes up, whatever the current parameters,
batch or step: the dataset is fixed before training and never refreshed; it is
materialised lazily, batch by batch, at the cost of one sampling pass per step.
Only attempt 2 (the correction) is trained, as in the online STaR baseline
(`score.online_star_loss`, the same weighted log-likelihood and normalisation).

Deviation notes: the paper trains on its D+ for its own number of epochs; here
each step's batch draws new problems (the training set has ~730k), for the same
number of steps, batch and learning rate as SCoRe.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from selfimprove import multiturn
from selfimprove.objectives import policy_gradient_loss
from selfimprove.pipelines import score
from selfimprove.pipelines.base import RunPieces
from selfimprove.sampling import sample
from selfimprove.train_state import TrainState


class CorrectionExamples(NamedTuple):
  """SFT examples [x, draft, p] -> target built from the starting model's samples."""

  context: jax.Array          # [rows, P + N + I] [x, draft, p], left-padded
  context_mask: jax.Array     # [rows, P + N + I] bool
  target: jax.Array           # [rows, N] the answer to imitate
  target_mask: jax.Array      # [rows, N] bool
  weight: jax.Array           # [rows] float32, 1 = in the dataset, 0 = filtered out
  draft_reward: jax.Array     # [rows] float32, the draft's verifier reward
  target_reward: jax.Array    # [rows] float32, the target's verifier reward


def problem_keys(seed_key: jax.Array, prompt_tokens: jax.Array, prompt_mask: jax.Array
                 ) -> jax.Array:
  """One typed key per problem [batch], a function of (seed_key, the prompt's real tokens).

  A polynomial hash (mod 2^32) of the prompt folded into `seed_key`: the same
  problem gets the same key in any batch, at any step. (Two problems sharing a
  hash would share their random draws; with 2^32 values that is rare and harmless.)
  """
  tokens = jnp.where(prompt_mask, prompt_tokens + 1, 0).astype(jnp.uint32)        # [batch, P]
  powers = jnp.cumprod(jnp.full(tokens.shape[1:], 1_000_003, jnp.uint32))         # [P], wraps
  hashes = jnp.sum(tokens * powers, axis=1, dtype=jnp.uint32)                      # [batch]
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(seed_key, hashes)


def star_examples(scorer: score.SCoRe, ref_params: dict, batch: dict[str, jax.Array],
                  keys: jax.Array) -> CorrectionExamples:
  """STaR D+: the starting model's two-turn traces whose attempt 2 is right."""
  rollout = scorer.rollout(ref_params, batch, keys, scorer.sampling_config(train=True))
  return CorrectionExamples(
      context=rollout.context_t2, context_mask=rollout.context_mask_t2,
      target=rollout.tokens_t2, target_mask=rollout.mask_t2, weight=rollout.reward_t2,
      draft_reward=rollout.reward_t1, target_reward=rollout.reward_t2)


def pair_targets(tokens: jax.Array, mask: jax.Array, reward: jax.Array,
                 num_samples_per_prompt: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Pair-SFT D+ targets for attempts grouped by problem (row = problem * n + j).

  Args:
    tokens, mask: [rows, N] the attempts and their completion masks.
    reward: [rows] their 0/1 verifier rewards.
    num_samples_per_prompt: n, attempts per problem.

  Returns:
    (target [rows, N], target_mask [rows, N], weight [rows]): a wrong attempt's
    target is the first right attempt of its problem (weight 0 if there is none);
    a right attempt's target is itself (weight 1). A dropped row keeps its own attempt.
  """
  n = num_samples_per_prompt
  groups = reward.reshape(-1, n) > 0                                   # [problems, n]
  first_right = jnp.argmax(groups, axis=1)                             # [problems]
  partner = jnp.repeat(jnp.arange(groups.shape[0]) * n + first_right, n)  # [rows]
  is_right = reward > 0
  weight = is_right | jnp.repeat(jnp.any(groups, axis=1), n)
  source = jnp.where(is_right | ~weight, jnp.arange(reward.shape[0]), partner)   # dropped: itself
  return tokens[source], mask[source], weight.astype(jnp.float32)


def pair_examples(scorer: score.SCoRe, ref_params: dict, batch: dict[str, jax.Array],
                  keys: jax.Array) -> CorrectionExamples:
  """Pair-SFT D+: independent first attempts of the starting model, paired within a problem."""
  sampling = scorer.sampling_config(train=True)
  n = sampling.num_samples_per_prompt
  first = sample(nnx.merge(scorer.graphdef, ref_params), batch["prompt_tokens"],
                 batch["prompt_mask"], keys, sampling)
  rows = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), batch)
  reward = scorer.verifier(first.tokens, first.completion_mask, rows)
  target, target_mask, weight = pair_targets(first.tokens, first.completion_mask, reward, n)
  context, context_mask = multiturn.build_turn2_context(
      first.prompt_tokens, first.prompt_mask, first.tokens, first.completion_mask,
      scorer.instruction_ids)
  return CorrectionExamples(context=context, context_mask=context_mask, target=target,
                            target_mask=target_mask, weight=weight, draft_reward=reward,
                            target_reward=jnp.where(weight > 0, 1.0, 0.0))


EXAMPLES = {"offline_star_baseline": star_examples, "pair_sft_baseline": pair_examples}


@dataclasses.dataclass(frozen=True)
class OfflineCorrectionSFT:
  """SFT on correction examples sampled once from the starting model (module docstring).

  Sampling, verification and the eval figures are SCoRe's (`scorer`), so the
  baselines are measured exactly as SCoRe is.
  """

  scorer: score.SCoRe
  make_examples: Callable[[score.SCoRe, dict, dict, jax.Array], CorrectionExamples]
  data_seed: int

  @property
  def optimizer(self):
    return self.scorer.optimizer

  @property
  def eval_metric_names(self) -> tuple[str, ...]:
    return self.scorer.eval_metric_names

  def init_extra(self, params: dict) -> dict:
    return {"ref_params": params}      # the starting model, which the data comes from

  def extra_shardings(self, param_shardings: dict) -> dict:
    return {"ref_params": param_shardings}

  def step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
           ) -> tuple[TrainState, dict[str, jax.Array]]:
    del rng   # the data is a fixed function of (data_seed, problem): see the module docstring
    keys = problem_keys(jax.random.key(self.data_seed), batch["prompt_tokens"],
                        batch["prompt_mask"])
    examples = jax.lax.stop_gradient(
        self.make_examples(self.scorer, state.extra["ref_params"], batch, keys))

    def loss_fn(params):
      logp = multiturn.completion_logprobs(nnx.merge(self.scorer.graphdef, params),
                                           examples.context, examples.context_mask,
                                           examples.target, examples.target_mask)
      return policy_gradient_loss(logp, examples.target_mask, examples.weight,
                                  jnp.zeros_like(logp), 0.0)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    tokens = jnp.sum(examples.context_mask) + jnp.sum(examples.target_mask)
    metrics = {
        "train/loss": loss, "train/grad_norm": optax.tree.norm(grads), "perf/tokens": tokens,
        "train/kept_fraction": jnp.mean(examples.weight),
        "train/data_draft_reward": jnp.mean(examples.draft_reward),
        "train/data_target_reward": jnp.mean(examples.target_reward),
    }
    return state._replace(params=params, opt_state=opt_state), metrics

  def evaluate(self, params: dict, batch: dict[str, jax.Array], rng: jax.Array
               ) -> dict[str, jax.Array]:
    return self.scorer.evaluate(params, batch, rng)


def build(pieces: RunPieces, settings: dict) -> score.SCoRe | OfflineCorrectionSFT:
  """config.pipeline="score": SCoRe's step for the RL modes, the SFT step for the offline ones."""
  mode = score.RENAMED_MODES.get(settings.get("mode", "score"), settings.get("mode", "score"))
  if mode not in score.OFFLINE_MODES:
    return score.build(pieces, settings)
  # Sampling and eval are SCoRe's; the stage schedule and the RL coefficients are unused.
  scorer = score.build(pieces, {**settings, "mode": "online_star_baseline"})
  return OfflineCorrectionSFT(scorer=dataclasses.replace(
      scorer, config=dataclasses.replace(scorer.config, mode=mode)),
      make_examples=EXAMPLES[mode], data_seed=pieces.seed)


__all__ = ["CorrectionExamples", "OfflineCorrectionSFT", "EXAMPLES", "build", "pair_targets",
           "problem_keys", "star_examples", "pair_examples"]
