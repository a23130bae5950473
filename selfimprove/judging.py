"""Self-judges: the model scores its own outputs from its token probabilities.

Pure, batched functions of arrays for the compiled step (static shapes; token ids
are static tuples): P(True) (`yes_no_probability`, Kadavath et al. 2022), Self-J's
expected rubric score (`rubric_score`), order-averaged pairwise preferences, and
self-certainty (Kang et al. 2025) with best-of-N / Borda selection. Judge prompts
are text (`JudgeTemplate`, `RubricTemplate`) encoded by the run's tokenizer.
Host-side summaries against verifiers (AUROC, ECE, ...): `judge_metrics.py`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import jax
import jax.numpy as jnp

from selfimprove.encoding import TextEncoder
from selfimprove.models.transformer import Transformer

# ---- Judge prompts (text) ------------------------------------------------------

_FIELD = re.compile(r"\{(\w+)\}")


def _render(kind: str, text: str, values: dict[str, str]) -> str:
  """Fills every {name} of `text` in one pass (values may hold braces); all fields needed."""
  fields = set(_FIELD.findall(text))
  if fields != set(values):
    raise ValueError(f"{kind} text has fields {sorted(fields)} but was given {sorted(values)}.")
  return _FIELD.sub(lambda m: values[m.group(1)], text)


def _as_options(kind: str, name: str, options) -> tuple[str, ...]:
  options = (options,) if isinstance(options, str) else tuple(options)
  if not options or not all(options):
    raise ValueError(f"{kind}.{name} needs at least one non-empty option text, got {options!r}.")
  return options


def option_ids(encoder: TextEncoder, options: Sequence[str], what: str) -> tuple[int, ...]:
  """The first token id of each option's text (the token the judge's answer starts with).

  Write options as they are tokenized right after the prompt (e.g. " yes" with
  its leading space for BPE vocabularies when the prompt ends without a space).
  """
  return tuple(dict.fromkeys(encoder.text_ids(option, what)[0] for option in options))


@dataclasses.dataclass(frozen=True)
class JudgeTemplate:
  """A yes/no judge prompt (P(True), or pairwise) as text, and the answers read at its end.

  text: every {name} in it is a field filled by `render`: {problem} and
    {candidate} for P(True); {problem}, {first}, {second} for a pairwise judge
    whose `yes` means "the first is better".
  yes, no: answer texts (a str, or several whose probabilities are summed).
  """

  text: str
  yes: tuple[str, ...]
  no: tuple[str, ...]

  def __post_init__(self):
    object.__setattr__(self, "yes", _as_options("JudgeTemplate", "yes", self.yes))
    object.__setattr__(self, "no", _as_options("JudgeTemplate", "no", self.no))

  def render(self, **fields: str) -> str:
    return _render("JudgeTemplate", self.text, fields)

  def answer_ids(self, encoder: TextEncoder) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(yes_ids, no_ids) for `yes_no_probability`; no token may start both answers."""
    yes = option_ids(encoder, self.yes, "JudgeTemplate.yes")
    no = option_ids(encoder, self.no, "JudgeTemplate.no")
    if set(yes) & set(no):
      raise ValueError(f"JudgeTemplate: yes {self.yes!r} and no {self.no!r} both start with "
                       f"token ids {sorted(set(yes) & set(no))}; choose answers whose first "
                       "tokens differ.")
    return yes, no


@dataclasses.dataclass(frozen=True)
class RubricTemplate:
  """A pointwise rubric prompt: `text` with fields (as JudgeTemplate), one answer text per score.

  `values` are the scores the texts stand for (default 1..S).
  """

  text: str
  scores: tuple[str, ...]
  values: tuple[float, ...] = ()

  def __post_init__(self):
    if isinstance(self.scores, str) or len(self.scores) < 2 or not all(self.scores):
      raise ValueError(f"RubricTemplate.scores must be a tuple of two or more non-empty texts "
                       f"(e.g. tuple('12345')), got {self.scores!r}.")
    object.__setattr__(self, "scores", tuple(self.scores))
    values = tuple(float(v) for v in self.values or range(1, len(self.scores) + 1))
    if len(values) != len(self.scores):
      raise ValueError(f"RubricTemplate.values has {len(values)} entries for "
                       f"{len(self.scores)} scores.")
    object.__setattr__(self, "values", values)

  def render(self, **fields: str) -> str:
    return _render("RubricTemplate", self.text, fields)

  def score_ids(self, encoder: TextEncoder) -> tuple[int, ...]:
    """One token id per score, for `rubric_score`; they must all differ."""
    ids = tuple(encoder.text_ids(score, "RubricTemplate.scores")[0] for score in self.scores)
    if len(set(ids)) != len(ids):
      raise ValueError(f"RubricTemplate.scores {self.scores!r} start with repeated token "
                       f"ids {ids}.")
    return ids


