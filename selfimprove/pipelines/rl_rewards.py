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
pieces on whitespace or punctuation).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from selfimprove import judging
from selfimprove.encoding import TextEncoder
from selfimprove.sampling import Rollout

# source -> its options beyond "source" and "weight", with their defaults.
OPTIONS: dict[str, dict[str, Any]] = {
    "verifier": {},
    "self_judge": {"template": judging.P_TRUE_TEMPLATE.text, "yes": judging.P_TRUE_TEMPLATE.yes,
                   "no": judging.P_TRUE_TEMPLATE.no, "judge": "policy"},
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


def judge_prompt(pieces: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]],
                 problem_tokens: jax.Array, problem_mask_: jax.Array,
                 candidate_tokens: jax.Array, candidate_mask: jax.Array, pad_id: int
                 ) -> tuple[jax.Array, jax.Array]:
  """prefix + problem + middle + candidate + suffix, left-padded.

  pieces: (prefix, middle, suffix) ids; problem [rows, P], candidate [rows, N] tokens and
  bool masks -> (tokens int32, mask bool), each [rows, |prefix| + P + |middle| + N + |suffix|].
  """
  rows = problem_tokens.shape[0]
  fixed = lambda ids: jnp.broadcast_to(jnp.asarray(ids, jnp.int32).reshape(1, -1), (rows, len(ids)))
  prefix, middle, suffix = (fixed(ids) for ids in pieces)
  tokens = jnp.concatenate([prefix, problem_tokens.astype(jnp.int32), middle,
                            candidate_tokens.astype(jnp.int32), suffix], axis=1)
  mask = jnp.concatenate([jnp.ones(prefix.shape, bool), problem_mask_.astype(bool),
                          jnp.ones(middle.shape, bool), candidate_mask.astype(bool),
                          jnp.ones(suffix.shape, bool)], axis=1)
  return left_pad(tokens, mask, pad_id)


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
class SelfJudgeReward:
  """P(True) [rows] of the judge prompt around each (problem, completion)."""

  graphdef: nnx.GraphDef
  pieces: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]   # prefix, middle, suffix
  prompt_wrapping: tuple[int, int]       # (head, tail) prompt tokens around the problem text
  yes_ids: tuple[int, ...]
  no_ids: tuple[int, ...]
  dropped_ids: tuple[int, ...]           # completion ids left out: stop, pad, <bos>
  pad_id: int
  judge: str = "policy"

  def prompt(self, rollout: Rollout) -> tuple[jax.Array, jax.Array]:
    """The judge prompts (tokens, mask), [rows, J] each, of a rollout's rows."""
    candidate = rollout.completion_mask & ~jnp.isin(rollout.tokens,
                                                    jnp.asarray(self.dropped_ids, jnp.int32))
    return judge_prompt(self.pieces, rollout.prompt_tokens,
                        problem_mask(rollout.prompt_mask, *self.prompt_wrapping),
                        rollout.tokens, candidate, self.pad_id)

  def __call__(self, inputs: RewardInputs) -> jax.Array:
    params = inputs.params if self.judge == "policy" else inputs.ref_params
    tokens, mask = self.prompt(inputs.rollout)
    logits = judging.judge_logits(nnx.merge(self.graphdef, params), tokens, mask)
    return jax.lax.stop_gradient(judging.yes_no_probability(logits, self.yes_ids, self.no_ids))


def build_source(spec: RewardSpec, *, graphdef: nnx.GraphDef, encoder: TextEncoder,
                 verifier: Any, max_new_tokens: int, stop_token_ids: tuple[int, ...],
                 pad_id: int):
  """The callable of one checked spec (template text is encoded here, once)."""
  if spec.source == "verifier":
    return VerifierReward(verifier)
  if spec.source == "length":
    return LengthReward(max_new_tokens)
  if spec.source == "format":
    return FormatReward(tuple(stop_token_ids))
  options, where = dict(spec.options), f"rl.rewards.{spec.name}"
  template = judging.JudgeTemplate(options["template"], yes=options["yes"], no=options["no"])
  pieces = wrapped_text_pieces(encoder, template.text, ("problem", "candidate"),
                               f"{where}.template")
  head, tail = wrapped_text_pieces(encoder, "{problem}", ("problem",), "the prompt format")
  yes_ids, no_ids = template.answer_ids(encoder)
  bos = encoder.tokenizer.bos_id
  dropped = tuple(dict.fromkeys([*stop_token_ids, pad_id] + ([] if bos is None else [bos])))
  return SelfJudgeReward(graphdef, pieces, (len(head), len(tail)), yes_ids, no_ids, dropped,
                         pad_id, options["judge"])


__all__ = ["OPTIONS", "SOURCES", "JUDGES", "RewardSpec", "RewardInputs", "parse_rewards",
           "left_pad", "problem_mask", "judge_prompt", "wrapped_text_pieces", "VerifierReward",
           "LengthReward", "FormatReward", "SelfJudgeReward", "build_source"]
