"""Judge prompts assembled in the graph, and the judge that reads them (`TemplateJudge`).

The judge prompt cannot be rendered as text inside jit, so it is assembled from token
pieces: the template's fixed text around {problem} and {candidate} (or {first} and {second}),
encoded once by the run's tokenizer (with its <bos> or chat template, as prompts are), around
the sampled prompt's problem tokens (without <bos>/chat wrapping) and the completions (without
their stop token and any sampled pad/<bos> ids, which text decoding drops), then left-padded.
With a char or byte tokenizer this equals encoding the rendered text (tested); with BPE the
pieces are encoded apart, so merges across a piece boundary can differ from whole-text encoding
(end template pieces on whitespace or punctuation). Used by the RL reward sources
(pipelines/rl_rewards.py), judge training, the self-generated preference pipeline and the judge
measurement (selfimprove/judge_eval.py).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from selfimprove import judging
from selfimprove.encoding import TextEncoder

_FIELD = re.compile(r"\{(\w+)\}")   # a template field, as judging.JudgeTemplate reads them


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


__all__ = ["left_pad", "problem_mask", "assemble_prompt", "judge_prompt", "wrapped_text_pieces",
           "TemplateJudge", "build_template_judge"]
