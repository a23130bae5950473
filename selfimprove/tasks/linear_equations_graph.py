"""In-graph (jnp) checker for linear-equation proofs: the rules of `linear_equations`, on token ids.

Everything here is a pure function of one row's arrays (vmap it over rows):
static shapes, int32 numbers, no Python control flow on values. The text
format and the rules are documented in `selfimprove.tasks.linear_equations`;
`check_proof` / `is_well_formed` there are the host twins of
`check_proof_ids` / `well_formed_ids` here, and tests hold them equal on
thousands of random proofs and statements.

How a row is read (the way `selfimprove.verifiers.HostVerifier` decodes a
completion): its text is the masked-in tokens before the first False mask
entry or stop id (<eos>), with the ids the tokenizer's `decode` skips
(pad, bos) dropped. Each id maps to a character class through an `IdReader`.

Parsing is vectorised over character positions: local rules between each
character and its neighbours check the grammar, cumulative sums give every
character its line, side and term index, and a scatter writes each term's
(coefficient, is-x) into fixed slots [lines, 2 sides, max_terms]. A step is
legal if it equals one of the candidate rewrites of the previous line (every
move position, every combine pair), compared slot by slot.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from selfimprove.tokenizers import ByteTokenizer, CharTokenizer, Tokenizer

ALPHABET = "0123456789x+-=;|"
# Character classes: a digit's class is its value; then the alphabet's other characters.
X, PLUS, MINUS, EQUALS, SEMI, BAR = range(10, 16)
OTHER = 16   # a character outside the alphabet: the text is invalid
END = 17     # past the end of the text
SKIP = -1    # an id the tokenizer's decode drops (pad, bos)


@dataclasses.dataclass(frozen=True)
class Limits:
  """Static bounds the checkers share (built by `LinearEquationsConfig.limits`).

  Attributes:
    max_terms: terms per side of any line (a legal step never adds terms), and
      the most terms of a statement.
    max_terms_per_side: most written terms per side of a statement ("0" is one).
    max_coefficient: largest |coefficient| of a statement.
    max_solution: largest |x| of a statement's solution.
    number_bound: largest number a proof may write (max_terms * max_coefficient).
    max_lines: most steps of a proof (max_proof_steps).
    statement_len: most characters of a statement.
    proof_len: most characters of a proof.
  """

  max_terms: int
  max_terms_per_side: int
  max_coefficient: int
  max_solution: int
  number_bound: int
  max_lines: int
  statement_len: int
  proof_len: int


class StatementChecks(NamedTuple):
  """A proof domain's in-graph checks, statements and proofs in the run's ids (one row each)."""

  well_formed: Callable[[jax.Array, jax.Array], jax.Array]           # (ids, mask) -> bool []
  check_proof: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]  # -> bool []
  difficulty: Callable[[jax.Array, jax.Array], jax.Array]            # (ids, mask) -> int32 []


class IdReader(NamedTuple):
  """How a tokenizer's ids read as characters: classes int32 [vocab] and the stop (eos) id."""

  classes: np.ndarray
  stop_id: int


def id_reader(tokenizer: Tokenizer) -> IdReader | None:
  """The reader for a char or byte tokenizer (one token per character), else None."""
  classes = np.full(tokenizer.vocab_size, SKIP, np.int32)
  if isinstance(tokenizer, CharTokenizer):
    if not set(ALPHABET) <= set(tokenizer.alphabet):
      return None
    chars = {i + 3: c for i, c in enumerate(tokenizer.alphabet)}
  elif isinstance(tokenizer, ByteTokenizer):
    # Bytes >= 128 never decode to an alphabet character (UTF-8): OTHER either way.
    chars = {b + 3: chr(b) if b < 128 else "\0" for b in range(256)}
  else:
    return None
  for token_id, char in chars.items():
    classes[token_id] = ALPHABET.index(char) if char in ALPHABET else OTHER
  return IdReader(classes, int(tokenizer.eos_id))


