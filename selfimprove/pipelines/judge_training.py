"""Judge training (Self-J / P(IK) style): the model learns to judge its own samples, labelled
by the verifier, while a task loss keeps it generating.

One compiled step (config.pipeline = "judge_training", settings config.judge_training =
`JudgeTrainingConfig`):

  1. sample K = num_candidates completions per prompt from the current policy;
  2. the run's verifier labels each (correct: reward > 0.5);
  3. the judge prompt around (problem, candidate) (a `judging.JudgeTemplate`, assembled in the
     graph as the RL self-judge reward assembles it: pipelines/judge_prompts.TemplateJudge) gives
     z = log P(yes) - log P(no) at its end, and the judge loss is the binary cross-entropy of
     sigmoid(z) = P(True) against the label, the proper scoring rule for the probability the RL
     reward and the judge measurements read (Kadavath et al. 2022's P(True) trained as their
     P(IK) head is, but through the yes/no tokens: no extra head, as Self-J's token targets);
  4. one update of  task_weight * CE(reference answers) + judge_weight * BCE(judge)  — the
     task term is SFT's next-token loss on the batch's answers, so that generation does not
     degrade while the judge learns.

Metrics: train/loss, train/task_loss, train/judge_loss, train/judge_accuracy (sign of z vs
the label), train/sample_accuracy (share of the samples the verifier accepts: the label base
rate), train/exact_match (teacher-forced, as SFT), train/grad_norm, perf/tokens.

Evaluation is RL's (judge_eval.evaluate_policy): eval/accuracy on greedy completions and the
judge measured against the verifier on held-out prompts (eval/judge_auroc, judge_ece,
judge_accuracy, judge_score, sample_accuracy, bon{N}_{selector}; config.judge_training.
judge_eval, whose template defaults to this section's). With train.eval_at_start the log
holds the judge's AUROC and the task accuracy before and after.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from selfimprove import judging
from selfimprove.judge_eval import JudgeEval, PolicyEvaluation, parse_judge_eval
from selfimprove.objectives import next_token_loss, teacher_forced_exact_match
from selfimprove.pipelines.base import RunPieces
from selfimprove.pipelines.rl import build_judge_eval
from selfimprove.pipelines.judge_prompts import TemplateJudge, build_template_judge
from selfimprove.sampling import SamplingConfig, sample
from selfimprove.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class JudgeTrainingConfig:
  """Judge-training settings (config.judge_training). Errors name the field.

  Attributes:
    template, yes, no: the P(True) judge (text with {problem} then {candidate}; the answer
      strings whose first tokens mean yes / no). The RL self-judge reward should use the same.
    num_candidates: K, completions sampled (and labelled) per prompt per step.
    temperature: their sampling temperature.
    max_new_tokens: completion budget (0: the answer length).
    judge_weight: weight of the judge's binary cross-entropy.
    task_weight: weight of the next-token loss on the reference answers (0: judge only).
    balance_labels: weigh the step's right and wrong samples equally in the judge loss (the
      mean of each class's mean; the plain mean when a class is absent), so that a judge facing
      mostly right samples cannot settle on the base rate. P(True) is then calibrated to a
      balanced prior, not the policy's accuracy.
    judge_eval: evaluation's judge measurement (judge_eval.JudgeEvalConfig fields; its
      template/yes/no default to the above).
  """

  template: str = judging.P_TRUE_TEMPLATE.text
  yes: Any = judging.P_TRUE_TEMPLATE.yes
  no: Any = judging.P_TRUE_TEMPLATE.no
  num_candidates: int = 4
  temperature: float = 1.0
  max_new_tokens: int = 0
  judge_weight: float = 1.0
  task_weight: float = 1.0
  balance_labels: bool = False
  judge_eval: Any = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    for field in ("yes", "no"):   # hashable: the pipeline is a static argument of jit
      value = getattr(self, field)
      object.__setattr__(self, field, (value,) if isinstance(value, str) else tuple(value))
    judge = {"template": self.template, "yes": self.yes, "no": self.no}
    object.__setattr__(self, "judge_eval",
                       parse_judge_eval(self.judge_eval, judge, "judge_training.judge_eval"))
    checks = [
        ("num_candidates", self.num_candidates >= 1, "must be >= 1"),
        ("temperature", self.temperature > 0, "must be > 0"),
        ("max_new_tokens", self.max_new_tokens >= 0, "must be >= 0 (0: the answer length)"),
        ("judge_weight", self.judge_weight > 0, "must be > 0 (this pipeline trains the judge)"),
        ("task_weight", self.task_weight >= 0, "must be >= 0"),
    ]
    for field, ok, message in checks:
      if not ok:
        raise ValueError(f"judge_training.{field}={getattr(self, field)!r}: {message}.")


def judge_bce(logits: jax.Array, labels: jax.Array, balance: bool) -> jax.Array:
  """Binary cross-entropy of sigmoid(logits) against 0/1 labels, [rows] -> scalar: the mean,
  or with `balance` the mean of the two classes' means (the plain mean if one is absent)."""
  losses = optax.sigmoid_binary_cross_entropy(logits, labels)
  if not balance:
    return jnp.mean(losses)
  positives = jnp.sum(labels)
  negatives = labels.shape[0] - positives
  per_class = 0.5 * (jnp.sum(losses * labels) / jnp.maximum(positives, 1) +
                     jnp.sum(losses * (1 - labels)) / jnp.maximum(negatives, 1))
  return jnp.where((positives > 0) & (negatives > 0), per_class, jnp.mean(losses))


