"""Self-generated preference pairs in one compiled step: Self-Rewarding, Temporal Self-Rewarding,
SPIN and SPPO, in rounds or online.

config.pipeline = "self_rewarding" (settings config.self_rewarding = `SelfRewardingConfig`).
Each step samples candidates, scores them, builds one (chosen, rejected) pair per prompt
(self_rewarding_pairs.py) and makes one DPO (or SPPO) update on the valid pairs:

  self_rewarding  N candidates from the generator, scored by the judge's P(True) (or its
                  expected rubric score, or the verifier: verifier-labelled DPO, the upper
                  reference); chosen = the best, rejected = the worst finished candidate;
                  ties and prompts without two finished candidates dropped (Yuan et al. 2024).
  temporal        Temporal Self-Rewarding (Wang et al. 2025): K candidates from the round's
                  model M_i and K from the initial model M_0, all scored by M_i; anchored
                  rejection (the worst M_0 candidate when it scores below the worst M_i one);
                  the first half of each round trains a future model M_f from M_i on these
                  pairs, the second half restarts from M_i (fresh optimizer state) with
                  future-guided chosen (M_f's best when it beats M_i's best), and the round
                  ends with M_{i+1}.
  spin            chosen = the data's reference answer, rejected = the generator's sample (Chen
                  et al. 2024), the logistic loss (= DPO's).
  sppo            K candidates; each one's win rate against the others from the pairwise
                  self-judge (order-averaged) or the verifier; the best and worst by win rate
                  with SPPO's squared loss toward eta (P - 1/2) (Wu et al. 2024).

Rounds (steps_per_round = R > 0): the round's start M_t (state.extra["round_params"]) is the
generator, the judge and the DPO reference; at every step that is a multiple of R the trained
params become the next round's start, so the data of round t comes from M_t alone, as in the
papers (each prompt drawn from the stream instead of a prompt set generated up front; both
iid from the training split). Resume is exact mid-round and between rounds: everything is in
the checkpointed state. Temporal rounds keep M_0 ("anchor_params") and M_f ("future_params");
their phase 2 draws fresh prompts, whose phase-1 pair (from the frozen M_i and M_0) has the
distribution the paper's phase 1 gives the same prompt.
Online (R = 0): the current policy generates and judges; the reference is the frozen start
("init") or an EMA of the policy ("ema").

Metrics: train/loss, train/grad_norm, perf/tokens, objectives.preference_metrics over valid
pairs (these and every other per-pair figure are NaN, null in metrics.jsonl, on a step without
a valid pair), train/pair_fraction, train/score_gap (mean chosen - rejected score: the paper's shrinking
gap), train/chosen_score, train/rejected_score, train/chosen_verified, train/rejected_verified
(the verifier on the pair: judge quality per round), train/chosen_rejected_cosine (mean-pooled
last hidden states under the reference), train/round; temporal: train/anchored_rejected,
train/future_chosen, train/phase. Evaluation: judge_eval.evaluate_policy (eval/accuracy and
the judge measured against the verifier).
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
from selfimprove.objectives import (chosen_nll_loss, dpo_loss, pair_mean, preference_metrics,
                                   sppo_loss)
from selfimprove.pipelines import self_rewarding_pairs as pairs_lib
from selfimprove.pipelines.base import RunPieces
from selfimprove.pipelines.preference import Preference, PreferenceConfig
from selfimprove.pipelines.rl import build_judge_eval
from selfimprove.pipelines.judge_prompts import build_template_judge
from selfimprove.pipelines.rl_rewards import (PairwiseReward, RewardInputs, RubricReward,
                                              SelfJudgeReward, VerifierReward)
from selfimprove.pipelines.stp_selection import mean_pooled_embeddings
from selfimprove.sampling import SamplingConfig, sample
from selfimprove.train_state import TrainState

METHODS = ("self_rewarding", "temporal", "spin", "sppo")
SCORERS = {"self_rewarding": ("p_true", "rubric", "verifier"),
           "temporal": ("p_true", "rubric", "verifier"),
           "spin": ("none",), "sppo": ("pairwise", "verifier")}
ONLINE_REFERENCES = ("init", "ema")


@dataclasses.dataclass(frozen=True)
class SelfRewardingConfig:
  """Settings (config.self_rewarding). Errors name the field.

  Attributes:
    method: one of METHODS (see the module docstring).
    steps_per_round: R, steps per round (0: online; "temporal" needs an even R >= 2).
    num_candidates: N (self_rewarding), K per model (temporal), K (sppo); spin samples one.
    temperature, top_p: the candidates' sampling (Self-Rewarding: 0.7, 0.9).
    max_new_tokens: completion budget (0: the answer length).
    beta: DPO's beta (0.1); SPPO's 1 / eta.
    nll_weight: lambda of an added lambda * (the chosen response's per-token negative
      log-likelihood) (objectives.chosen_nll_loss; Iterative RPO uses 1); 0: the paper's DPO.
    scorer: how candidates are scored (SCORERS[method]; spin: "none"; "verifier" = the
      verifier-labelled upper reference, or SPPO's documented verifier option).
    template, yes, no: the P(True) judge ({problem}, {candidate}); scores: the rubric's score
      texts (1..S) after `template` when scorer = "rubric".
    pairwise_template, pairwise_yes, pairwise_no: SPPO's pairwise judge ({problem}, {first},
      {second}; yes = the first is better).
    reference: online only: "init" (the frozen start) or "ema"; rounds use the round's start.
    ema_decay: the EMA reference's decay per step.
    judge_eval: evaluation's judge measurement (judge_eval.JudgeEvalConfig fields; template,
      yes, no default to the above).
  """

  method: str = "self_rewarding"
  steps_per_round: int = 0
  num_candidates: int = 4
  temperature: float = 0.7
  top_p: float = 0.9
  max_new_tokens: int = 0
  beta: float = 0.1
  nll_weight: float = 0.0
  scorer: str = "p_true"
  template: str = judging.P_TRUE_TEMPLATE.text
  yes: Any = judging.P_TRUE_TEMPLATE.yes
  no: Any = judging.P_TRUE_TEMPLATE.no
  scores: Any = ("1", "2", "3", "4", "5")
  pairwise_template: str = ""
  pairwise_yes: Any = ("A",)
  pairwise_no: Any = ("B",)
  reference: str = "init"
  ema_decay: float = 0.99
  judge_eval: Any = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    for field in ("yes", "no", "scores", "pairwise_yes", "pairwise_no"):
      value = getattr(self, field)
      object.__setattr__(self, field, (value,) if isinstance(value, str) else tuple(value))
    if self.method == "spin":
      object.__setattr__(self, "scorer", "none")
    judge = {"template": self.template, "yes": self.yes, "no": self.no}
    object.__setattr__(self, "judge_eval",
                       parse_judge_eval(self.judge_eval, judge, "self_rewarding.judge_eval"))
    r = self.steps_per_round
    checks = [
        ("method", self.method in METHODS, f"must be one of {METHODS}"),
        ("steps_per_round", r >= 0, "must be >= 0 (0: online)"),
        ("steps_per_round", self.method != "temporal" or (r >= 2 and r % 2 == 0),
         "must be even and >= 2 for method='temporal' (two phases per round)"),
        ("num_candidates", self.num_candidates >= 2 or self.method == "spin",
         "must be >= 2 (a pair needs two candidates)"),
        ("temperature", self.temperature > 0, "must be > 0"),
        ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
        ("max_new_tokens", self.max_new_tokens >= 0, "must be >= 0 (0: the answer length)"),
        ("beta", self.beta > 0, "must be > 0"),
        ("nll_weight", self.nll_weight >= 0, "must be >= 0 (0: no NLL term)"),
        ("scorer", self.scorer in SCORERS.get(self.method, ()),
         f"must be one of {SCORERS.get(self.method)} for method={self.method!r}"),
        ("pairwise_template", self.scorer != "pairwise" or bool(self.pairwise_template),
         "is needed by scorer='pairwise'"),
        ("reference", self.reference in ONLINE_REFERENCES,
         f"must be one of {ONLINE_REFERENCES} (online runs; rounds use the round's start)"),
        ("ema_decay", 0 <= self.ema_decay < 1, "must be in [0, 1)"),
    ]
    for field, ok, message in checks:
      if not ok:
        raise ValueError(f"self_rewarding.{field}={getattr(self, field)!r}: {message}.")

  @property
  def rounds(self) -> bool:
    return self.steps_per_round > 0

  @property
  def extra_keys(self) -> tuple[str, ...]:
    """The parameter copies kept in state.extra."""
    if not self.rounds:
      return ("ref_params",)
    return ("round_params",) + (("anchor_params", "future_params")
                                if self.method == "temporal" else ())


def _pair_figure(values: jax.Array, valid: jax.Array) -> jax.Array:
  """A logged figure over the step's valid pairs: their mean, or NaN (null in metrics.jsonl: no
  value) on a step without one, so that averages over steps are over pairs, not diluted by 0."""
  return jnp.where(jnp.any(valid), pair_mean(values.astype(jnp.float32), valid), jnp.nan)


def _select(condition: jax.Array, on_true: Any, on_false: Any) -> Any:
  return jax.tree.map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)


@dataclasses.dataclass(frozen=True)
class SelfRewarding(PolicyEvaluation):
  graphdef: nnx.GraphDef
  optimizer: optax.GradientTransformation
  verifier: Any
  config: SelfRewardingConfig
  scorer: Any                      # (RewardInputs) -> [rows] scores, or None (spin)
  candidates: SamplingConfig       # N (or K) per prompt
  greedy: SamplingConfig
  stop_token_ids: tuple[int, ...]
  preference: Preference           # the pair log-probs (summed, one forward pass)
  judge_eval: JudgeEval | None
  eval_metric_names: tuple[str, ...] = ("accuracy",)

  def init_extra(self, params: dict) -> dict:
    return {key: params for key in self.config.extra_keys}

  def extra_shardings(self, param_shardings: dict) -> dict:
    return {key: param_shardings for key in self.config.extra_keys}

  # -- rounds ------------------------------------------------------------------------------

  def begin_step(self, state: TrainState) -> TrainState:
    """Round bookkeeping at the start of step `state.step`: a new round starts from the trained
    params; a temporal round's second half keeps them as M_f and restarts from M_i."""
    cfg = self.config
    if not cfg.rounds:
      return state
    extra, r = dict(state.extra), cfg.steps_per_round
    new_round = (state.step % r == 0) & (state.step > 0)
    extra["round_params"] = _select(new_round, state.params, extra["round_params"])
    params, opt_state = state.params, state.opt_state
    if cfg.method == "temporal":
      phase_two = state.step % r == r // 2
      extra["future_params"] = _select(phase_two, params, extra["future_params"])
      params = _select(phase_two, extra["round_params"], params)
      opt_state = _select(phase_two, self.optimizer.init(extra["round_params"]), opt_state)
    return state._replace(params=params, opt_state=opt_state, extra=extra)

  def roles(self, state: TrainState) -> tuple[dict, dict]:
    """(generator and judge params, reference params)."""
    if self.config.rounds:
      return state.extra["round_params"], state.extra["round_params"]
    return state.params, state.extra["ref_params"]

  # -- pairs -------------------------------------------------------------------------------

  def _sample(self, params: dict, batch: dict, rng: jax.Array, config: SamplingConfig):
    return sample(nnx.merge(self.graphdef, params), batch["prompt_tokens"], batch["prompt_mask"],
                  rng, config)

  def _finished(self, rollout) -> jax.Array:
    stopped = rollout.completion_mask & jnp.isin(rollout.tokens,
                                                 jnp.asarray(self.stop_token_ids, jnp.int32))
    return jnp.any(stopped, axis=1)

  def _scores(self, judge_params: dict, rollout, batch: dict) -> jax.Array:
    """[rows] the scorer's value of each candidate."""
    rows = jax.tree.map(lambda x: jnp.repeat(x, rollout.tokens.shape[0] // x.shape[0], axis=0),
                        batch)
    return self.scorer(RewardInputs(rollout, rows, judge_params, None))

  def _verified(self, tokens: jax.Array, mask: jax.Array, batch: dict) -> jax.Array:
    return (self.verifier(tokens, mask, batch) > 0.5).astype(jnp.float32)

  def build_pairs(self, state: TrainState, batch: dict, rng: jax.Array
                  ) -> tuple[dict, pairs_lib.PairChoice, dict]:
    """(pair rows for Preference.pair_logprobs (+ SPPO win rates), the choice, extra metrics)."""
    cfg, k = self.config, self.config.num_candidates
    generator, _ = self.roles(state)
    prompts = {"prompt_tokens": batch["prompt_tokens"], "prompt_mask": batch["prompt_mask"]}
    if cfg.method == "spin":
      rollout = self._sample(generator, batch, rng, self.candidates)
      rows = batch["prompt_tokens"].shape[0]
      choice = pairs_lib.PairChoice(jnp.zeros(rows, jnp.int32), jnp.zeros(rows, jnp.int32),
                                    jnp.ones(rows, bool), jnp.zeros(rows), jnp.zeros(rows))
      pair = dict(prompts, answer_tokens=batch["answer_tokens"], answer_mask=batch["answer_mask"],
                  rejected_tokens=rollout.tokens, rejected_mask=rollout.completion_mask)
      return pair, choice, {}
    if cfg.method == "temporal":
      return self._temporal_pairs(state, batch, rng)
    rollout = self._sample(generator, batch, rng, self.candidates)
    finished = self._finished(rollout).reshape(-1, k)
    extra, win = {}, None
    if cfg.method == "sppo":
      if cfg.scorer == "verifier":
        rows = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), batch)
        correct = self._verified(rollout.tokens, rollout.completion_mask, rows).reshape(-1, k)
        win = pairs_lib.win_rates(pairs_lib.verifier_preference(correct))
      else:
        win = self._scores(generator, rollout, batch).reshape(-1, k)
      choice = pairs_lib.best_and_worst(win, finished)
      extra = {"win_rate_chosen": jnp.take_along_axis(win, choice.chosen[:, None], 1)[:, 0],
               "win_rate_rejected": jnp.take_along_axis(win, choice.rejected[:, None], 1)[:, 0]}
    else:
      choice = pairs_lib.best_and_worst(self._scores(generator, rollout, batch).reshape(-1, k),
                                        finished)
    take = lambda x, index: pairs_lib.take_candidates(x, index, k)  # noqa: E731
    pair = dict(prompts, **extra,
                answer_tokens=take(rollout.tokens, choice.chosen),
                answer_mask=take(rollout.completion_mask, choice.chosen),
                rejected_tokens=take(rollout.tokens, choice.rejected),
                rejected_mask=take(rollout.completion_mask, choice.rejected))
    return pair, choice, {}

  def _temporal_pairs(self, state: TrainState, batch: dict, rng: jax.Array):
    """Anchored rejection over [M_i | M_0] candidates; in a round's second half, future-guided
    chosen over M_f's candidates appended ([M_i | M_0 | M_f]), all scored by M_i."""
    cfg, k = self.config, self.config.num_candidates
    current, anchor = state.extra["round_params"], state.extra["anchor_params"]
    phase_two = state.step % cfg.steps_per_round >= cfg.steps_per_round // 2
    keys = jax.random.split(rng, 3)
    rollouts = [self._sample(current, batch, keys[0], self.candidates),
                self._sample(anchor, batch, keys[1], self.candidates)]
    future = lambda: self._sample(state.extra["future_params"], batch, keys[2], self.candidates)
    skipped = jax.tree.map(jnp.zeros_like, jax.eval_shape(future))
    rollouts.append(jax.lax.cond(phase_two, future, lambda: skipped))
    grouped = lambda x: x.reshape((-1, k) + x.shape[1:])  # noqa: E731
    scores = [grouped(self._scores(current, r, batch)) for r in rollouts]
    finished = [grouped(self._finished(r)) for r in rollouts]
    phase_one, from_anchor = pairs_lib.anchored_rejection(scores[0], finished[0], scores[1],
                                                          finished[1])
    guided, from_future = pairs_lib.future_guided_chosen(phase_one, scores[2],
                                                         finished[2] & phase_two, offset=2 * k)
    choice = _select(phase_two, guided, phase_one)
    from_future = from_future & phase_two
    candidates = lambda field: jnp.concatenate(  # noqa: E731
        [grouped(getattr(r, field)) for r in rollouts], axis=1)                 # [P, 3K, N]
    pick = lambda x, index: jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]  # noqa
    tokens, mask = candidates("tokens"), candidates("completion_mask")
    pair = dict(prompt_tokens=batch["prompt_tokens"], prompt_mask=batch["prompt_mask"],
                answer_tokens=pick(tokens, choice.chosen), answer_mask=pick(mask, choice.chosen),
                rejected_tokens=pick(tokens, choice.rejected),
                rejected_mask=pick(mask, choice.rejected))
    metrics = {"train/anchored_rejected": _pair_figure(from_anchor, choice.valid),
               "train/future_chosen": _pair_figure(from_future, choice.valid),
               "train/phase": 1.0 + phase_two.astype(jnp.float32)}
    return pair, choice, metrics

  # -- the step ----------------------------------------------------------------------------

  def _cosine(self, params: dict, pair: dict) -> jax.Array:
    """[B] cosine of the mean-pooled last hidden states of chosen and rejected completions."""
    context, context_mask, completion, completion_mask = self.preference.pair_sequences(pair)
    tokens = jnp.concatenate([context, completion], axis=1)
    mask = jnp.concatenate([context_mask, completion_mask], axis=1).astype(bool)
    hidden, _ = nnx.merge(self.graphdef, params)(tokens, mask, return_hidden=True)
    only_completion = mask & (jnp.arange(tokens.shape[1]) >= context.shape[1])
    pooled = mean_pooled_embeddings(hidden, only_completion)
    rows = pair["prompt_tokens"].shape[0]
    a, b = pooled[:rows], pooled[rows:]
    return jnp.sum(a * b, axis=-1) / jnp.maximum(
        jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-9)

  def step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
           ) -> tuple[TrainState, dict[str, jax.Array]]:
    cfg = self.config
    state = self.begin_step(state)
    pair, choice, extra_metrics = self.build_pairs(state, batch, rng)
    valid = choice.valid.astype(jnp.float32)
    _, reference = self.roles(state)
    ref = jax.lax.stop_gradient(self.preference.pair_logprobs(reference, pair))

    def loss_fn(params):
      chosen, rejected = self.preference.pair_logprobs(params, pair)
      if cfg.method == "sppo":
        loss = sppo_loss(chosen, rejected, *ref, pair["win_rate_chosen"],
                         pair["win_rate_rejected"], cfg.beta, weights=valid)
      else:
        loss = dpo_loss(chosen, rejected, *ref, cfg.beta, weights=valid)
      if cfg.nll_weight:
        lengths = jnp.sum(pair["answer_mask"], axis=1)
        loss = loss + cfg.nll_weight * chosen_nll_loss(chosen, lengths, weights=valid)
      return loss, (chosen, rejected)

    (loss, (chosen, rejected)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    extra = dict(state.extra)
    if not cfg.rounds and cfg.reference == "ema":
      extra["ref_params"] = jax.tree.map(lambda r, p: cfg.ema_decay * r + (1 - cfg.ema_decay) * p,
                                         extra["ref_params"], params)
    mean = lambda x: _pair_figure(x, choice.valid)  # noqa: E731
    no_pair = lambda x: jnp.where(jnp.any(choice.valid), x, jnp.nan)  # noqa: E731
    verified = lambda kind: self._verified(pair[f"{kind}_tokens"], pair[f"{kind}_mask"], batch)
    tokens = (2 * jnp.sum(batch["prompt_mask"]) + jnp.sum(pair["answer_mask"]) +
              jnp.sum(pair["rejected_mask"]))
    metrics = {
        "train/loss": loss, "train/grad_norm": optax.tree.norm(grads), "perf/tokens": tokens,
        **{k: no_pair(v) for k, v in
           preference_metrics(chosen, rejected, *ref, cfg.beta, weights=valid).items()},
        "train/pair_fraction": jnp.mean(valid),
        "train/chosen_verified": mean(verified("answer")),
        "train/rejected_verified": mean(verified("rejected")),
        "train/chosen_rejected_cosine": mean(jax.lax.stop_gradient(self._cosine(reference, pair))),
        **extra_metrics,
    }
    if cfg.method != "spin":
      metrics.update({"train/score_gap": mean(choice.chosen_score - choice.rejected_score),
                      "train/chosen_score": mean(choice.chosen_score),
                      "train/rejected_score": mean(choice.rejected_score)})
    if cfg.rounds:
      metrics["train/round"] = (state.step // cfg.steps_per_round).astype(jnp.float32)
    return state._replace(params=params, opt_state=opt_state, extra=extra), metrics



def _scorer(config: SelfRewardingConfig, pieces: RunPieces) -> Any:
  """The callable scoring candidates (RewardInputs -> [rows]) by config.scorer."""
  common = dict(graphdef=pieces.graphdef, encoder=pieces.encoder,
                stop_token_ids=pieces.stop_token_ids, pad_id=pieces.pad_id)
  if config.scorer == "verifier":
    return VerifierReward(pieces.verifier)
  if config.scorer == "p_true":
    template = judging.JudgeTemplate(config.template, config.yes, config.no)
    return SelfJudgeReward(build_template_judge(template, ("problem", "candidate"),
                                                "self_rewarding.template", **common))
  if config.scorer == "rubric":
    template = judging.RubricTemplate(config.template, config.scores)
    return RubricReward(build_template_judge(template, ("problem", "candidate"),
                                             "self_rewarding.template", **common))
  if config.scorer == "pairwise":
    template = judging.JudgeTemplate(config.pairwise_template, config.pairwise_yes,
                                     config.pairwise_no)
    return PairwiseReward(build_template_judge(template, ("problem", "first", "second"),
                                               "self_rewarding.pairwise_template", **common),
                          config.num_candidates)
  return None


def build(pieces: RunPieces, settings: dict) -> SelfRewarding:
  """The pipeline from the run's pieces; settings = config.self_rewarding."""
  config = SelfRewardingConfig(**settings)
  max_new = config.max_new_tokens or pieces.answer_len
  common = dict(max_new_tokens=max_new, stop_token_ids=pieces.stop_token_ids,
                pad_token_id=pieces.pad_id)
  candidates = SamplingConfig(
      temperature=config.temperature, top_p=config.top_p,
      num_samples_per_prompt=1 if config.method == "spin" else config.num_candidates, **common)
  judge_eval = (build_judge_eval(config.judge_eval, pieces, max_new)
                if config.judge_eval.enabled else None)
  preference = Preference(graphdef=pieces.graphdef, optimizer=pieces.optimizer,
                          config=PreferenceConfig(beta=config.beta), pad_id=pieces.pad_id)
  return SelfRewarding(
      graphdef=pieces.graphdef, optimizer=pieces.optimizer, verifier=pieces.verifier,
      config=config, scorer=_scorer(config, pieces), candidates=candidates,
      greedy=SamplingConfig(greedy=True, **common), stop_token_ids=pieces.stop_token_ids,
      preference=preference, judge_eval=judge_eval,
      eval_metric_names=("accuracy",) + (judge_eval.config.metric_names
                                         if judge_eval is not None else ()))


__all__ = ["METHODS", "SCORERS", "SelfRewardingConfig", "SelfRewarding", "build"]