def _read(ids: jax.Array, mask: jax.Array, reader: IdReader) -> tuple[jax.Array, jax.Array]:
  """ids, mask [n] -> (character classes int32 [n], END after the text; text length int32 [])."""
  ids = jnp.asarray(ids).astype(jnp.int32)
  n = ids.shape[0]
  table = jnp.asarray(reader.classes)
  known = (ids >= 0) & (ids < table.shape[0])
  classes = jnp.where(known, table[jnp.clip(ids, 0, table.shape[0] - 1)], SKIP)
  alive = jnp.cumprod((jnp.asarray(mask).astype(bool) & (ids != reader.stop_id)).astype(jnp.int32))
  keep = (alive > 0) & (classes != SKIP)
  target = jnp.where(keep, jnp.cumsum(keep) - 1, n)
  text = jnp.full((n,), END, jnp.int32).at[target].set(classes, mode="drop")
  return text, jnp.sum(keep, dtype=jnp.int32)


class Lines(NamedTuple):
  """Parsed lines: each side's terms in slots, padding slots (0, False)."""

  coef: jax.Array       # int32 [lines, 2, max_terms]
  is_x: jax.Array       # bool  [lines, 2, max_terms]
  count: jax.Array      # int32 [lines, 2]  terms per side ("0" has none)
  bare: jax.Array       # bool  [lines]     the line is "x=..." (bare x on the left)
  num_lines: jax.Array  # int32 []
  ok: jax.Array         # bool  []          the text follows the grammar and the bounds


def _shift(x: jax.Array, by: int, fill: int) -> jax.Array:
  """x[p - by] (by > 0) or x[p + |by|] (by < 0), `fill` where that is outside."""
  if by == 0:
    return x
  pad = jnp.full((abs(by),), fill, x.dtype)
  return jnp.concatenate([pad, x[:-by]]) if by > 0 else jnp.concatenate([x[-by:], pad])


def _parse(text: jax.Array, length: jax.Array, max_lines: int, limits: Limits) -> Lines:
  """Character classes [n] -> `Lines`; the grammar is `linear_equations`' regular expressions."""
  n, k = text.shape[0], limits.max_terms
  pos = jnp.arange(n)
  in_text = pos < length
  prev, nxt = _shift(text, 1, SEMI), _shift(text, -1, END)   # the text starts like a new line
  digit, prev_digit, next_digit = text <= 9, prev <= 9, nxt <= 9
  after_term = prev_digit | (prev == X)
  side_start = (prev == SEMI) | (prev == EQUALS)
  number_start = digit & ~prev_digit
  next_nonzero_digit = next_digit & (nxt != 0)
  ends_term = (nxt == PLUS) | (nxt == MINUS) | (nxt == EQUALS) | (nxt == SEMI) | (nxt == END)
  char_ok = jnp.select(
      [digit, text == X, text == PLUS, text == MINUS, text == EQUALS, text == SEMI],
      [~(number_start & (text == 0)) |      # a number starting with 0 is a whole side "0"
       (side_start & ((nxt == EQUALS) | (nxt == SEMI) | (nxt == END))),
       jnp.where(prev_digit, ends_term, (prev == SEMI) & (nxt == EQUALS)),   # or the bare "x="
       after_term & next_nonzero_digit,
       (after_term | side_start) & next_nonzero_digit,
       after_term & (next_digit | (nxt == MINUS)),
       after_term & (next_digit | (nxt == MINUS) | (nxt == X))],
      False)
  # Numbers: at most as many digits as number_bound, read at their last digit.
  max_digits = len(str(limits.number_bound))
  run = pos - jax.lax.cummax(jnp.where(digit, -1, pos))     # digits in the run ending here
  value = sum(jnp.where(run > j, _shift(jnp.where(digit, text, 0), j, 0) * 10**j, 0)
              for j in range(max_digits))
  number_end = in_text & digit & ~next_digit
  numbers_ok = ~jnp.any(in_text & (run > max_digits)) & ~jnp.any(
      number_end & (value > limits.number_bound))
  sign_at = pos - run
  negative = (sign_at >= 0) & (text[jnp.clip(sign_at, 0, n - 1)] == MINUS)
  coef = jnp.where(negative, -value, value).astype(jnp.int32)
  is_term = number_end & (value != 0)
  # Where each character sits: line, side (count of '=' since the line began), term index.
  semi, equals = (text == SEMI).astype(jnp.int32), (text == EQUALS).astype(jnp.int32)
  line = jnp.cumsum(semi) - semi
  equals_before = jnp.cumsum(equals) - equals
  side = equals_before - jax.lax.cummax(jnp.where(prev == SEMI, equals_before, 0))
  term_start = (number_start & (text != 0)).astype(jnp.int32)
  terms_before = jnp.cumsum(term_start) - term_start
  term = terms_before + term_start - 1 - jax.lax.cummax(jnp.where(side_start, terms_before, 0))
  num_lines = 1 + jnp.sum(semi, dtype=jnp.int32)
  equals_per_line = jnp.zeros(max_lines, jnp.int32).at[line].add(equals, mode="drop")
  one_equals = jnp.all((jnp.arange(max_lines) >= num_lines) | (equals_per_line == 1))
  slot_line = jnp.where(is_term & (term < k) & (side <= 1), line, max_lines)   # else dropped
  slot = (slot_line, jnp.clip(side, 0, 1), jnp.clip(term, 0, k - 1))
  coefs = jnp.zeros((max_lines, 2, k), jnp.int32).at[slot].set(coef, mode="drop")
  is_x = jnp.zeros((max_lines, 2, k), bool).at[slot].set(nxt == X, mode="drop")
  count = jnp.zeros((max_lines, 2), jnp.int32).at[slot[:2]].add(1, mode="drop")
  bare_x = in_text & (text == X) & ~prev_digit
  bare = jnp.zeros(max_lines, bool).at[jnp.where(bare_x, line, max_lines)].set(True, mode="drop")
  ok = ((length >= 1) & jnp.all(char_ok | ~in_text) & numbers_ok & one_equals
        & ~jnp.any(is_term & (term >= k)) & (num_lines <= max_lines))
  return Lines(coefs, is_x, count, bare, num_lines, ok)