@dataclasses.dataclass(frozen=True)
class JudgeTraining(PolicyEvaluation):
  """Batch keys: prompt_tokens/prompt_mask, answer_tokens/answer_mask and what the verifier
  reads (selfimprove/encoding.py rows)."""

  graphdef: nnx.GraphDef
  optimizer: optax.GradientTransformation
  verifier: Any
  config: JudgeTrainingConfig
  judge: TemplateJudge
  sampling: SamplingConfig          # training candidates
  greedy: SamplingConfig            # evaluation's greedy completion
  judge_eval: JudgeEval | None
  eval_metric_names: tuple[str, ...] = ("accuracy",)

  def init_extra(self, params: dict) -> dict:
    return {}

  def step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
           ) -> tuple[TrainState, dict[str, jax.Array]]:
    cfg = self.config
    rollout = sample(nnx.merge(self.graphdef, state.params), batch["prompt_tokens"],
                     batch["prompt_mask"], rng, self.sampling)
    rows = jax.tree.map(lambda x: jnp.repeat(x, cfg.num_candidates, axis=0), batch)
    labels = (self.verifier(rollout.tokens, rollout.completion_mask, rows) > 0.5
              ).astype(jnp.float32)
    candidates = [(rollout.tokens, rollout.completion_mask)]
    tokens = jnp.concatenate([batch["prompt_tokens"], batch["answer_tokens"]], axis=1)
    mask = jnp.concatenate([batch["prompt_mask"], batch["answer_mask"]], axis=1)
    loss_mask = jnp.concatenate([jnp.zeros_like(batch["prompt_mask"]), batch["answer_mask"]],
                                axis=1)

    def loss_fn(params):
      logits, _ = nnx.merge(self.graphdef, params)(tokens, mask)
      task_loss = next_token_loss(logits, tokens, loss_mask)
      exact = teacher_forced_exact_match(jax.lax.stop_gradient(logits), tokens, loss_mask)
      z = self.judge.logit(params, rollout.prompt_tokens, rollout.prompt_mask, candidates)
      judge_loss = judge_bce(z, labels, cfg.balance_labels)
      judge_right = jnp.mean(((z > 0) == (labels > 0.5)).astype(jnp.float32))
      loss = cfg.task_weight * task_loss + cfg.judge_weight * judge_loss
      return loss, (task_loss, judge_loss, judge_right, jnp.mean(exact))

    (loss, (task_loss, judge_loss, judge_right, exact)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    judge_tokens = jnp.sum(self.judge.prompt(rollout.prompt_tokens, rollout.prompt_mask,
                                             candidates)[1])
    metrics = {"train/loss": loss, "train/task_loss": task_loss, "train/judge_loss": judge_loss,
               "train/judge_accuracy": judge_right, "train/sample_accuracy": jnp.mean(labels),
               "train/exact_match": exact, "train/grad_norm": optax.tree.norm(grads),
               "perf/tokens": jnp.sum(mask) + judge_tokens}
    return state._replace(params=params, opt_state=opt_state), metrics



def build(pieces: RunPieces, settings: dict) -> JudgeTraining:
  """Judge training from the run's pieces; settings = config.judge_training."""
  config = JudgeTrainingConfig(**settings)
  max_new_tokens = config.max_new_tokens or pieces.answer_len
  judge = build_template_judge(
      judging.JudgeTemplate(config.template, config.yes, config.no), ("problem", "candidate"),
      "judge_training.template", graphdef=pieces.graphdef, encoder=pieces.encoder,
      stop_token_ids=pieces.stop_token_ids, pad_id=pieces.pad_id)
  common = dict(max_new_tokens=max_new_tokens, stop_token_ids=pieces.stop_token_ids,
                pad_token_id=pieces.pad_id)
  sampling = SamplingConfig(temperature=config.temperature,
                            num_samples_per_prompt=config.num_candidates, **common)
  judge_eval = (build_judge_eval(config.judge_eval, pieces, max_new_tokens)
                if config.judge_eval.enabled else None)
  return JudgeTraining(
      graphdef=pieces.graphdef, optimizer=pieces.optimizer, verifier=pieces.verifier,
      config=config, judge=judge, sampling=sampling,
      greedy=SamplingConfig(greedy=True, **common), judge_eval=judge_eval,
      eval_metric_names=("accuracy",) + (judge_eval.config.metric_names
                                         if judge_eval is not None else ()))


__all__ = ["JudgeTraining", "JudgeTrainingConfig", "judge_bce", "build"]
