"""The self-judge measured against the task's verifier on held-out prompts (evaluation only).

For each eval prompt `JudgeEval` samples K = num_candidates candidates at `temperature` (one
`sampling.sample` call; prompt p draws with fold_in(eval key, record_id[p]), so its candidates
do not depend on the batch it sits in or on the mesh), verifies each with the run's verifier
(the batch rows repeated K times), and reads for each
  P(True)         of the judge prompt around (problem, candidate) (Kadavath et al. 2022);
  self-certainty  the mean KL(U || p) over its tokens (Kang et al. 2025);
and, with a pairwise template, P(candidate 0 better than candidate 1) with both orders
averaged (`judging.pairwise_preference`). Best-of-N for each N in `best_of` uses the FIRST N
candidates, and the selectors (SELECTORS)
  self_certainty  the most self-certain one (judging.best_of_n)
  borda           self-certainty Borda vote over identical answers (judging.borda_vote)
  p_true          the highest P(True)
  majority        the most frequent answer (borda_vote with power 0; ties: the first)
  random          candidate 0 (candidates are exchangeable: an unbiased single sample)
  oracle          the verifier picks: 1 if any of the N is correct
where an "answer" is the candidate's token row less stop/pad/<bos> ids (empty: no vote).

Per-example values (`JudgeEval.__call__`, rows = prompts): judge_p_true [batch, K] float,
judge_correct [batch, K] 0/1 (verifier reward > 0.5), self_certainty [batch, K],
pairwise_preference [batch] (with a pairwise template), judge_rubric [batch, K] (with a rubric
template: the expected score mapped to [0, 1]), bon{N}_{selector} [batch] 0/1.
`summarize` turns those of all eval examples into judge_auroc, judge_ece (10 equal-width
bins), judge_accuracy (P(True) >= 0.5 vs the verifier), the same three of the rubric score
(rubric_auroc, rubric_ece, rubric_accuracy), pairwise_agreement (candidates 0
and 1, over pairs the verifier separates), the mean of each bon{N}_{selector}, judge_score
(the mean P(True) of all candidates: what the judge thinks of the policy's samples),
self_certainty (their mean self-certainty) and sample_accuracy (the verifier's mean over
them). `reward_hacking` reads those over a run.

Cost per eval batch: K x batch rows sampled, one judge pass and one full-vocabulary
forward pass ([K x batch, prompt + completion, vocab] logits) over them, plus one
pairwise pass of 2 x batch rows. This module imports no pipeline: the judges are built by
the pipeline (pipelines/judge_prompts.TemplateJudge) and passed in.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfimprove import judge_metrics, judging
from selfimprove.sampling import SamplingConfig, sample

SELECTORS = ("self_certainty", "borda", "p_true", "majority", "random", "oracle")


@dataclasses.dataclass(frozen=True)
class JudgeEvalConfig:
  """What evaluation measures of the self-judge (config.rl.judge_eval). Errors name the field.

  Attributes:
    enabled: measure at every evaluation (off: evaluation is greedy accuracy only).
    num_candidates: K, candidates sampled per eval prompt (>= max(best_of)).
    best_of: the N of the bon{N}_{selector} figures (each in [1, K]).
    temperature: sampling temperature of the candidates.
    template, yes, no: the P(True) judge (judging.JudgeTemplate: {problem} then {candidate}).
    pairwise_template, pairwise_yes, pairwise_no: a judge asked whether {first} is better than
      {second} (fields {problem}, {first}, {second} in that order); "" measures no pairs.
    rubric_template, rubric_scores: a rubric judge ({problem}, {candidate}; the score texts,
      worth 1..S) measured like P(True) on its expected score mapped to [0, 1]; "": none.
    borda_power: p of the Borda votes (N - r + 1)^p (0: majority voting).
    section: the config section named in errors.
  """

  enabled: bool = True
  num_candidates: int = 16
  best_of: tuple[int, ...] = (1, 4, 16)
  temperature: float = 1.0
  template: str = judging.P_TRUE_TEMPLATE.text
  yes: tuple[str, ...] = judging.P_TRUE_TEMPLATE.yes
  no: tuple[str, ...] = judging.P_TRUE_TEMPLATE.no
  pairwise_template: str = ""
  pairwise_yes: tuple[str, ...] = ("A",)
  pairwise_no: tuple[str, ...] = ("B",)
  rubric_template: str = ""
  rubric_scores: tuple[str, ...] = ("1", "2", "3", "4", "5")
  borda_power: float = 0.5
  section: str = dataclasses.field(default="rl.judge_eval", compare=False)

  def __post_init__(self):
    for field in ("yes", "no", "pairwise_yes", "pairwise_no", "rubric_scores"):
      value = getattr(self, field)
      object.__setattr__(self, field, (value,) if isinstance(value, str) else tuple(value))
    best_of = self.best_of
    object.__setattr__(self, "best_of", (best_of,) if isinstance(best_of, int) else tuple(best_of))
    checks = [
        ("num_candidates", self.num_candidates >= 1, "must be >= 1"),
        ("best_of", bool(self.best_of) and all(1 <= n <= self.num_candidates
                                              for n in self.best_of)
         and len(set(self.best_of)) == len(self.best_of),
         f"must be distinct sizes in [1, num_candidates={self.num_candidates}]"),
        ("temperature", self.temperature > 0, "must be > 0"),
        ("borda_power", self.borda_power >= 0, "must be >= 0"),
        ("pairwise_template", not self.pairwise_template or self.num_candidates >= 2,
         "needs num_candidates >= 2 (it compares candidates 0 and 1)"),
    ]
    for field, ok, message in checks:
      if not ok:
        raise ValueError(f"{self.section}.{field}={getattr(self, field)!r}: {message}.")

  @property
  def metric_names(self) -> tuple[str, ...]:
    """The per-example values `JudgeEval` returns with this config."""
    pairwise = ("pairwise_preference",) if self.pairwise_template else ()
    rubric = ("judge_rubric",) if self.rubric_template else ()
    return ("judge_p_true", "judge_correct", "self_certainty", *pairwise, *rubric,
            *(f"bon{n}_{selector}" for n in self.best_of for selector in SELECTORS))


def parse_judge_eval(settings: Mapping[str, Any] | JudgeEvalConfig,
                     default_judge: Mapping[str, Any] | None,
                     section: str = "rl.judge_eval") -> JudgeEvalConfig:
  """config.<section> (a dict) -> JudgeEvalConfig.

  `default_judge`: {"template", "yes", "no"} of the run's self-judge reward, or None.
  template/yes/no not given come from it (else judging.P_TRUE_TEMPLATE); `enabled` not
  given is on when a judge is configured (`default_judge` or settings' own template).
  """
  if isinstance(settings, JudgeEvalConfig):
    return settings
  settings = dict(settings)
  known = [f.name for f in dataclasses.fields(JudgeEvalConfig) if f.name != "section"]
  unknown = sorted(set(settings) - set(known))
  if unknown:
    raise ValueError(f"{section}: unknown fields {unknown}; its fields are {known}.")
  judge = dict(default_judge or {})
  if settings.get("enabled") is None:
    settings["enabled"] = bool(judge) or bool(settings.get("template"))
  for field in ("template", "yes", "no"):
    if settings.get(field) is None and field in judge:
      settings[field] = judge[field]
  settings = {k: v for k, v in settings.items() if v is not None}
  return JudgeEvalConfig(**settings, section=section)


def best_of_n_values(correct: jax.Array, p_true: jax.Array, certainty: jax.Array,
                     answers: jax.Array, answer_valid: jax.Array, best_of: tuple[int, ...],
                     borda_power: float) -> dict[str, jax.Array]:
  """{bon{N}_{selector}: [P] 0/1}: the verifier's outcome of each selector's pick among the
  first N candidates. correct, p_true, certainty, answer_valid: [P, K]; answers [P, K, C]."""
  values = {}
  for n in best_of:
    first = lambda x: x[:, :n]
    votes = lambda power: judging.borda_vote(first(certainty), first(answers),
                                             first(answer_valid), power)
    picks = {"self_certainty": judging.best_of_n(first(certainty)), "borda": votes(borda_power),
             "p_true": judging.best_of_n(first(p_true)), "majority": votes(0.0),
             "random": jnp.zeros(correct.shape[:1], jnp.int32)}
    for selector in SELECTORS:
      values[f"bon{n}_{selector}"] = (jnp.max(first(correct), axis=1) if selector == "oracle"
                                      else judging.take_selected(first(correct), picks[selector]))
  return values


def _typed_key(rng: jax.Array) -> jax.Array:
  """A typed key from a typed or raw (uint32 [2]) one."""
  typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
  return rng if typed else jax.random.wrap_key_data(rng)


@dataclasses.dataclass(frozen=True)
class JudgeEval:
  """The jittable measurement: `(params, batch, rng) -> {name: [batch, ...]}`.

  judge, pairwise: objects with `probability(params, prompt_tokens, prompt_mask, candidates)
  -> [rows]` and `candidate_mask(tokens, completion_mask) -> [rows, C]` (judge_prompts.TemplateJudge;
  pairwise None: no pairs). verifier: (tokens, mask, rows) -> [rows] rewards.
  """

  config: JudgeEvalConfig
  graphdef: nnx.GraphDef
  verifier: Any
  sampling: SamplingConfig
  judge: Any
  pairwise: Any = None
  rubric: Any = None     # a TemplateJudge with score ids (`rubric(...)`), or None

  def __call__(self, params: dict, batch: dict[str, jax.Array], rng: jax.Array
               ) -> dict[str, jax.Array]:
    """Batch keys: prompt_tokens/prompt_mask [batch, P], record_id [batch] (else row numbers
    key the prompts) and what the verifier reads. Values as the module docstring lists."""
    prompts, k = batch["prompt_tokens"].shape[0], self.sampling.num_samples_per_prompt
    ids = batch["record_id"] if "record_id" in batch else jnp.arange(prompts)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(_typed_key(rng), ids)
    model = nnx.merge(self.graphdef, params)
    rollout = sample(model, batch["prompt_tokens"], batch["prompt_mask"], keys, self.sampling)
    rows = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), batch)
    tokens, mask = rollout.tokens, rollout.completion_mask
    correct = self.verifier(tokens, mask, rows) > 0.5
    p_true = self.judge.probability(params, rollout.prompt_tokens, rollout.prompt_mask,
                                    [(tokens, mask)])
    logits = judging.completion_logits(model, rollout.prompt_tokens, rollout.prompt_mask,
                                       tokens, mask)
    certainty = jax.lax.stop_gradient(judging.self_certainty(logits, mask))
    answer_mask = self.judge.candidate_mask(tokens, mask)
    grouped = lambda x: x.reshape((prompts, k) + x.shape[1:])
    values = {"judge_p_true": grouped(p_true),
              "judge_correct": grouped(correct.astype(jnp.float32)),
              "self_certainty": grouped(certainty)}
    values.update(best_of_n_values(
        values["judge_correct"], values["judge_p_true"], values["self_certainty"],
        grouped(jnp.where(answer_mask, tokens, -1)), grouped(jnp.any(answer_mask, axis=1)),
        self.config.best_of, self.config.borda_power))
    if self.pairwise is not None:
      values["pairwise_preference"] = self._pairwise(params, rollout, prompts, k)
    if self.rubric is not None:
      score = self.rubric.rubric(params, rollout.prompt_tokens, rollout.prompt_mask,
                                 [(tokens, mask)])
      low, high = min(self.rubric.score_values), max(self.rubric.score_values)
      values["judge_rubric"] = grouped((score - low) / (high - low))
    return values

  def _pairwise(self, params: dict, rollout, prompts: int, k: int) -> jax.Array:
    """[prompts] P(candidate 0 better than 1), both orders in one judge pass."""
    of = lambda x, j: x.reshape((prompts, k) + x.shape[1:])[:, j]
    a, b = ((of(rollout.tokens, j), of(rollout.completion_mask, j)) for j in (0, 1))
    twice = lambda x: jnp.concatenate([x, x], axis=0)
    both = lambda first, second: jnp.concatenate([first, second], axis=0)
    p = self.pairwise.probability(
        params, twice(of(rollout.prompt_tokens, 0)), twice(of(rollout.prompt_mask, 0)),
        [(both(a[0], b[0]), both(a[1], b[1])), (both(b[0], a[0]), both(b[1], a[1]))])
    return judging.pairwise_preference(p[:prompts], p[prompts:])


def _mean(values: np.ndarray) -> float:
  return float(np.mean(values, dtype=np.float64)) if values.size else float("nan")


def summarize(values: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Figures over ALL eval examples from `JudgeEval`'s values ([num_examples, ...] each).

  P(True) of every candidate (flattened: num_examples x K) against its correctness gives
  judge_auroc, judge_ece and judge_accuracy (NaN where a P(True) is not finite);
  pairwise_agreement (with pairwise values); the mean of each bon{N}_{selector}.
  """
  p_true = np.asarray(values["judge_p_true"], np.float64).reshape(-1)
  correct = np.asarray(values["judge_correct"], np.float64)
  # What the judge thinks of the policy's samples, and what the verifier says of them.
  overall = {"judge_score": _mean(p_true), "sample_accuracy": _mean(correct),
             "self_certainty": _mean(np.asarray(values["self_certainty"], np.float64))}
  summary = {name: float("nan") for name in ("judge_auroc", "judge_ece", "judge_accuracy")}
  if np.isfinite(p_true).all():
    labels = correct.reshape(-1)
    summary = {"judge_auroc": judge_metrics.auroc(p_true, labels),
               "judge_ece": judge_metrics.expected_calibration_error(p_true, labels),
               "judge_accuracy": judge_metrics.accuracy_at(p_true, labels, 0.5)}
  if "judge_rubric" in values:
    rubric = np.asarray(values["judge_rubric"], np.float64).reshape(-1)
    finite = np.isfinite(rubric).all()
    labels = correct.reshape(-1)
    summary.update({
        "rubric_auroc": judge_metrics.auroc(rubric, labels) if finite else float("nan"),
        "rubric_ece": (judge_metrics.expected_calibration_error(rubric, labels) if finite
                       else float("nan")),
        "rubric_accuracy": (judge_metrics.accuracy_at(rubric, labels, 0.5) if finite
                            else float("nan"))})
  if "pairwise_preference" in values:
    preference = np.asarray(values["pairwise_preference"], np.float64)
    summary["pairwise_agreement"] = (
        judge_metrics.pairwise_agreement(preference, correct[:, 0], correct[:, 1])
        if np.isfinite(preference).all() else float("nan"))
  summary.update({name: _mean(np.asarray(value)) for name, value in values.items()
                  if name.startswith("bon")})
  return {**overall, **summary}


def evaluate_policy(graphdef: nnx.GraphDef, params: dict, batch: dict[str, jax.Array],
                    rng: jax.Array, greedy: SamplingConfig, verifier: Any,
                    judge_eval: JudgeEval | None) -> dict[str, jax.Array]:
  """A pipeline's `evaluate` with a judge: "accuracy" [batch] (the verifier on one greedy
  completion per prompt) and, with `judge_eval`, its values (`JudgeEval.__call__`)."""
  rollout = sample(nnx.merge(graphdef, params), batch["prompt_tokens"], batch["prompt_mask"],
                   rng, greedy)
  values = {"accuracy": verifier(rollout.tokens, rollout.completion_mask, batch)}
  if judge_eval is not None:
    values.update(judge_eval(params, batch, rng))
  return values


def summarize_policy_eval(values: Mapping[str, np.ndarray], with_judge: bool
                          ) -> dict[str, float]:
  """`evaluate_policy`'s values over all eval examples: accuracy (the mean) and, with the
  judge, `summarize`'s figures."""
  summary = {"accuracy": _mean(np.asarray(values["accuracy"]))}
  return {**summary, **summarize(values)} if with_judge else summary


class PolicyEvaluation:
  """`evaluate` / `summarize_eval` / `eval_summary_names` of a pipeline that measures its policy
  and judge (RL, judge training, self-generated preferences). The pipeline (a dataclass) has
  `graphdef`, `greedy` (SamplingConfig), `verifier` and `judge_eval` (JudgeEval or None)."""

  @property
  def eval_summary_names(self) -> tuple[str, ...]:
    """What the progress bar shows."""
    return ("accuracy",) + (("judge_auroc",) if self.judge_eval is not None else ())

  def evaluate(self, params: dict, batch: dict[str, jax.Array], rng: jax.Array
               ) -> dict[str, jax.Array]:
    """Per-example greedy accuracy [batch] and, with judge_eval, its values."""
    return evaluate_policy(self.graphdef, params, batch, rng, self.greedy, self.verifier,
                           self.judge_eval)

  def summarize_eval(self, values: dict) -> dict[str, float]:
    """eval/accuracy (the mean), and with judge_eval its figures (`summarize`)."""
    return summarize_policy_eval(values, self.judge_eval is not None)


def reward_hacking(records: list[dict], margin: float = 0.02,
                   judge_key: str = "eval/judge_score", accuracy_key: str = "eval/accuracy"
                   ) -> str | None:
  """A one-line flag when the judge's score of the policy's samples rose while the verifier's
  accuracy fell, else None.

  records: metrics.jsonl rows (selfimprove.metrics.read_metrics). From the evaluation where
  `accuracy_key` peaked to the last one: flagged when accuracy fell by more than `margin` and
  `judge_key` rose by more than `margin`, in its own units (SSR-Zero's failure mode: the judge
  being gamed).
  Fewer than two evaluations with both keys: None.
  """
  evals = [r for r in records if isinstance(r.get(judge_key), (int, float))
           and isinstance(r.get(accuracy_key), (int, float))]
  if len(evals) < 2:
    return None
  peak = max(range(len(evals)), key=lambda i: (evals[i][accuracy_key], -i))
  first, last = evals[peak], evals[-1]
  fell = first[accuracy_key] - last[accuracy_key]
  rose = last[judge_key] - first[judge_key]
  if fell > margin and rose > margin:
    return (f"reward hacking: from step {first['step']} to {last['step']} {judge_key} rose "
            f"{first[judge_key]:.3f} -> {last[judge_key]:.3f} while {accuracy_key} fell "
            f"{first[accuracy_key]:.3f} -> {last[accuracy_key]:.3f}")
  return None


__all__ = ["SELECTORS", "JudgeEvalConfig", "parse_judge_eval", "best_of_n_values", "JudgeEval",
           "summarize", "evaluate_policy", "summarize_policy_eval", "PolicyEvaluation",
           "reward_hacking"]
