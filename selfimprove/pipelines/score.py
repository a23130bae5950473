"""SCoRe: two-attempt self-correction RL (Kumar et al. 2024, arXiv 2409.12917) in one jitted step.

Each step samples attempt 1 from the prompt, appends it and a fixed correction
instruction to the context, samples attempt 2, verifies both with the run's
verifier (in-graph, or the task's host function), re-scores both turns under
the current and the frozen reference policy, and takes one optimizer step on

  Stage I  (state.step < stage1_steps):
      PG(turn 2, reward r2)              + beta2 * KL_turn1
  Stage II (afterwards):
      PG(turn 1, r1) + beta1 * KL_turn1  + PG(turn 2, r2 + alpha (r2 - r1)) + beta1 * KL_turn2

where PG is REINFORCE (`objectives.policy_gradient_loss`; optional RLOO or
group-mean baselines) and each KL is per token over that turn's own tokens
given that turn's own context: exact (the full next-token distributions, the
paper's KL(pi || ref)) or a sampled-token estimate (k1, k3). The stage is a
traced `where` on the coefficients, so both stages share one compiled step.

Modes (`SCoReConfig.mode`), each its own loss function in `LOSSES`:
  "score": `score_loss`, the method above.
  "score_without_stage1", "score_without_shaping": the paper's ablations,
      `score_loss` with stage1_steps = 0 or alpha = 0 (set by SCoReConfig).
  "multiturn_rl_baseline": `multiturn_rl_loss`, the paper's multi-turn RL
      baseline (no Stage I, no shaping: both turns' rewards, beta1 KL on both).
  "online_star_baseline" (formerly "star_baseline", still accepted):
      `online_star_loss`, STaR-style SFT on the model's own two-turn traces of
      this step whose attempt 2 is correct: maximum likelihood of attempt 2
      given [x, y1, p] (REINFORCE with a 0/1 advantage = r2 on turn 2, no
      turn-1 term, no KL). Attempt 1 is not trained: imitating the kept traces'
      wrong first attempts would lower Acc@t1 and inflate Delta. Online, unlike
      the paper's STaR.
  "offline_star_baseline", "pair_sft_baseline": the paper's STaR D+ and
      Pair-SFT D+, SFT on data sampled once from the starting model
      (selfimprove/pipelines/score_baselines.py).

Deviation notes: log-probs are re-scored at temperature 1; with a sampling
`temperature` != 1 the samples come from a different distribution than the
one the gradient is taken for (the paper samples at 1.0).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from selfimprove import multiturn
from selfimprove.pipelines.base import RunPieces
from selfimprove.pipelines.score_demos import demo_rows
from selfimprove.objectives import (ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, advantages,
                                    policy_gradient_loss, score_shaped_rewards, turn_kl)
from selfimprove.sampling import (SamplingConfig, fold_in, is_key_per_row, keys_per_sample,
                                  sample)
from selfimprove.train_state import TrainState

# The RL modes (the keys of LOSSES) and the paper's offline SFT baselines
# (selfimprove/pipelines/score_baselines.py: their own step, the same rollouts and eval figures).
RL_MODES = ("score", "score_without_stage1", "score_without_shaping", "multiturn_rl_baseline",
            "online_star_baseline")
OFFLINE_MODES = ("offline_star_baseline", "pair_sft_baseline")
MODES = RL_MODES + OFFLINE_MODES
RENAMED_MODES = {"star_baseline": "online_star_baseline"}   # old name -> name


@dataclasses.dataclass(frozen=True)
class SCoReConfig:
  """SCoRe settings (paper values for MATH in parentheses).

  Attributes:
    correction_instruction: text appended after attempt 1 (encoded with the
      run's tokenizer; must be non-empty).
    max_new_tokens: completion budget of each attempt.
    stage1_steps: training steps in Stage I before Stage II starts.
    alpha: shaping coefficient of the turn-2 bonus alpha * (r2 - r1) (10).
    beta1: Stage II KL weight on both turns (0.01).
    beta2: Stage I KL weight on turn 1 (0.1).
    kl_estimator: "exact" (default: objectives.exact_kl, the paper's
      KL(pi || ref) from the full next-token distributions), "k1" or "k3"
      (sampled-token estimates, objectives.kl_k1/kl_k3; as a loss, k3's
      gradient is that of KL(ref || pi), k1's has zero expectation).
    advantage: "reinforce" (the paper's plain REINFORCE), "rloo" or "group_mean".
    num_samples_per_prompt: attempt-1 samples per prompt (each gets one attempt 2).
    temperature: sampling temperature of both attempts in training (1.0).
    mode: "score", the ablations "score_without_stage1" (forces stage1_steps
      = 0) and "score_without_shaping" (forces alpha = 0), or the baselines
      "multiturn_rl_baseline" (forces stage1_steps = 0 and alpha = 0),
      "online_star_baseline", "offline_star_baseline" and "pair_sft_baseline"
      (force stage1_steps = 0); see LOSSES and score_baselines.py.
    eval_greedy: greedy decoding of both attempts in `evaluate`; otherwise
      sampled at `eval_temperature`.
    eval_temperature: temperature for sampled evaluation.
  """

  correction_instruction: str
  max_new_tokens: int
  stage1_steps: int = 0
  alpha: float = 10.0
  beta1: float = 0.01
  beta2: float = 0.1
  kl_estimator: str = "exact"
  advantage: str = "reinforce"
  num_samples_per_prompt: int = 1
  temperature: float = 1.0
  mode: str = "score"
  eval_greedy: bool = True
  eval_temperature: float = 1.0

  def __post_init__(self):
    if not self.correction_instruction:
      raise ValueError("SCoReConfig.correction_instruction must be a non-empty string.")
    if self.max_new_tokens < 1:
      raise ValueError(f"SCoReConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}.")
    if self.stage1_steps < 0:
      raise ValueError(f"SCoReConfig.stage1_steps must be >= 0, got {self.stage1_steps}.")
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(f"SCoReConfig.kl_estimator must be one of {KL_ESTIMATORS}, "
                       f"got {self.kl_estimator!r}.")
    if self.advantage not in ADVANTAGE_ESTIMATORS:
      raise ValueError(f"SCoReConfig.advantage must be one of {ADVANTAGE_ESTIMATORS}, "
                       f"got {self.advantage!r}.")
    if self.num_samples_per_prompt < 1:
      raise ValueError(f"SCoReConfig.num_samples_per_prompt must be >= 1, "
                       f"got {self.num_samples_per_prompt}.")
    if self.advantage != "reinforce" and self.num_samples_per_prompt < 2:
      raise ValueError(f"SCoReConfig.advantage={self.advantage!r} compares samples of a prompt: "
                       f"set num_samples_per_prompt >= 2 (got {self.num_samples_per_prompt}).")
    if not self.temperature > 0 or not self.eval_temperature > 0:
      raise ValueError(f"SCoReConfig.temperature and eval_temperature must be > 0, got "
                       f"{self.temperature} and {self.eval_temperature}.")
    if min(self.beta1, self.beta2) < 0:
      raise ValueError(f"SCoReConfig.beta1/beta2 must be >= 0, got {self.beta1}/{self.beta2}.")
    if self.mode in RENAMED_MODES:
      object.__setattr__(self, "mode", RENAMED_MODES[self.mode])
    if self.mode not in MODES:
      raise ValueError(f"SCoReConfig.mode must be one of {MODES}, got {self.mode!r}.")
    # The ablations and baselines drop SCoRe's parts by their coefficients.
    if self.mode not in ("score", "score_without_shaping"):
      object.__setattr__(self, "stage1_steps", 0)
    if self.mode in ("score_without_shaping", "multiturn_rl_baseline"):
      object.__setattr__(self, "alpha", 0.0)


class TwoTurnRollout(NamedTuple):
  """Both attempts of a step. Rows = prompts x num_samples_per_prompt, grouped by prompt."""

  prompt_tokens: jax.Array    # [rows, P] turn-1 context
  prompt_mask: jax.Array      # [rows, P] bool
  tokens_t1: jax.Array        # [rows, N] attempt 1
  mask_t1: jax.Array          # [rows, N] bool
  lengths_t1: jax.Array       # [rows] int32
  context_t2: jax.Array       # [rows, P + N + I] turn-2 context [x, y1, p]
  context_mask_t2: jax.Array  # [rows, P + N + I] bool
  tokens_t2: jax.Array        # [rows, N] attempt 2
  mask_t2: jax.Array          # [rows, N] bool
  lengths_t2: jax.Array       # [rows] int32
  reward_t1: jax.Array        # [rows] float32 in {0, 1}
  reward_t2: jax.Array        # [rows] float32 in {0, 1}


def _aux(kl_t1: jax.Array, mask_t1: jax.Array, kl_t2: jax.Array, mask_t2: jax.Array,
         used_reward_t2: jax.Array) -> dict[str, jax.Array]:
  """Metrics of every loss: mean over rows of each turn's sequence KL, the turn-2 reward used."""
  sequence_kl = lambda kl, mask: jnp.mean(jnp.sum(jnp.where(mask, kl, 0.0), axis=1))
  return {"kl_t1": jax.lax.stop_gradient(sequence_kl(kl_t1, mask_t1)),
          "kl_t2": jax.lax.stop_gradient(sequence_kl(kl_t2, mask_t2)),
          "shaped_reward_t2": jnp.mean(used_reward_t2)}


def score_loss(logp_t1: jax.Array, kl_t1: jax.Array, mask_t1: jax.Array,
               logp_t2: jax.Array, kl_t2: jax.Array, mask_t2: jax.Array,
               reward_t1: jax.Array, reward_t2: jax.Array, in_stage1: jax.Array,
               config: SCoReConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The SCoRe loss of one step from per-turn arrays (pure; see the module docstring).

  Args:
    logp_t1, kl_t1, mask_t1: [rows, N] attempt-1 token log-probs under the
      policy (differentiable), per-token KL(pi || ref) (`objectives.turn_kl`,
      differentiable) and the completion mask.
    logp_t2, kl_t2, mask_t2: the same for attempt 2 (given [x, y1, p]).
    reward_t1, reward_t2: [rows] verifier rewards.
    in_stage1: [] bool (traced), True during Stage I.
    config: static settings (alpha, betas, advantage estimator).

  Returns:
    (scalar loss, aux) with aux["kl_t1"], aux["kl_t2"]: mean over rows of the
    sequence KL, and aux["shaped_reward_t2"]: mean turn-2 reward used.
  """
  n, estimator = config.num_samples_per_prompt, config.advantage
  shaped_t1, shaped_t2 = score_shaped_rewards(reward_t1, reward_t2, config.alpha)
  # Stage I: no reward on turn 1 (only its KL, weight beta2), unshaped reward on turn 2, no turn-2 KL.
  adv_t1 = jnp.where(in_stage1, 0.0, advantages(shaped_t1, n, estimator))
  adv_t2 = jnp.where(in_stage1, advantages(reward_t2, n, estimator),
                     advantages(shaped_t2, n, estimator))
  kl_coef_t1 = jnp.where(in_stage1, config.beta2, config.beta1)
  kl_coef_t2 = jnp.where(in_stage1, 0.0, config.beta1)
  loss = (policy_gradient_loss(logp_t1, mask_t1, adv_t1, kl_t1, kl_coef_t1) +
          policy_gradient_loss(logp_t2, mask_t2, adv_t2, kl_t2, kl_coef_t2))
  return loss, _aux(kl_t1, mask_t1, kl_t2, mask_t2, jnp.where(in_stage1, reward_t2, shaped_t2))


def multiturn_rl_loss(logp_t1: jax.Array, kl_t1: jax.Array, mask_t1: jax.Array,
                      logp_t2: jax.Array, kl_t2: jax.Array, mask_t2: jax.Array,
                      reward_t1: jax.Array, reward_t2: jax.Array, in_stage1: jax.Array,
                      config: SCoReConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The paper's multi-turn RL baseline (no Stage I, no shaping), arguments as `score_loss`:

      PG(turn 1, r1) + beta1 * KL_t1 + PG(turn 2, r2) + beta1 * KL_t2
  """
  del in_stage1   # one stage
  n, estimator = config.num_samples_per_prompt, config.advantage
  loss = (policy_gradient_loss(logp_t1, mask_t1, advantages(reward_t1, n, estimator), kl_t1,
                               config.beta1) +
          policy_gradient_loss(logp_t2, mask_t2, advantages(reward_t2, n, estimator), kl_t2,
                               config.beta1))
  return loss, _aux(kl_t1, mask_t1, kl_t2, mask_t2, reward_t2)


def online_star_loss(logp_t1: jax.Array, kl_t1: jax.Array, mask_t1: jax.Array,
                     logp_t2: jax.Array, kl_t2: jax.Array, mask_t2: jax.Array,
                     reward_t1: jax.Array, reward_t2: jax.Array, in_stage1: jax.Array,
                     config: SCoReConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Online STaR (mode "online_star_baseline"), arguments as `score_loss`: maximum likelihood of
  attempt 2 given [x, y1, p] on this step's traces whose attempt 2 is right (REINFORCE with
  the 0/1 reward as weight); no turn-1 term, no KL. Not the paper's offline STaR, whose D+
  is sampled once from the starting model.
  """
  del logp_t1, reward_t1, in_stage1, config
  loss = policy_gradient_loss(logp_t2, mask_t2, reward_t2, kl_t2, 0.0)
  return loss, _aux(kl_t1, mask_t1, kl_t2, mask_t2, reward_t2)


# config.score.mode -> the loss the step minimises (same arguments; see each docstring). The
# paper's two ablations are SCoRe's loss with a part switched off by SCoReConfig (stage1_steps
# = 0: no Stage I; alpha = 0: no shaping bonus).
LOSSES = {"score": score_loss, "score_without_stage1": score_loss,
          "score_without_shaping": score_loss, "multiturn_rl_baseline": multiturn_rl_loss,
          "online_star_baseline": online_star_loss}


def correction_metrics(rollout: TwoTurnRollout) -> dict[str, jax.Array]:
  """The paper's per-example figures [rows]: acc_t1, acc_t2, delta, delta_i2c, delta_c2i,
  plus edit_distance (normalised Levenshtein of the attempts' real tokens) and changed."""
  r1, r2 = rollout.reward_t1, rollout.reward_t2
  distance = multiturn.normalized_edit_distance(rollout.tokens_t1, rollout.lengths_t1,
                                                rollout.tokens_t2, rollout.lengths_t2)
  return {"acc_t1": r1, "acc_t2": r2, "delta": r2 - r1,
          "delta_i2c": (1.0 - r1) * r2, "delta_c2i": r1 * (1.0 - r2),
          "edit_distance": distance, "changed": (distance > 0).astype(jnp.float32)}


@dataclasses.dataclass(frozen=True)
class SCoRe:
  """Batch keys: prompt_tokens/prompt_mask [batch, P] and what the verifier reads (record_id,
  the task's arrays); see selfimprove/encoding.py.

  `verifier(tokens, mask, batch)` -> [rows] rewards; `instruction_ids` is the
  correction instruction in the run's tokenizer. The frozen reference policy is
  `state.extra["ref_params"]`.
  """

  graphdef: nnx.GraphDef
  optimizer: optax.GradientTransformation
  verifier: Any
  config: SCoReConfig
  instruction_ids: tuple[int, ...]
  stop_token_ids: tuple[int, ...]
  pad_token_id: int
  eval_metric_names: tuple[str, ...] = ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i",
                                        "edit_distance", "changed")

  def init_extra(self, params: dict) -> dict:
    return {"ref_params": params}

  def extra_shardings(self, param_shardings: dict) -> dict:
    return {"ref_params": param_shardings}

  def sampling_config(self, train: bool) -> SamplingConfig:
    """Attempt-1 sampling: training samples num_samples_per_prompt at `temperature`; eval one per prompt."""
    cfg = self.config
    greedy = not train and cfg.eval_greedy
    return SamplingConfig(
        max_new_tokens=cfg.max_new_tokens, greedy=greedy,
        temperature=cfg.temperature if train else cfg.eval_temperature,
        num_samples_per_prompt=cfg.num_samples_per_prompt if train else 1,
        stop_token_ids=self.stop_token_ids, pad_token_id=self.pad_token_id)

  def rollout(self, params: dict, batch: dict[str, jax.Array], rng: jax.Array,
              sampling: SamplingConfig) -> TwoTurnRollout:
    """Samples and verifies both attempts (attempt 2: one per attempt-1 row).

    `rng`: one key, or one typed key per prompt ([batch]; each prompt's two
    turns then depend on its own key only: see `sampling.sample`)."""
    model = nnx.merge(self.graphdef, params)
    first = sample(model, batch["prompt_tokens"], batch["prompt_mask"], fold_in(rng, 1), sampling)
    rng_t2 = fold_in(rng, 2)
    if is_key_per_row(rng_t2):   # one key per attempt-1 row
      rng_t2 = keys_per_sample(rng_t2, sampling.num_samples_per_prompt)
    rows = jax.tree.map(lambda x: jnp.repeat(x, sampling.num_samples_per_prompt, axis=0), batch)
    context, context_mask = multiturn.build_turn2_context(
        first.prompt_tokens, first.prompt_mask, first.tokens, first.completion_mask,
        self.instruction_ids)
    second = sample(model, context, context_mask, rng_t2,
                    dataclasses.replace(sampling, num_samples_per_prompt=1))
    return TwoTurnRollout(
        prompt_tokens=first.prompt_tokens, prompt_mask=first.prompt_mask,
        tokens_t1=first.tokens, mask_t1=first.completion_mask, lengths_t1=first.lengths,
        context_t2=context, context_mask_t2=context_mask,
        tokens_t2=second.tokens, mask_t2=second.completion_mask, lengths_t2=second.lengths,
        reward_t1=self.verifier(first.tokens, first.completion_mask, rows),
        reward_t2=self.verifier(second.tokens, second.completion_mask, rows))

  def turn_log_distributions(self, params: dict, rollout: TwoTurnRollout
                             ) -> tuple[jax.Array, jax.Array]:
    """Next-token log-distributions [rows, N, vocab] of attempt 1 given x and of attempt 2
    given [x, y1, p]."""
    model = nnx.merge(self.graphdef, params)
    dist_t1 = multiturn.completion_log_distributions(
        model, rollout.prompt_tokens, rollout.prompt_mask, rollout.tokens_t1, rollout.mask_t1)
    dist_t2 = multiturn.completion_log_distributions(
        model, rollout.context_t2, rollout.context_mask_t2, rollout.tokens_t2, rollout.mask_t2)
    return dist_t1, dist_t2

  def step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
           ) -> tuple[TrainState, dict[str, jax.Array]]:
    rollout = self.rollout(state.params, batch, rng, self.sampling_config(train=True))
    ref_t1, ref_t2 = jax.lax.stop_gradient(
        self.turn_log_distributions(state.extra["ref_params"], rollout))
    ref_logp_t1 = multiturn.token_logprobs_of(ref_t1, rollout.tokens_t1, rollout.mask_t1)
    ref_logp_t2 = multiturn.token_logprobs_of(ref_t2, rollout.tokens_t2, rollout.mask_t2)
    in_stage1 = state.step < self.config.stage1_steps
    estimator, loss_of_mode = self.config.kl_estimator, LOSSES[self.config.mode]

    def loss_fn(params):
      dist_t1, dist_t2 = self.turn_log_distributions(params, rollout)
      logp_t1 = multiturn.token_logprobs_of(dist_t1, rollout.tokens_t1, rollout.mask_t1)
      logp_t2 = multiturn.token_logprobs_of(dist_t2, rollout.tokens_t2, rollout.mask_t2)
      kl_t1 = turn_kl(dist_t1, ref_t1, logp_t1, ref_logp_t1, estimator)
      kl_t2 = turn_kl(dist_t2, ref_t2, logp_t2, ref_logp_t2, estimator)
      return loss_of_mode(logp_t1, kl_t1, rollout.mask_t1, logp_t2, kl_t2, rollout.mask_t2,
                          rollout.reward_t1, rollout.reward_t2, in_stage1, self.config)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    figures = correction_metrics(rollout)
    # Real tokens of the two sequences the policy re-scored (with gradients).
    tokens = (jnp.sum(rollout.prompt_mask) + jnp.sum(rollout.lengths_t1) +
              jnp.sum(rollout.context_mask_t2) + jnp.sum(rollout.lengths_t2))
    metrics = {
        "train/loss": loss, "train/grad_norm": optax.tree.norm(grads), "perf/tokens": tokens,
        "train/stage": jnp.where(in_stage1, 1.0, 2.0),
        "train/reward_t1": jnp.mean(rollout.reward_t1),
        "train/reward_t2": jnp.mean(rollout.reward_t2),
        "train/shaped_reward_t2": aux["shaped_reward_t2"],
        "train/delta": jnp.mean(figures["delta"]),
        "train/kl_t1": aux["kl_t1"], "train/kl_t2": aux["kl_t2"],
        "train/edit_distance": jnp.mean(figures["edit_distance"]),
        "train/changed": jnp.mean(figures["changed"]),
        "train/length_t1": jnp.mean(rollout.lengths_t1.astype(jnp.float32)),
        "train/length_t2": jnp.mean(rollout.lengths_t2.astype(jnp.float32)),
    }
    return state._replace(params=params, opt_state=opt_state), metrics

  def evaluate(self, params: dict, batch: dict[str, jax.Array], rng: jax.Array
               ) -> dict[str, jax.Array]:
    """Per-example [batch] values named in `eval_metric_names` (greedy attempts by default)."""
    return correction_metrics(self.rollout(params, batch, rng, self.sampling_config(train=False)))


def build(pieces: RunPieces, settings: dict) -> SCoRe:
  """SCoRe from the run's pieces; settings = config.score (max_new_tokens absent or 0: the
  answer length, i.e. the longest reference answer with its <eos>). The registry's build for
  config.pipeline="score" is score_baselines.build, which also covers the offline modes."""
  config = SCoReConfig(**{**settings, "max_new_tokens": settings.get("max_new_tokens") or
                          pieces.answer_len})
  if config.mode not in RL_MODES:
    raise ValueError(f"mode={config.mode!r} is an offline baseline: build it with "
                     f"selfimprove.pipelines.score_baselines.build.")
  # With a chat template the instruction is a user turn between the two attempts.
  instruction_ids = pieces.encoder.text_ids(
      pieces.encoder.follow_up_text(config.correction_instruction), "correction_instruction")
  return SCoRe(graphdef=pieces.graphdef, optimizer=pieces.optimizer, verifier=pieces.verifier,
               config=config, instruction_ids=instruction_ids,
               stop_token_ids=pieces.stop_token_ids, pad_token_id=pieces.pad_id)


def check_warm_start(settings: dict, warm_start_data: dict) -> None:
  """The warm start's two-turn demos must use the instruction SCoRe appends."""
  demo_instruction = warm_start_data.get("correction_instruction", "")
  if warm_start_data.get("correction_demos", 0.0) and demo_instruction != settings.get(
      "correction_instruction"):
    raise ValueError(
        f"config.warm_start.data.correction_instruction={demo_instruction!r} differs from "
        f"config.score.correction_instruction={settings.get('correction_instruction')!r}: the "
        f"warm start's two-turn demos must use the instruction SCoRe appends.")


__all__ = ["SCoRe", "SCoReConfig", "TwoTurnRollout", "build", "check_warm_start", "demo_rows",
           "score_loss", "multiturn_rl_loss", "online_star_loss", "LOSSES", "correction_metrics",
           "MODES", "RL_MODES", "OFFLINE_MODES"]
