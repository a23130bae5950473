"""Reward sources of the RL pipeline (pipelines/rl.py): a step's samples -> [rows] rewards.

`config.rl.rewards` maps a name (logged as train/reward/<name>) to its settings:

    {"source": one of SOURCES (default: the name), "weight": float (0: off, not computed),
     ...the source's own OPTIONS}

The step's reward is sum_k weight_k * reward_k. Sources:

  "verifier"    the run's verifier (in-graph or a host function; the same call).
  "self_judge"  P(True) of a `judging.JudgeTemplate` (Kadavath et al. 2022) read from the
                current policy (judge="policy", SSR-Zero's self-reward) or the frozen
                reference (judge="reference"); options template (text with {problem} then
                {candidate}), yes, no.
  "rubric"      Self-J's expected score sum_k s_k p_k / sum_k p_k over the score tokens
                (`judging.rubric_score`; values 1..S) after a template with {problem} then
                {candidate}; options template, scores (the S score texts), judge.
  "pairwise"    the sample's mean order-averaged win probability against the other G - 1
                samples of its group, P(first better) read from a template with {problem},
                {first}, {second} (`judging.pairwise_preference`; G (G - 1) judge prompts per
                prompt); options template, yes, no, judge.
  "self_certainty"  the mean KL(U || p) over the completion's tokens (Kang et al. 2025; as a
                reward, Intuitor / RLIF: Zhao et al. 2025, arXiv 2505.19590) under the current
                policy or the frozen reference (option judge): the model's confidence in its
                own sample, no template.
  "majority"    1.0 where the sample's answer is its group's most frequent one (self-consistency
                as a reward, TTRL: Zuo et al. 2025, arXiv 2504.16084): the model's consensus,
                no judge prompt and no verifier; answers as judge_eval reads them.
  "length"      completion length / max_new_tokens in [0, 1]: a penalty with a negative
                weight, a bonus with a positive one.
  "format"      1.0 where the completion ended with a stop token (did not run out of budget).

Judge prompts are assembled in the graph from token pieces (pipelines/judge_prompts.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfimprove import judging
from selfimprove.encoding import TextEncoder
from selfimprove.pipelines.judge_prompts import TemplateJudge, build_template_judge
from selfimprove.sampling import Rollout

# source -> its options beyond "source" and "weight", with their defaults.
OPTIONS: dict[str, dict[str, Any]] = {
    "verifier": {},
    "self_judge": {"template": judging.P_TRUE_TEMPLATE.text, "yes": judging.P_TRUE_TEMPLATE.yes,
                   "no": judging.P_TRUE_TEMPLATE.no, "judge": "policy"},
    "rubric": {"template": "Question: {problem}\nResponse: {candidate}\nScore (1-5): ",
               "scores": ("1", "2", "3", "4", "5"), "judge": "policy"},
    "pairwise": {"template": ("Question: {problem}\nResponse A: {first}\nResponse B: {second}\n"
                              "Is A better than B? Answer: "),
                 "yes": ("Yes",), "no": ("No",), "judge": "policy"},
    "self_certainty": {"judge": "policy"},
    "majority": {},
    "length": {},
    "format": {},
}
SOURCES = tuple(OPTIONS)
JUDGES = ("policy", "reference")


@dataclasses.dataclass(frozen=True)
class RewardSpec:
  """One entry of config.rl.rewards, checked: options = sorted (field, value) pairs."""

  name: str
  source: str
  weight: float
  options: tuple[tuple[str, Any], ...] = ()

  @property
  def uses_reference(self) -> bool:
    return dict(self.options).get("judge") == "reference"


def _hashable(value: Any) -> Any:
  return tuple(value) if isinstance(value, (list, tuple)) else value


def parse_rewards(rewards: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]]
                  ) -> tuple[RewardSpec, ...]:
  """config.rl.rewards -> the sources with a non-zero weight; errors name the field.

  `rewards` maps name -> settings, or is a list of settings each with a "source" (and an
  optional "name", default the source). The mapping suits ml_collections overrides
  (--config.rl.rewards.self_judge.weight=0.5).
  """
  if not isinstance(rewards, Mapping):
    entries = [dict(entry) for entry in rewards]
    names = [entry.pop("name", entry.get("source")) for entry in entries]
    if None in names or len(set(names)) != len(names):
      raise ValueError(f"rl.rewards: every entry of the list needs a source, and names (default: "
                       f"the source) must differ; got names {names}.")
    rewards = dict(zip(names, entries))
  specs = []
  for name, settings in rewards.items():
    settings = dict(settings)
    source = settings.pop("source", name)
    where = f"rl.rewards.{name}"
    if source not in OPTIONS:
      raise ValueError(f"{where}.source={source!r}: expected one of {SOURCES}.")
    weight = settings.pop("weight", 1.0)
    if not isinstance(weight, (int, float)):
      raise ValueError(f"{where}.weight={weight!r}: expected a number (0 switches it off).")
    unknown = sorted(set(settings) - set(OPTIONS[source]))
    if unknown:
      raise ValueError(f"{where}: unknown fields {unknown} for source {source!r}; its fields are "
                       f"{sorted(OPTIONS[source])} plus source and weight.")
    options = {**OPTIONS[source], **settings}
    if options.get("judge", "policy") not in JUDGES:
      raise ValueError(f"{where}.judge={options['judge']!r}: expected one of {JUDGES}.")
    if weight:
      specs.append(RewardSpec(name, source, float(weight),
                              tuple(sorted((k, _hashable(v)) for k, v in options.items()))))
  if not specs:
    raise ValueError("rl.rewards: no source has a non-zero weight; give at least one (e.g. "
                     "rewards.verifier.weight=1.0).")
  return tuple(specs)


def self_judge_template(rewards: Any) -> dict[str, Any] | None:
  """{"template", "yes", "no"} of the first "self_judge" entry of config.rl.rewards, whatever
  its weight (a switched-off judge reward still names the run's judge), or None.

  `rewards` as `parse_rewards` takes it, or its result (RewardSpecs)."""
  if isinstance(rewards, Mapping):
    entries = [(name, settings) for name, settings in rewards.items()]
  else:
    entries = [(getattr(entry, "name", None), entry) for entry in rewards]
  for name, entry in entries:
    if isinstance(entry, RewardSpec):
      source, options = entry.source, dict(entry.options)
    elif isinstance(entry, Mapping):
      source, options = entry.get("source", entry.get("name", name)), dict(entry)
    else:
      continue
    if source == "self_judge":
      defaults = OPTIONS["self_judge"]
      return {field: options.get(field, defaults[field]) for field in ("template", "yes", "no")}
  return None


class RewardInputs(NamedTuple):
  """What a source reads. Rows = prompts x group_size, grouped by prompt."""

  rollout: Rollout            # the step's samples
  rows: dict[str, jax.Array]  # the batch, each array repeated per sample: [rows, ...]
  params: dict                # the policy that sampled (before this step's updates)
  ref_params: Any             # the frozen reference policy, or None when the run keeps none


# ---- Sources: frozen (hashable) callables RewardInputs -> [rows] float32 -----------------------

@dataclasses.dataclass(frozen=True)
class VerifierReward:
  verifier: Any   # (tokens, mask, rows) -> [rows]

  def __call__(self, inputs: RewardInputs) -> jax.Array:
    rollout = inputs.rollout
    return self.verifier(rollout.tokens, rollout.completion_mask, inputs.rows).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class LengthReward:
  max_new_tokens: int

  def __call__(self, inputs: RewardInputs) -> jax.Array:
    return inputs.rollout.lengths.astype(jnp.float32) / self.max_new_tokens


@dataclasses.dataclass(frozen=True)
class FormatReward:
  stop_token_ids: tuple[int, ...]

  def __call__(self, inputs: RewardInputs) -> jax.Array:
    rollout = inputs.rollout
    stopped = rollout.completion_mask & jnp.isin(rollout.tokens, jnp.asarray(self.stop_token_ids))
    return jnp.any(stopped, axis=1).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class SelfJudgeReward:
  """P(True) [rows] of the judge prompt around each (problem, completion)."""

  template_judge: TemplateJudge          # pieces (prefix, middle, suffix)
  judge: str = "policy"

  def prompt(self, rollout: Rollout) -> tuple[jax.Array, jax.Array]:
    """The judge prompts (tokens, mask), [rows, J] each, of a rollout's rows."""
    return self.template_judge.prompt(rollout.prompt_tokens, rollout.prompt_mask,
                                [(rollout.tokens, rollout.completion_mask)])

  def __call__(self, inputs: RewardInputs) -> jax.Array:
    params = inputs.params if self.judge == "policy" else inputs.ref_params
    rollout = inputs.rollout
    return self.template_judge.probability(params, rollout.prompt_tokens, rollout.prompt_mask,
                                     [(rollout.tokens, rollout.completion_mask)])


@dataclasses.dataclass(frozen=True)
class RubricReward:
  """Self-J's expected score [rows] of the rubric prompt around each (problem, completion)."""

  template_judge: TemplateJudge          # with score_ids
  judge: str = "policy"

  def __call__(self, inputs: RewardInputs) -> jax.Array:
    params = inputs.params if self.judge == "policy" else inputs.ref_params
    rollout = inputs.rollout
    return self.template_judge.rubric(params, rollout.prompt_tokens, rollout.prompt_mask,
                                      [(rollout.tokens, rollout.completion_mask)])


def ordered_pairs(group_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(first, second) [G (G - 1)] int32: every ordered pair of distinct group members."""
  first, second = np.nonzero(~np.eye(group_size, dtype=bool))
  return first.astype(np.int32), second.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class PairwiseReward:
  """Each sample's mean win probability against the rest of its group [rows]: for i != j,
  pref(i, j) = pairwise_preference(P(i first better), P(j first better)), averaged over j.
  One judge pass over all G (G - 1) ordered pairs of each prompt."""

  template_judge: TemplateJudge          # pieces around (problem, first, second)
  group_size: int
  judge: str = "policy"

  def __call__(self, inputs: RewardInputs) -> jax.Array:
    params = inputs.params if self.judge == "policy" else inputs.ref_params
    rollout, g = inputs.rollout, self.group_size
    first, second = ordered_pairs(g)
    grouped = lambda x: x.reshape((-1, g) + x.shape[1:])
    pick = lambda x, index: grouped(x)[:, index].reshape((-1,) + x.shape[1:])   # [P * pairs, ..]
    p_first = self.template_judge.probability(
        params, pick(rollout.prompt_tokens, first), pick(rollout.prompt_mask, first),
        [(pick(rollout.tokens, first), pick(rollout.completion_mask, first)),
         (pick(rollout.tokens, second), pick(rollout.completion_mask, second))])
    p = jnp.zeros((p_first.shape[0] // len(first), g, g)).at[:, first, second].set(
        p_first.reshape(-1, len(first)))                           # p[:, i, j] = P(i shown first wins)
    preference = judging.pairwise_preference(p, jnp.swapaxes(p, 1, 2))   # [P, G, G]
    off_diagonal = ~jnp.eye(g, dtype=bool)
    wins = jnp.sum(jnp.where(off_diagonal, preference, 0.0), axis=2) / (g - 1)
    return wins.reshape(-1)


@dataclasses.dataclass(frozen=True)
class SelfCertaintyReward:
  """Self-certainty [rows] of each completion under the judge's parameters (one forward pass
  over prompt + completion, full vocabulary)."""

  graphdef: nnx.GraphDef
  judge: str = "policy"

  def __call__(self, inputs: RewardInputs) -> jax.Array:
    params = inputs.params if self.judge == "policy" else inputs.ref_params
    rollout = inputs.rollout
    logits = judging.completion_logits(nnx.merge(self.graphdef, params), rollout.prompt_tokens,
                                       rollout.prompt_mask, rollout.tokens,
                                       rollout.completion_mask)
    return jax.lax.stop_gradient(judging.self_certainty(logits, rollout.completion_mask))


@dataclasses.dataclass(frozen=True)
class MajorityReward:
  """1.0 [rows] where a sample's answer (its tokens less stop/pad/<bos> ids) equals the most
  frequent answer of its group (`judging.borda_vote` with power 0: ties go to the answer of the
  lowest-index sample); 0.0 for an empty answer."""

  group_size: int
  dropped_ids: tuple[int, ...]

  def __call__(self, inputs: RewardInputs) -> jax.Array:
    tokens, mask = inputs.rollout.tokens, inputs.rollout.completion_mask
    mask = mask & ~jnp.isin(tokens, jnp.asarray(self.dropped_ids, jnp.int32))
    grouped = lambda x: x.reshape((-1, self.group_size) + x.shape[1:])
    answers = grouped(jnp.where(mask, tokens, -1))                          # [P, G, N]
    valid = grouped(jnp.any(mask, axis=1))                                  # [P, G]
    pick = judging.borda_vote(jnp.zeros(valid.shape), answers, valid, power=0.0)
    chosen = jnp.take_along_axis(answers, pick[:, None, None], axis=1)      # [P, 1, N]
    agrees = jnp.all(answers == chosen, axis=-1) & valid
    return agrees.reshape(-1).astype(jnp.float32)


def build_source(spec: RewardSpec, *, graphdef: nnx.GraphDef, encoder: TextEncoder,
                 verifier: Any, max_new_tokens: int, stop_token_ids: tuple[int, ...],
                 pad_id: int, group_size: int):
  """The callable of one checked spec (template text is encoded here, once)."""
  if spec.source == "verifier":
    return VerifierReward(verifier)
  if spec.source == "length":
    return LengthReward(max_new_tokens)
  if spec.source == "format":
    return FormatReward(tuple(stop_token_ids))
  options = dict(spec.options)
  if spec.source == "self_certainty":
    return SelfCertaintyReward(graphdef, options["judge"])
  common = dict(graphdef=graphdef, encoder=encoder, stop_token_ids=stop_token_ids, pad_id=pad_id)
  what = f"rl.rewards.{spec.name}.template"
  if spec.source == "rubric":
    template = judging.RubricTemplate(options["template"], tuple(options["scores"]))
    return RubricReward(build_template_judge(template, ("problem", "candidate"), what, **common),
                        options["judge"])
  if spec.source == "pairwise":
    template = judging.JudgeTemplate(options["template"], yes=options["yes"], no=options["no"])
    return PairwiseReward(
        build_template_judge(template, ("problem", "first", "second"), what, **common),
        group_size, options["judge"])
  if spec.source == "majority":
    bos = encoder.tokenizer.bos_id
    dropped = [*stop_token_ids, pad_id] + ([] if bos is None else [bos])
    return MajorityReward(group_size, tuple(dict.fromkeys(dropped)))
  template = judging.JudgeTemplate(options["template"], yes=options["yes"], no=options["no"])
  return SelfJudgeReward(build_template_judge(template, ("problem", "candidate"), what, **common),
                         options["judge"])


__all__ = ["OPTIONS", "SOURCES", "JUDGES", "RewardSpec", "RewardInputs", "parse_rewards",
           "self_judge_template", "VerifierReward", "LengthReward", "FormatReward",
           "SelfJudgeReward", "RubricReward", "PairwiseReward", "SelfCertaintyReward",
           "MajorityReward", "ordered_pairs", "build_source"]