# Kadavath et al.'s self-evaluation format; the answer letter follows "(".
P_TRUE_TEMPLATE = JudgeTemplate(
    text=("Question: {problem}\nProposed Answer: {candidate}\nIs the proposed answer:\n"
          " (A) True\n (B) False\nThe proposed answer is: ("),
    yes="A", no="B")


# ---- Judges from next-token logits ----------------------------------------------

def _group_logsumexp(logits: jax.Array, ids: int | Sequence[int]) -> jax.Array:
  """log sum_{v in ids} exp(logits[:, v]): [batch, vocab] -> [batch] (unnormalised)."""
  ids = jnp.asarray((ids,) if isinstance(ids, int) else tuple(ids), jnp.int32)
  return jax.nn.logsumexp(logits[:, ids], axis=-1)


def yes_no_logit(logits_at_answer: jax.Array, yes_ids: Sequence[int],
                 no_ids: Sequence[int]) -> jax.Array:
  """log P(yes) - log P(no) at the answer position: [batch, vocab] -> [batch] float32.

  The logit of P(True) (its sigmoid is `yes_no_probability`), the quantity a binary
  cross-entropy trains (pipelines/judge_training.py).
  """
  logits = logits_at_answer.astype(jnp.float32)
  return _group_logsumexp(logits, yes_ids) - _group_logsumexp(logits, no_ids)


def yes_no_probability(logits_at_answer: jax.Array, yes_ids: Sequence[int],
                       no_ids: Sequence[int]) -> jax.Array:
  """P(True) = P(yes) / (P(yes) + P(no)) at the answer position: [batch, vocab] -> [batch].

  P(yes) sums the probabilities of `yes_ids` (e.g. "Yes" and " yes"), P(no) of
  `no_ids`; the rest of the vocabulary is ignored (Kadavath et al.'s options
  normalised against each other). NaN where both have probability 0.
  """
  return jax.nn.sigmoid(yes_no_logit(logits_at_answer, yes_ids, no_ids))


def rubric_score(logits_at_answer: jax.Array, score_ids: Sequence[int | Sequence[int]],
                 score_values: Sequence[float] | None = None) -> jax.Array:
  """Self-J's expected score: sum_k s_k p_k / sum_k p_k. [batch, vocab] -> [batch] float32.

  `score_ids[k]` is the token id (or ids, summed) of score k, worth
  `score_values[k]` (default k + 1, i.e. scores 1..S); p_k is the model's
  next-token probability of it. Not a sampled string: the mean of the model's
  distribution restricted (renormalised) to the score tokens.
  """
  values = (jnp.arange(1, len(score_ids) + 1, dtype=jnp.float32) if score_values is None
            else jnp.asarray(score_values, jnp.float32))
  logits = logits_at_answer.astype(jnp.float32)
  score_logits = jnp.stack([_group_logsumexp(logits, ids) for ids in score_ids], axis=-1)
  return jax.nn.softmax(score_logits, axis=-1) @ values


def pairwise_preference(p_a_first: jax.Array, p_b_first: jax.Array) -> jax.Array:
  """P(A better than B) over both orders: 0.5 (p(A|A,B) + 1 - p(B|B,A)). [batch] x2 -> [batch].

  p_a_first: P(first is better) with A shown first; p_b_first: the same with B
  shown first. Averaging cancels the judge's position bias, and
  pairwise_preference(x, y) = 1 - pairwise_preference(y, x).
  """
  return 0.5 * (1.0 + (p_a_first - p_b_first))


def token_self_certainty(logits: jax.Array) -> jax.Array:
  """KL(U_V || p) = -(1/V) sum_j log(V p_j) per position: [..., vocab] -> [...] float32.

  Computed as logsumexp(z) - mean(z) - log V, never materialising p. 0 for a
  uniform p, growing without bound toward a one-hot p; V is the logits' last
  dimension (the model's full vocabulary, padded entries included).
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  return jax.nn.logsumexp(logits, axis=-1) - jnp.mean(logits, axis=-1) - math.log(vocab)


def self_certainty(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Self-certainty (Kang et al. 2025) of each completion: [B, seq, vocab], [B, seq] -> [B].

  SC(y|x) = (1/n) sum_{i=1}^n KL(U_V || p(.|x, y_<i)) over the n positions where
  `mask` is True (logits[:, i] = the distribution the completion's token i was
  drawn from; see `completion_logits`). Higher is more confident; 0 for a row
  without tokens.
  """
  mask = mask.astype(jnp.float32)
  total = jnp.sum(token_self_certainty(logits) * mask, axis=-1)
  return total / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