def _delete(coef: jax.Array, is_x: jax.Array, p) -> tuple[jax.Array, jax.Array]:
  """One side's slots [k] with the term at p removed (later terms move up one)."""
  k = coef.shape[0]
  source = jnp.arange(k) + (jnp.arange(k) >= p)
  inside = source < k
  source = jnp.clip(source, 0, k - 1)
  return jnp.where(inside, coef[source], 0), inside & is_x[source]


def _same(coef_a, is_x_a, count_a, coef_b, is_x_b, count_b) -> jax.Array:
  return (count_a == count_b) & jnp.all(coef_a == coef_b) & jnp.all(is_x_a == is_x_b)


def _legal_rewrite(coef_a, is_x_a, count_a, coef_b, is_x_b, count_b) -> jax.Array:
  """Whether line b ([2, k] slots, [2] counts) is line a after exactly one move or combine."""
  k = coef_a.shape[-1]
  positions = jnp.arange(k)
  legal = jnp.asarray(False)
  for s in (0, 1):
    o = 1 - s

    def move(p):   # R1: the term at p leaves side s; its negation is appended to side o
      left_c, left_x = _delete(coef_a[s], is_x_a[s], p)
      new_c = jnp.where(positions == count_a[o], -coef_a[s, p], coef_a[o])
      new_x = jnp.where(positions == count_a[o], is_x_a[s, p], is_x_a[o])
      return ((p < count_a[s]) & (count_a[o] < k)
              & _same(left_c, left_x, count_a[s] - 1, coef_b[s], is_x_b[s], count_b[s])
              & _same(new_c, new_x, count_a[o] + 1, coef_b[o], is_x_b[o], count_b[o]))

    def combine(i, j):   # R2: term i of side s becomes term i + term j; j is deleted (i too if 0)
      total = coef_a[s, i] + coef_a[s, j]
      kept_c, kept_x = _delete(coef_a[s], is_x_a[s], j)
      kept_c = jnp.where(positions == i, total, kept_c)
      zero_c, zero_x = _delete(kept_c, kept_x, i)
      new_c, new_x = jnp.where(total == 0, zero_c, kept_c), jnp.where(total == 0, zero_x, kept_x)
      new_count = count_a[s] - 1 - (total == 0)
      return ((i < j) & (j < count_a[s]) & (is_x_a[s, i] == is_x_a[s, j])
              & _same(new_c, new_x, new_count, coef_b[s], is_x_b[s], count_b[s])
              & _same(coef_a[o], is_x_a[o], count_a[o], coef_b[o], is_x_b[o], count_b[o]))

    pairs_i, pairs_j = (x.reshape(-1) for x in jnp.meshgrid(positions, positions, indexing="ij"))
    legal = (legal | jnp.any(jax.vmap(move)(positions))
             | jnp.any(jax.vmap(combine)(pairs_i, pairs_j)))
  return legal


