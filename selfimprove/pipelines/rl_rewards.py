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

The judge prompt cannot be rendered as text inside jit, so it is assembled from token
pieces: the template's fixed text around {problem} and {candidate}, encoded once by the run's
tokenizer (with its <bos> or chat template, as prompts are), around the sampled prompt's
problem tokens (without <bos>/chat wrapping) and the completion (without its stop token and
any sampled pad/<bos> ids, which text decoding drops), then left-padded. With a char or byte
tokenizer this equals encoding the rendered text (tested); with BPE the pieces are encoded
apart, so merges across a piece boundary can differ from whole-text encoding (end template
pieces on whitespace or punctuation). `TemplateJudge` does this for any number of candidates
(P(True): one; a pairwise judge: two) and is also what selfimprove/judge_eval.py measures.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfimprove import judging
from selfimprove.encoding import TextEncoder
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
_FIELD = re.compile(r"\{(\w+)\}")   # a template field, as judging.JudgeTemplate reads them


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


# ---- In-graph judge prompts ------------------------------------------------------------------

def left_pad(tokens: jax.Array, mask: jax.Array, pad_id: int) -> tuple[jax.Array, jax.Array]:
  """Moves each row's real tokens, in order, to its right end: [rows, L] x2 -> [rows, L] x2."""
  order = jnp.argsort(mask.astype(jnp.int32), axis=1, stable=True)   # padding first, order kept
  mask = jnp.take_along_axis(mask.astype(bool), order, axis=1)
  tokens = jnp.take_along_axis(tokens.astype(jnp.int32), order, axis=1)
  return jnp.where(mask, tokens, pad_id), mask


def problem_mask(prompt_mask: jax.Array, head: int, tail: int) -> jax.Array:
  """The prompt's real tokens less its first `head` and last `tail` ones (<bos>, chat wrapping):
  [rows, P] bool -> [rows, P] bool."""
  prompt_mask = prompt_mask.astype(bool)
  rank = jnp.cumsum(prompt_mask, axis=1) - 1
  count = jnp.sum(prompt_mask, axis=1, keepdims=True)
  return prompt_mask & (rank >= head) & (rank < count - tail)


def assemble_prompt(pieces: Sequence[Sequence[int]],
                    segments: Sequence[tuple[jax.Array, jax.Array]], pad_id: int
                    ) -> tuple[jax.Array, jax.Array]:
  """pieces[0] + segments[0] + pieces[1] + ... + segments[-1] + pieces[-1], left-padded.

  pieces: len(segments) + 1 fixed id sequences; segments: (tokens [rows, L_i], bool mask
  [rows, L_i]) each -> (tokens int32, mask bool), each [rows, sum |pieces| + sum L_i].
  """
  if len(pieces) != len(segments) + 1:
    raise ValueError(f"assemble_prompt: {len(pieces)} pieces for {len(segments)} segments; "
                     "expected one more piece than segments.")
  rows = segments[0][0].shape[0]
  tokens, mask = [], []
  for i, ids in enumerate(pieces):
    tokens.append(jnp.broadcast_to(jnp.asarray(ids, jnp.int32).reshape(1, -1), (rows, len(ids))))
    mask.append(jnp.ones((rows, len(ids)), bool))
    if i < len(segments):
      tokens.append(segments[i][0].astype(jnp.int32))
      mask.append(segments[i][1].astype(bool))
  return left_pad(jnp.concatenate(tokens, axis=1), jnp.concatenate(mask, axis=1), pad_id)


def judge_prompt(pieces: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
                 problem_tokens: jax.Array, problem_mask_: jax.Array,
                 candidate_tokens: jax.Array, candidate_mask: jax.Array, pad_id: int
                 ) -> tuple[jax.Array, jax.Array]:
  """prefix + problem + middle + candidate + suffix, left-padded.

  pieces: (prefix, middle, suffix) ids; problem [rows, P], candidate [rows, N] tokens and
  bool masks -> (tokens int32, mask bool), each [rows, |prefix| + P + |middle| + N + |suffix|].
  """
  return assemble_prompt(pieces, [(problem_tokens, problem_mask_),
                                  (candidate_tokens, candidate_mask)], pad_id)