# ---- Best-of-N selection ------------------------------------------------------------
# Scores of grouped samples are [num_prompts, n]: reshape a rollout's [num_prompts * n]
# rows (those of one prompt contiguous) with .reshape(-1, n).

def best_of_n(scores: jax.Array) -> jax.Array:
  """Index of the highest-scoring candidate per prompt (first on ties): [P, N] -> [P] int32."""
  return jnp.argmax(scores, axis=-1).astype(jnp.int32)


def take_selected(values: jax.Array, index: jax.Array) -> jax.Array:
  """values[p, index[p]]: [P, N, ...], [P] -> [P, ...] (e.g. the selected candidate's reward)."""
  return jnp.take_along_axis(values, index.reshape((-1,) + (1,) * (values.ndim - 1)),
                             axis=1)[:, 0]


def borda_vote(certainty: jax.Array, answers: jax.Array, answer_valid: jax.Array,
               power: float = 0.5) -> jax.Array:
  """Self-certainty Borda voting (Kang et al. 2025, voting_from_list.py): [P, N] -> [P] int32.

  Rank the N candidates by certainty (r = 1 the most certain; ties by index),
  give each the vote v(r) = (N - r + 1)^power, sum the votes of candidates with
  the same final answer, and return a candidate of the answer with the largest
  total: its first candidate (lowest index), as in the reference code, which
  also breaks ties between answers by first candidate. Unparsed answers
  (`answer_valid` False) get no vote; a prompt without any returns 0.
  power = 0 is majority voting.

  Args:
    certainty: [P, N] float, e.g. `self_certainty` of each candidate.
    answers: [P, N, ...] the extracted final answers (an id, or padded tokens
      with trailing axes); equal answers are equal along every trailing axis.
    answer_valid: [P, N] bool.
  """
  n = certainty.shape[1]
  rank = jnp.argsort(jnp.argsort(-certainty, axis=1), axis=1)           # [P, N], 0 = most certain
  valid = answer_valid.astype(bool)
  votes = jnp.where(valid, (n - rank).astype(jnp.float32) ** power, 0.0)
  equal = answers[:, :, None] == answers[:, None, :]                    # [P, N, N, ...]
  same = jnp.all(equal.reshape(equal.shape[:3] + (-1,)), axis=-1) & valid[:, :, None]
  owner = jnp.argmax(same, axis=1)                    # [P, N]: first candidate with i's answer
  totals = jnp.sum(jax.nn.one_hot(owner, n) * votes[:, :, None], axis=1)   # [P, N]
  return jnp.argmax(totals, axis=-1).astype(jnp.int32)


# ---- Running the model --------------------------------------------------------------

def _last_real(mask: jax.Array) -> jax.Array:
  """[batch] column of each row's last True (rows need at least one)."""
  return mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1].astype(bool), axis=1)


def judge_logits(model: Transformer, prompt_tokens: jax.Array, prompt_mask: jax.Array
                 ) -> jax.Array:
  """Next-token logits after each judge prompt's last real token: [B, P] x2 -> [B, vocab] float32.

  Prompts are padded anywhere (left-padded from the encoders); every row needs
  a real token. Feed the result to `yes_no_probability` or `rubric_score`.
  """
  logits, _ = model(prompt_tokens, prompt_mask)
  return logits[jnp.arange(prompt_tokens.shape[0]), _last_real(prompt_mask)]


def completion_logits(model: Transformer, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                      completion_tokens: jax.Array, completion_mask: jax.Array) -> jax.Array:
  """Logits of the distributions each completion token was drawn from: -> [B, C, vocab] float32.

  One forward pass over prompt + completion ([B, P] and [B, C] tokens and bool
  masks; completions right-padded as `sampling.Rollout` holds them). Position 0
  is the prediction after the prompt's last real token, position t > 0 the one
  after completion token t - 1. Memory is [B, P + C, vocab].
  """
  tokens = jnp.concatenate([prompt_tokens, completion_tokens], axis=1)
  mask = jnp.concatenate([prompt_mask, completion_mask], axis=1).astype(bool)
  logits, _ = model(tokens, mask)
  prompt_len, completion_len = prompt_tokens.shape[1], completion_tokens.shape[1]
  first = logits[jnp.arange(tokens.shape[0]), _last_real(prompt_mask)]
  rest = logits[:, prompt_len:prompt_len + completion_len - 1]
  return jnp.concatenate([first[:, None], rest], axis=1)