def _statement_ok(lines: Lines, length: jax.Array, limits: Limits) -> jax.Array:
  """`is_well_formed`'s rules on a parsed one-line text."""
  coef, is_x, count = lines.coef[0], lines.is_x[0], lines.count[0]
  written = jnp.maximum(count, 1)                       # "0" is written as one term
  x_diff = jnp.sum(jnp.where(is_x[0], coef[0], 0)) - jnp.sum(jnp.where(is_x[1], coef[1], 0))
  constants = jnp.sum(jnp.where(is_x[1], 0, coef[1])) - jnp.sum(jnp.where(is_x[0], 0, coef[0]))
  divisor = jnp.where(x_diff == 0, 1, x_diff)
  solution = constants // divisor
  trivial = (count[0] == 1) & is_x[0, 0] & (count[1] <= 1) & ~is_x[1, 0]
  return (lines.ok & (lines.num_lines == 1) & ~lines.bare[0] & (length <= limits.statement_len)
          & jnp.all(written <= limits.max_terms_per_side) & (jnp.sum(written) <= limits.max_terms)
          & jnp.all(jnp.abs(coef) <= limits.max_coefficient) & (x_diff != 0)
          & (constants % divisor == 0) & (jnp.abs(solution) <= limits.max_solution) & ~trivial)


def well_formed_ids(statement_ids: jax.Array, statement_mask: jax.Array, limits: Limits,
                    reader: IdReader) -> jax.Array:
  """bool []: `is_well_formed` of the text in statement_ids/statement_mask [s] (one row)."""
  text, length = _read(statement_ids, statement_mask, reader)
  return _statement_ok(_parse(text, length, 1, limits), length, limits)


def check_proof_ids(statement_ids: jax.Array, statement_mask: jax.Array, proof_ids: jax.Array,
                    proof_mask: jax.Array, limits: Limits, statement_reader: IdReader,
                    proof_reader: IdReader) -> jax.Array:
  """bool []: `check_proof` on one row: statement [s] and proof [n] ids with their masks.

  The statement must be well formed; every step but the last one legal rewrite
  (R1 move or R2 combine) of the line before it (the statement for step 1); the
  last "x=q" with q = m / k from the line "kx=m" before it (R3).
  """
  statement_text, statement_length = _read(statement_ids, statement_mask, statement_reader)
  statement = _parse(statement_text, statement_length, 1, limits)
  proof_text, proof_length = _read(proof_ids, proof_mask, proof_reader)
  proof = _parse(proof_text, proof_length, limits.max_lines, limits)
  before = lambda x, y: jnp.concatenate([x[:1], y[:-1]])
  coef_a, is_x_a = before(statement.coef, proof.coef), before(statement.is_x, proof.is_x)
  count_a = before(statement.count, proof.count)
  legal = jax.vmap(_legal_rewrite)(coef_a, is_x_a, count_a, proof.coef, proof.is_x, proof.count)
  last = jnp.clip(proof.num_lines - 1, 0, limits.max_lines - 1)
  steps_ok = jnp.all((jnp.arange(limits.max_lines) >= last) | (legal & ~proof.bare))
  # R3 from the line before the last: "kx=m" (m may be the side "0"), k | m, q = m / k.
  k, m = coef_a[last, 0, 0], coef_a[last, 1, 0]
  divisible = ((count_a[last, 0] == 1) & is_x_a[last, 0, 0] & (count_a[last, 1] <= 1)
               & ~is_x_a[last, 1, 0] & (k != 0) & (m % jnp.where(k == 0, 1, k) == 0))
  quotient = m // jnp.where(k == 0, 1, k)
  final_ok = (proof.bare[last] & (proof.count[last, 0] == 0) & (proof.count[last, 1] <= 1)
              & ~proof.is_x[last, 1, 0] & divisible & (proof.coef[last, 1, 0] == quotient))
  return (_statement_ok(statement, statement_length, limits) & proof.ok
          & (proof_length <= limits.proof_len) & steps_ok & final_ok)


def num_terms_ids(statement_ids: jax.Array, statement_mask: jax.Array, reader: IdReader
                  ) -> jax.Array:
  """int32 []: the written terms of a well-formed statement [s] ("0" counts as one), its
  difficulty: 2 + the signs that separate terms (a "+" or "-" not at the start of a side)."""
  text, _ = _read(statement_ids, statement_mask, reader)
  sign = (text == PLUS) | (text == MINUS)
  side_start = _shift(text, 1, EQUALS) == EQUALS
  return 2 + jnp.sum(sign & ~side_start, dtype=jnp.int32)