def wrapped_text_pieces(encoder: TextEncoder, text: str, fields: tuple[str, ...], what: str
                        ) -> tuple[tuple[int, ...], ...]:
  """Ids of the fixed text around each {field} of `text` (once each, in this order), as a
  prompt is encoded (chat template, then <bos> before the first piece): len(fields) + 1 tuples."""
  found = _FIELD.findall(text)
  if found != list(fields):
    raise ValueError(f"{what}={text!r} must hold the fields {['{%s}' % f for f in fields]} once "
                     f"each in that order; it has {['{%s}' % f for f in found]}.")
  rest, texts = encoder.prompt_text(text), []
  for field in fields:
    before, rest = rest.split("{%s}" % field, 1)
    texts.append(before)
  pieces = [encoder.text_ids(piece, what) for piece in texts + [rest]]
  adds_bos = (not encoder.format.chat_template and encoder.format.add_bos and
              encoder.tokenizer.bos_id is not None)
  if adds_bos:
    pieces[0] = (encoder.tokenizer.bos_id,) + pieces[0]
  return tuple(pieces)


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
class TemplateJudge:
  """P(yes) of a yes/no judge prompt: fixed template pieces around a problem and k candidates.

  Also used outside rewards (selfimprove/judge_eval.py): P(True) with k = 1, a pairwise
  "is the first better?" judge with k = 2.
  """

  graphdef: nnx.GraphDef
  pieces: tuple[tuple[int, ...], ...]    # k + 2 id tuples: before the problem, ..., after the last
  prompt_wrapping: tuple[int, int]       # (head, tail) prompt tokens around the problem text
  yes_ids: tuple[int, ...]
  no_ids: tuple[int, ...]
  dropped_ids: tuple[int, ...]           # completion ids left out: stop, pad, <bos>
  pad_id: int
  score_ids: tuple[int, ...] = ()        # a rubric's score tokens (then yes/no are empty)
  score_values: tuple[float, ...] = ()

  def candidate_mask(self, tokens: jax.Array, completion_mask: jax.Array) -> jax.Array:
    """[rows, N] bool: the completion's tokens that text decoding keeps (no stop/pad/<bos>)."""
    return completion_mask & ~jnp.isin(tokens, jnp.asarray(self.dropped_ids, jnp.int32))

  def prompt(self, prompt_tokens: jax.Array, prompt_mask: jax.Array,
             candidates: Sequence[tuple[jax.Array, jax.Array]]) -> tuple[jax.Array, jax.Array]:
    """Judge prompts (tokens, mask), [rows, J] each, from prompts [rows, P] and k candidates
    given as (completion tokens, completion_mask) [rows, N_i] (a Rollout's layout)."""
    segments = [(prompt_tokens, problem_mask(prompt_mask, *self.prompt_wrapping))]
    segments += [(tokens, self.candidate_mask(tokens, mask)) for tokens, mask in candidates]
    return assemble_prompt(self.pieces, segments, self.pad_id)

  def logit(self, params: dict, prompt_tokens: jax.Array, prompt_mask: jax.Array,
            candidates: Sequence[tuple[jax.Array, jax.Array]]) -> jax.Array:
    """log P(yes) - log P(no) [rows] of the judge `params` at the end of each prompt
    (differentiable in params: what judge training fits)."""
    tokens, mask = self.prompt(prompt_tokens, prompt_mask, candidates)
    logits = judging.judge_logits(nnx.merge(self.graphdef, params), tokens, mask)
    return judging.yes_no_logit(logits, self.yes_ids, self.no_ids)

  def rubric(self, params: dict, prompt_tokens: jax.Array, prompt_mask: jax.Array,
             candidates: Sequence[tuple[jax.Array, jax.Array]]) -> jax.Array:
    """The expected rubric score [rows] at the end of each prompt (no gradient)."""
    tokens, mask = self.prompt(prompt_tokens, prompt_mask, candidates)
    logits = judging.judge_logits(nnx.merge(self.graphdef, params), tokens, mask)
    return jax.lax.stop_gradient(judging.rubric_score(logits, self.score_ids, self.score_values))

  def probability(self, params: dict, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                  candidates: Sequence[tuple[jax.Array, jax.Array]]) -> jax.Array:
    """P(yes) / (P(yes) + P(no)) [rows] of the judge `params` at the end of each prompt
    (no gradient: a reward or a measurement)."""
    logit = self.logit(params, prompt_tokens, prompt_mask, candidates)
    return jax.nn.sigmoid(jax.lax.stop_gradient(logit))


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


def build_template_judge(template: judging.JudgeTemplate | judging.RubricTemplate,
                         fields: tuple[str, ...], what: str, *, graphdef: nnx.GraphDef,
                         encoder: TextEncoder, stop_token_ids: Sequence[int], pad_id: int
                         ) -> TemplateJudge:
  """A TemplateJudge of `template` (yes/no, or a rubric's scores), whose text holds `fields`
  ("problem" first) once each in order; its text is encoded here, once. `what` (e.g.
  "rl.rewards.self_judge.template") names the config field in errors."""
  pieces = wrapped_text_pieces(encoder, template.text, fields, what)
  head, tail = wrapped_text_pieces(encoder, "{problem}", ("problem",), "the prompt format")
  bos = encoder.tokenizer.bos_id
  dropped = tuple(dict.fromkeys([*stop_token_ids, pad_id] + ([] if bos is None else [bos])))
  common = dict(graphdef=graphdef, pieces=pieces, prompt_wrapping=(len(head), len(tail)),
                dropped_ids=dropped, pad_id=pad_id)
  if isinstance(template, judging.RubricTemplate):
    return TemplateJudge(yes_ids=(), no_ids=(), score_ids=template.score_ids(encoder),
                         score_values=template.values, **common)
  yes_ids, no_ids = template.answer_ids(encoder)
  return TemplateJudge(yes_ids=yes_ids, no_ids=no_ids, **common)


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
           "self_judge_template", "left_pad", "problem_mask", "assemble_prompt", "judge_prompt", "wrapped_text_pieces",
           "VerifierReward", "LengthReward", "FormatReward", "TemplateJudge", "SelfJudgeReward",
           "SelfCertaintyReward", "MajorityReward", "RubricReward", "PairwiseReward",
           "ordered_pairs",
           "build_template_judge", "build_source"]
