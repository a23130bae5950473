"""GRPO-family RL (GRPO, RLOO, Dr. GRPO; DAPO's clip-higher) with verifier and self-judge rewards.

One compiled step (config.pipeline = "rl", settings config.rl = `RLConfig`):

  1. sample G completions per prompt (`sampling.sample`, num_samples_per_prompt = G);
  2. reward r = sum_k w_k r_k over the configured sources (pipelines/rl_rewards.py: the
     run's verifier, a self-judge's P(True), self-certainty, the group's majority answer,
     length, format), each logged as
     train/reward/<name>;
  3. advantages per group: "grpo" (r - mean) / (std + eps) (Shao et al. 2024, arXiv
     2402.03300; normalize_std=False drops the std), "rloo" (r - mean of the others; Ahmadian
     et al. 2024, arXiv 2402.14740) or "dr_grpo" (r - mean; Liu et al. 2025, arXiv 2503.20783);
  4. `num_iterations` optimizer updates on these samples (`lax.scan`), each minimising

       clipped_policy_loss(logp, old_logp, A, mask) + kl_coef * aggregate(KL_t(pi || ref))

     with the same token aggregation for both terms (objectives.aggregate_token_losses).

Old log-probs. With num_iterations = 1 the update is on-policy: old_logp = stop_gradient(logp)
of the update's own forward pass (ratio 1, nothing clipped, the plain policy gradient) and no
other pass is run. With num_iterations > 1 they are the sampler's `Rollout.logprobs`, the
log-probs of the distribution the tokens were drawn from, which equal the policy's own only at
temperature 1: RLConfig refuses another temperature then. At num_iterations = 1 and a
temperature != 1, samples come from pi^(1/T) while the gradient is taken for pi (as in
pipelines/score.py).

KL to the frozen reference (state.extra["ref_params"], the starting policy): per token,
"k1", "k3" (sampled-token estimates, objectives.kl_k1/kl_k3) or "exact" (the full next-token
distributions). With kl_coef = 0 the reference forward pass is not run, and the reference is
not kept at all unless a self-judge reads it (judge="reference").

Metrics: train/loss, train/grad_norm, train/clip_fraction and train/kl (mean per-token KL
over completion tokens; logged only with kl_coef > 0) are means over the step's updates;
train/reward (the weighted sum), train/reward/<name> (each source, unweighted),
train/reward_std (mean over prompts of the group's reward std), train/length (completion
tokens) and train/verified_accuracy (the verifier's verdict, measured even when it is no
reward: self-judged RL) describe the samples; perf/tokens counts the re-scored real tokens of every update.

Evaluation: eval/accuracy, the verifier on greedy completions; and, unless
config.rl.judge_eval is off, the self-judge measured against the verifier on the same prompts
(selfimprove/judge_eval.py; the current policy judges): eval/judge_auroc, eval/judge_ece,
eval/judge_accuracy, eval/pairwise_agreement (with a pairwise template) and
eval/bon{N}_{selector} for N in best_of and the selectors self_certainty, borda, p_true,
majority, random, oracle, with eval/judge_score (mean P(True) of the sampled candidates) and
eval/sample_accuracy. With a self-judge reward, the run summary flags reward hacking (the
judge's score rising while verified accuracy falls; `run_flags`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from selfimprove import judging, multiturn
from selfimprove.judge_eval import (JudgeEval, JudgeEvalConfig, PolicyEvaluation,
                                    parse_judge_eval, reward_hacking)
from selfimprove.objectives import (KL_ESTIMATORS, POLICY_LOSS_AGGREGATIONS, aggregate_token_losses,
                                    clipped_policy_loss, dr_grpo_advantages, grpo_advantages,
                                    masked_mean, rloo_advantages, turn_kl)
from selfimprove.pipelines.base import RunPieces
from selfimprove.pipelines.judge_prompts import build_template_judge
from selfimprove.pipelines.rl_rewards import (RewardInputs, RewardSpec, build_source,
                                              parse_rewards, self_judge_template)
from selfimprove.sampling import SamplingConfig, sample
from selfimprove.train_state import TrainState

ADVANTAGES = ("grpo", "rloo", "dr_grpo")
# A self-judging reward source -> the eval figure of its score of the policy's samples.
JUDGE_SCORES = {"self_judge": "eval/judge_score", "self_certainty": "eval/self_certainty"}


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """RL settings (config.rl). Errors name the field.

  Attributes:
    rewards: name -> {"source", "weight", options}, or a list of such dicts with a
      "name" (pipelines/rl_rewards.py); after construction the tuple of RewardSpecs with a
      non-zero weight.
    group_size: G, completions sampled per prompt (>= 2: advantages compare a group).
    max_new_tokens: completion budget (0: the answer length, i.e. the longest reference
      answer with its <eos>); evaluation decodes greedily with the same budget.
    temperature: training sampling temperature (must be 1.0 when num_iterations > 1).
    advantage: "grpo", "rloo" or "dr_grpo" (see the module docstring).
    normalize_std: "grpo" only: divide by the group's std (+ std_eps).
    std_eps: added to the group std.
    aggregation: "token_mean" (DAPO), "sequence_mean" (GRPO) or "constant" (Dr. GRPO).
    clip_eps_low, clip_eps_high: the ratio's clip range [1 - low, 1 + high] (DAPO: 0.2, 0.28).
    num_iterations: optimizer updates per batch of samples (GRPO's mu).
    kl_coef: weight of the KL to the reference (0: no reference pass).
    kl_estimator: "k1", "k3" or "exact".
    judge_eval: how evaluation measures the self-judge against the verifier (a dict of
      judge_eval.JudgeEvalConfig fields; after construction the JudgeEvalConfig). Unset
      fields: `enabled` is on when rewards list a self_judge entry (any weight) or a template
      is given here; template/yes/no are that entry's. Off: eval/accuracy only.
  """

  rewards: Any = dataclasses.field(default_factory=lambda: {"verifier": {"weight": 1.0}})
  group_size: int = 8
  max_new_tokens: int = 0
  temperature: float = 1.0
  advantage: str = "grpo"
  normalize_std: bool = True
  std_eps: float = 1e-4
  aggregation: str = "token_mean"
  clip_eps_low: float = 0.2
  clip_eps_high: float = 0.2
  num_iterations: int = 1
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  judge_eval: Any = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    raw_rewards = self.rewards
    if not (isinstance(self.rewards, tuple) and
            all(isinstance(spec, RewardSpec) for spec in self.rewards)):
      object.__setattr__(self, "rewards", parse_rewards(self.rewards))
    object.__setattr__(self, "judge_eval", parse_judge_eval(self.judge_eval,
                                                            self_judge_template(raw_rewards)))
    checks = [
        (self.group_size >= 2, "group_size",
         "must be >= 2 (advantages compare a prompt's samples)"),
        (self.max_new_tokens >= 0, "max_new_tokens", "must be >= 0 (0: the answer length)"),
        (self.temperature > 0, "temperature", "must be > 0"),
        (self.advantage in ADVANTAGES, "advantage", f"must be one of {ADVANTAGES}"),
        (self.aggregation in POLICY_LOSS_AGGREGATIONS, "aggregation",
         f"must be one of {POLICY_LOSS_AGGREGATIONS}"),
        (self.clip_eps_low > 0 and self.clip_eps_high > 0, "clip_eps_low/clip_eps_high",
         f"must be > 0, got {self.clip_eps_low}/{self.clip_eps_high}"),
        (self.num_iterations >= 1, "num_iterations", "must be >= 1"),
        (self.kl_coef >= 0, "kl_coef", "must be >= 0"),
        (self.kl_estimator in KL_ESTIMATORS, "kl_estimator", f"must be one of {KL_ESTIMATORS}"),
        (self.std_eps >= 0, "std_eps", "must be >= 0"),
        (self.num_iterations == 1 or self.temperature == 1.0, "temperature",
         f"must be 1.0 when num_iterations={self.num_iterations} > 1: later updates weigh the "
         "samples by pi/old with old = the sampler's log-probs, which are the policy's own only "
         "at temperature 1"),
    ]
    for ok, field, message in checks:
      if not ok:
        value = getattr(self, field, None)
        raise ValueError(f"RLConfig.{field}" + (f"={value!r}" if value is not None else "") +
                         f": {message}.")

  @property
  def keeps_reference(self) -> bool:
    return self.kl_coef > 0 or any(spec.uses_reference for spec in self.rewards)


def group_advantages(rewards: jax.Array, config: RLConfig) -> jax.Array:
  """[prompts * G] rewards -> [prompts * G] advantages by config.advantage."""
  if config.advantage == "grpo":
    return grpo_advantages(rewards, config.group_size, config.normalize_std, config.std_eps)
  if config.advantage == "rloo":
    return rloo_advantages(rewards, config.group_size)
  return dr_grpo_advantages(rewards, config.group_size)


@dataclasses.dataclass(frozen=True)
class RL(PolicyEvaluation):
  """Batch keys: prompt_tokens/prompt_mask [batch, P] and what the verifier reads.

  `sources`: (spec, callable) per reward source; the frozen reference, when kept, is
  `state.extra["ref_params"]`. `judge_eval`: the self-judge measurement run by `evaluate`
  (selfimprove/judge_eval.py), or None.
  """

  graphdef: nnx.GraphDef
  optimizer: optax.GradientTransformation
  verifier: Any
  config: RLConfig
  sources: tuple[tuple[RewardSpec, Any], ...]
  max_new_tokens: int
  stop_token_ids: tuple[int, ...]
  pad_token_id: int
  eval_metric_names: tuple[str, ...] = ("accuracy",)
  judge_eval: JudgeEval | None = None

  @property
  def greedy(self) -> SamplingConfig:
    """Evaluation's sampling (PolicyEvaluation): one greedy completion per prompt."""
    return self.sampling_config(train=False)

  def init_extra(self, params: dict) -> dict:
    return {"ref_params": params} if self.config.keeps_reference else {}

  def extra_shardings(self, param_shardings: dict) -> dict:
    return {"ref_params": param_shardings} if self.config.keeps_reference else {}

  def sampling_config(self, train: bool) -> SamplingConfig:
    """Training: G samples per prompt at `temperature`; evaluation: one greedy completion."""
    return SamplingConfig(
        max_new_tokens=self.max_new_tokens, greedy=not train, temperature=self.config.temperature,
        num_samples_per_prompt=self.config.group_size if train else 1,
        stop_token_ids=self.stop_token_ids, pad_token_id=self.pad_token_id)

  def rewards(self, inputs: RewardInputs) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(the weighted sum [rows], {name: [rows]} of each source)."""
    values = {spec.name: source(inputs) for spec, source in self.sources}
    return sum(spec.weight * values[spec.name] for spec, _ in self.sources), values

  def verified_accuracy(self, rollout, rows: dict, per_source: dict) -> jax.Array:
    """[rows] 0/1: the verifier's verdict on each sample, whether or not it is a reward (a
    verifier source's values are reused; otherwise the verifier runs to measure only)."""
    for spec, _ in self.sources:
      if spec.source == "verifier":
        return (per_source[spec.name] > 0.5).astype(jnp.float32)
    scores = self.verifier(rollout.tokens, rollout.completion_mask, rows)
    return (jax.lax.stop_gradient(scores) > 0.5).astype(jnp.float32)

  def log_distributions(self, params: dict, rollout) -> jax.Array:
    """[rows, N, vocab] next-token log-distributions at the completion's positions."""
    return multiturn.completion_log_distributions(
        nnx.merge(self.graphdef, params), rollout.prompt_tokens, rollout.prompt_mask,
        rollout.tokens, rollout.completion_mask)

  def step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
           ) -> tuple[TrainState, dict[str, jax.Array]]:
    cfg = self.config
    ref_params = state.extra.get("ref_params")
    rollout = sample(nnx.merge(self.graphdef, state.params), batch["prompt_tokens"],
                     batch["prompt_mask"], rng, self.sampling_config(train=True))
    rows = jax.tree.map(lambda x: jnp.repeat(x, cfg.group_size, axis=0), batch)
    reward, per_source = self.rewards(RewardInputs(rollout, rows, state.params, ref_params))
    verified = self.verified_accuracy(rollout, rows, per_source)
    advantages = group_advantages(reward, cfg)
    tokens, mask = rollout.tokens, rollout.completion_mask
    # Static choices: the reference pass only with a KL term; the sampler's log-probs as the
    # old policy only when later updates need them (see the module docstring).
    ref = None
    if cfg.kl_coef > 0:
      ref_dist = jax.lax.stop_gradient(self.log_distributions(ref_params, rollout))
      ref = (ref_dist, multiturn.token_logprobs_of(ref_dist, tokens, mask))
    old_logp = rollout.logprobs if cfg.num_iterations > 1 else None

    def loss_fn(params):
      dist = self.log_distributions(params, rollout)
      logp = multiturn.token_logprobs_of(dist, tokens, mask)
      old = jax.lax.stop_gradient(logp) if old_logp is None else old_logp
      loss, clip_fraction = clipped_policy_loss(logp, old, advantages, mask, cfg.clip_eps_low,
                                                cfg.clip_eps_high, cfg.aggregation)
      if ref is None:
        return loss, (clip_fraction, jnp.zeros(()))
      kl = turn_kl(dist, ref[0], logp, ref[1], cfg.kl_estimator)
      loss = loss + cfg.kl_coef * aggregate_token_losses(kl, mask, cfg.aggregation)
      return loss, (clip_fraction, masked_mean(jax.lax.stop_gradient(kl), mask))

    def update(carry, _):
      params, opt_state = carry
      (loss, (clip_fraction, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = self.optimizer.update(grads, opt_state, params)
      figures = (loss, optax.tree.norm(grads), clip_fraction, kl)
      return (optax.apply_updates(params, updates), opt_state), figures

    (params, opt_state), figures = jax.lax.scan(
        update, (state.params, state.opt_state), None, length=cfg.num_iterations)
    loss, grad_norm, clip_fraction, kl = (jnp.mean(f) for f in figures)
    lengths = rollout.lengths.astype(jnp.float32)
    group_std = jnp.std(reward.reshape(-1, cfg.group_size), axis=1)
    metrics = {
        "train/loss": loss, "train/grad_norm": grad_norm,
        # Real tokens re-scored with gradients: prompt + completion, once per update.
        "perf/tokens": cfg.num_iterations * (jnp.sum(rollout.prompt_mask) + jnp.sum(lengths)),
        "train/reward": jnp.mean(reward), "train/reward_std": jnp.mean(group_std),
        "train/clip_fraction": clip_fraction, "train/length": jnp.mean(lengths),
        **{f"train/reward/{name}": jnp.mean(value) for name, value in per_source.items()},
        "train/verified_accuracy": jnp.mean(verified),
    }
    if ref is not None:
      metrics["train/kl"] = kl
    return state._replace(params=params, opt_state=opt_state), metrics

  def run_flags(self, records: list[dict]) -> dict[str, str]:
    """Flags for the run summary from metrics.jsonl's rows: "reward_hacking" when a self-judging
    source is rewarded and its score of the policy's samples (JUDGE_SCORES) rose while verified
    accuracy fell (judge_eval.reward_hacking)."""
    if self.judge_eval is None:
      return {}
    rewarded = {spec.source for spec, _ in self.sources}
    flags = [reward_hacking(records, judge_key=key) for source, key in JUDGE_SCORES.items()
             if source in rewarded]
    flags = [flag for flag in flags if flag]
    return {"reward_hacking": "; ".join(flags)} if flags else {}


def build_judge_eval(config: JudgeEvalConfig, pieces: RunPieces, max_new_tokens: int
                     ) -> JudgeEval:
  """The measurement of config.rl.judge_eval (judge templates encoded here, once)."""
  common = dict(graphdef=pieces.graphdef, encoder=pieces.encoder,
                stop_token_ids=pieces.stop_token_ids, pad_id=pieces.pad_id)
  judge = build_template_judge(judging.JudgeTemplate(config.template, config.yes, config.no),
                               ("problem", "candidate"), f"{config.section}.template", **common)
  pairwise = None
  if config.pairwise_template:
    template = judging.JudgeTemplate(config.pairwise_template, config.pairwise_yes,
                                     config.pairwise_no)
    pairwise = build_template_judge(template, ("problem", "first", "second"),
                                    f"{config.section}.pairwise_template", **common)
  rubric = None
  if config.rubric_template:
    rubric = build_template_judge(
        judging.RubricTemplate(config.rubric_template, config.rubric_scores),
        ("problem", "candidate"), f"{config.section}.rubric_template", **common)
  sampling = SamplingConfig(
      max_new_tokens=max_new_tokens, temperature=config.temperature,
      num_samples_per_prompt=config.num_candidates, stop_token_ids=pieces.stop_token_ids,
      pad_token_id=pieces.pad_id)
  return JudgeEval(config, pieces.graphdef, pieces.verifier, sampling, judge, pairwise, rubric)


def build(pieces: RunPieces, settings: dict) -> RL:
  """RL from the run's pieces; settings = config.rl (RLConfig fields)."""
  config = RLConfig(**settings)
  max_new_tokens = config.max_new_tokens or pieces.answer_len
  sources = tuple(
      (spec, build_source(spec, graphdef=pieces.graphdef, encoder=pieces.encoder,
                          verifier=pieces.verifier, max_new_tokens=max_new_tokens,
                          stop_token_ids=pieces.stop_token_ids, pad_id=pieces.pad_id,
                          group_size=config.group_size))
      for spec in config.rewards)
  judge_eval = (build_judge_eval(config.judge_eval, pieces, max_new_tokens)
                if config.judge_eval.enabled else None)
  return RL(graphdef=pieces.graphdef, optimizer=pieces.optimizer, verifier=pieces.verifier,
            config=config, sources=sources, max_new_tokens=max_new_tokens,
            stop_token_ids=pieces.stop_token_ids, pad_token_id=pieces.pad_id,
            eval_metric_names=("accuracy",) + (judge_eval.config.metric_names
                                               if judge_eval is not None else ()),
            judge_eval=judge_eval)


__all__ = ["RL", "RLConfig", "ADVANTAGES", "group_advantages", "build_judge_eval", "build"]
