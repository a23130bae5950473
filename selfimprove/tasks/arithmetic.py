"""Integer arithmetic (`37+85=` -> `122`): prompts, a held-out split and an exact in-graph verifier.

The problem space is every (a, op, b) with operands of `min_digits`..`max_digits`
digits and op in `operations`. Which problems are held out for evaluation is
decided by a uint32 hash of (a, op, b, split_seed) compared with
`eval_fraction`, so the split needs no table: `examples` (numpy, host) and
`generate` (jnp, inside jit) call the same `is_eval_problem` and agree exactly.
The hash uses the operation's index in the canonical "+-*" (not its index in
`operations`), so a problem's split never depends on which other operations or
digit counts a config enables: "12+34" is held out in every config or in none
with the same `eval_fraction` and `split_seed`.

`generate` samples uniformly over all training problems (operands uniform over
the operand range, which for mixed digit counts means mostly long operands).

As a `selfimprove.tasks.base.Task`: text examples, an int32 `target` per row,
an in-graph verifier for any character-level tokenizer of the run (char or
byte: one token per digit) and a host verifier (`leading_integer_match`) for
the rest (e.g. a BPE tokenizer that merges digits). Both read the completion's
leading integer by the same rules.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from selfimprove.tasks.integer_answers import (MAX_ANSWER_DIGITS, POW10, digit_table,
                                              leading_integer, leading_integer_match,
                                              parse_leading_integer, verify_leading_integer)
from selfimprove.tokenizers import ByteTokenizer, CharTokenizer, Tokenizer, encode_batch

CANONICAL_OPERATIONS = "+-*"
ALPHABET = "0123456789+-*="
# `examples` enumerates the problem space on the host; beyond these sizes use `generate`.
MAX_ENUMERATED_PROBLEMS = 100_000_000
MAX_EXAMPLES_PER_SPLIT = 1_000_000


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
  """Which problems exist and which are held out.

  Attributes:
    min_digits: fewest digits of an operand (1 allows 0..9; otherwise no leading zeros).
    max_digits: most digits of an operand.
    operations: a non-empty subset of "+-*", e.g. "+" or "+-*".
    eval_fraction: share of all problems held out for evaluation, in (0, 1).
    split_seed: selects which problems are held out.
    max_examples_per_split: 0 = every problem of a split (at most 1,000,000);
      otherwise a split with more problems is a uniform sample of this many
      distinct ones (seeded by split_seed; the held-out rule is unchanged, so
      the splits stay disjoint): 4-digit operands or several operations.
  """

  min_digits: int = 2
  max_digits: int = 2
  operations: str = "+"
  eval_fraction: float = 0.1
  split_seed: int = 0
  max_examples_per_split: int = 0

  def __post_init__(self):
    if not isinstance(self.min_digits, int) or self.min_digits < 1:
      raise ValueError(
          f"ArithmeticConfig.min_digits must be an integer >= 1, got {self.min_digits!r}.")
    if not isinstance(self.max_digits, int) or self.max_digits < self.min_digits:
      raise ValueError(
          f"ArithmeticConfig.max_digits must be an integer >= min_digits={self.min_digits}, "
          f"got {self.max_digits!r}.")
    if not self.operations:
      raise ValueError("ArithmeticConfig.operations must be a non-empty subset of '+-*', got ''.")
    for char in self.operations:
      if char not in CANONICAL_OPERATIONS:
        raise ValueError(
            f"ArithmeticConfig.operations={self.operations!r} contains {char!r}; "
            f"allowed operations are '+', '-' and '*'.")
    if len(set(self.operations)) != len(self.operations):
      raise ValueError(f"ArithmeticConfig.operations={self.operations!r} repeats an operation.")
    if not 0.0 < self.eval_fraction < 1.0:
      raise ValueError(
          f"ArithmeticConfig.eval_fraction must be in (0, 1), got {self.eval_fraction!r}.")
    if not isinstance(self.max_examples_per_split, int) or not (
        0 <= self.max_examples_per_split <= MAX_EXAMPLES_PER_SPLIT):
      raise ValueError(f"ArithmeticConfig.max_examples_per_split must be an integer in "
                       f"[0, {MAX_EXAMPLES_PER_SPLIT}], got {self.max_examples_per_split!r}.")
    if not isinstance(self.split_seed, int):
      raise ValueError(f"ArithmeticConfig.split_seed must be an integer, got {self.split_seed!r}.")
    for op in self.operations:
      longest = max(len(str(abs(v))) for v in _extreme_answers(*self.operand_range, op))
      if longest > MAX_ANSWER_DIGITS:
        raise ValueError(
            f"ArithmeticConfig.max_digits={self.max_digits} with operation {op!r} gives answers "
            f"of {longest} digits; the verifier reads at most {MAX_ANSWER_DIGITS} (int32). "
            f"Lower max_digits.")

  @property
  def operand_range(self) -> tuple[int, int]:
    """(lowest, highest) operand, both inclusive."""
    low = 0 if self.min_digits == 1 else 10**(self.min_digits - 1)
    return low, 10**self.max_digits - 1


def _extreme_answers(low: int, high: int, op: str) -> list[int]:
  """Answers of largest magnitude (and most negative) for operands in [low, high]."""
  if op == "+":
    return [low + low, high + high]
  if op == "-":
    return [low - high, high - low]
  return [low * low, high * high]


def _fmix32(h, xp):
  """MurmurHash3's 32-bit finaliser; uint32 arithmetic wraps identically in numpy and jnp."""
  h = h ^ (h >> 16)
  h = h * xp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * xp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _num_digits(x: jax.Array) -> jax.Array:
  """Decimal digits of int32 x >= 0 (0 has one digit): [...] -> [...] int32."""
  return 1 + jnp.sum(x[..., None] >= jnp.asarray(POW10[1:]), axis=-1, dtype=jnp.int32)


def _digit_at(x: jax.Array, num_digits: jax.Array, index: jax.Array) -> jax.Array:
  """The index-th digit (0 = most significant) of x >= 0; garbage where index is out of range."""
  exponent = jnp.clip(num_digits - 1 - index, 0, 9)
  return (x // jnp.asarray(POW10)[exponent]) % 10


class ArithmeticTask:
  """Prompts `a<op>b=`, answers `<int><eos>`, a hashed held-out split and an exact verifier.

  Attributes:
    config: the ArithmeticConfig.
    alphabet: "0123456789+-*=", every character of its text.
    tokenizer: CharTokenizer over the alphabet (ids 0/1/2 = pad/bos/eos): the
      ids `generate`, `encode` and `verify` use. A run encodes text with its own
      tokenizer (`config.tokenizer`; by default this same one).
    prompt_len: static prompt length: <bos> + the longest prompt.
    answer_len: static answer length: the longest answer + <eos>.
  """

  alphabet = ALPHABET
  host_verifier = staticmethod(leading_integer_match)

  def __init__(self, config: ArithmeticConfig):
    self.config = config
    self.tokenizer = CharTokenizer(ALPHABET)
    self._digits, self._minus_id = digit_table(self.tokenizer)
    self._low, self._high = config.operand_range
    self.prompt_len = 1 + 2 * config.max_digits + 2
    self.answer_len = 1 + max(len(str(v)) for op in config.operations
                              for v in _extreme_answers(self._low, self._high, op))
    self._op_indices = np.array([CANONICAL_OPERATIONS.index(op) for op in config.operations],
                                np.int32)
    self._op_token_ids = np.array(self.tokenizer.encode(CANONICAL_OPERATIONS), np.int32)
    self._digit0_id = self.tokenizer.encode("0")[0]
    self._equals_id = self.tokenizer.encode("=")[0]
    with np.errstate(over="ignore"):
      self._seed_hash = int(_fmix32(np.uint32(config.split_seed % 2**32) ^ np.uint32(0x9E3779B9), np))
    self._threshold = min(max(round(config.eval_fraction * 2**32), 1), 2**32 - 1)
    # Enough candidates per row that all of them being held out is ~1e-9 likely.
    self._num_candidates = int(min(64, max(4, math.ceil(math.log(1e-9) /
                                                        math.log(config.eval_fraction)))))
    self._fallback = self._find_fallback_problems()

  @property
  def num_problems(self) -> int:
    """Size of the whole problem space (train + eval)."""
    return len(self.config.operations) * (self._high - self._low + 1)**2

  def is_eval_problem(self, a, op_index, b):
    """True where (a, op, b) is held out; op_index indexes "+-*" (not `config.operations`).

    Takes numpy arrays / Python ints (returns numpy) or jax arrays (returns jnp,
    jittable); both paths compute the same uint32 hash, bit for bit.
    """
    if any(isinstance(x, jax.Array) for x in (a, op_index, b)):
      return self._hash(jnp.asarray(a), jnp.asarray(op_index), jnp.asarray(b), jnp)
    with np.errstate(over="ignore"):   # uint32 wrap-around is the point of the hash
      return np.asarray(self._hash(np.asarray(a), np.asarray(op_index), np.asarray(b), np))

  def _hash(self, a, op_index, b, xp):
    h = xp.uint32(self._seed_hash)
    h = _fmix32(h ^ a.astype(xp.uint32), xp)
    h = _fmix32(h ^ op_index.astype(xp.uint32), xp)
    h = _fmix32(h ^ b.astype(xp.uint32), xp)
    return h < xp.uint32(self._threshold)

  def _find_fallback_problems(self) -> np.ndarray:
    """Up to 256 training problems [n, 3] (a, canonical op, b) for `generate`'s rare fallback."""
    rng = np.random.default_rng(self.config.split_seed % 2**32)
    n = 4096
    a = rng.integers(self._low, self._high + 1, n)
    b = rng.integers(self._low, self._high + 1, n)
    op = self._op_indices[rng.integers(0, len(self._op_indices), n)]
    problems = np.stack([a, op, b], axis=1)
    train = problems[~self.is_eval_problem(a, op, b)]
    if not len(train) and self.num_problems <= MAX_ENUMERATED_PROBLEMS:
      train = self._enumerate("train")
    if not len(train):
      raise ValueError(
          f"ArithmeticConfig.eval_fraction={self.config.eval_fraction} holds out every one of the "
          f"{self.num_problems} problems; lower it or allow more digits/operations.")
    return train[:256].astype(np.int32)

  def _enumerate(self, split: str) -> np.ndarray:
    """All problems of a split as [n, 3] int64 (a, canonical op, b), ordered by op, a, b."""
    if self.num_problems > MAX_ENUMERATED_PROBLEMS:
      raise ValueError(
          f"The arithmetic problem space has {self.num_problems} problems (max_digits="
          f"{self.config.max_digits}, operations={self.config.operations!r}), too many to "
          f"enumerate (limit {MAX_ENUMERATED_PROBLEMS}); set max_examples_per_split (a uniform "
          f"sample of each split) or use fewer digits.")
    b_values = np.arange(self._low, self._high + 1, dtype=np.int64)
    rows_per_chunk = max(1, 2**22 // len(b_values))
    found = []
    for op in sorted(self._op_indices):
      for start in range(self._low, self._high + 1, rows_per_chunk):
        a_values = np.arange(start, min(start + rows_per_chunk, self._high + 1), dtype=np.int64)
        a, b = (x.ravel() for x in np.meshgrid(a_values, b_values, indexing="ij"))
        held_out = self.is_eval_problem(a, np.full_like(a, op), b)
        keep = held_out if split == "eval" else ~held_out
        found.append(np.stack([a[keep], np.full(keep.sum(), op), b[keep]], axis=1))
    return np.concatenate(found)

  def _sample_split(self, split: str, count: int) -> np.ndarray:
    """`count` distinct problems of a split [count, 3], drawn uniformly (seeded by split_seed)."""
    rng = np.random.default_rng([self.config.split_seed % 2**32, split == "eval", 1])
    width = self._high - self._low + 1
    found = np.zeros(0, np.int64)        # problem codes (op * width + a - low) * width + b - low
    while len(found) < count:
      draws = 4 * count
      a = rng.integers(self._low, self._high + 1, draws)
      b = rng.integers(self._low, self._high + 1, draws)
      op = self._op_indices[rng.integers(0, len(self._op_indices), draws)].astype(np.int64)
      held_out = self.is_eval_problem(a, op, b)
      keep = held_out if split == "eval" else ~held_out
      codes = np.concatenate([found, ((op * width + a - self._low) * width + b - self._low)[keep]])
      _, first = np.unique(codes, return_index=True)
      found = codes[np.sort(first)]      # distinct, in order of drawing
    found = found[:count]
    b = found % width + self._low
    a = (found // width) % width + self._low
    return np.stack([a, found // width // width, b], axis=1)

  def examples(self, split: str) -> list[dict]:
    """Every problem of a split ("train" or "eval") as dicts.

    Each dict is {"prompt": "37+85=", "answer": "122", "target": 122}. The splits are disjoint and together cover the problem space. The order is
    a fixed permutation (seeded by split_seed), so any prefix is a uniform
    sample of the split: `examples("eval")[:256]` is a fair small eval set,
    where a sorted list's prefix would hold only the smallest operands.
    """
    if split not in ("train", "eval"):
      raise ValueError(f"ArithmeticTask.examples: split must be 'train' or 'eval', got {split!r}.")
    limit = self.config.max_examples_per_split
    share = self.config.eval_fraction if split == "eval" else 1.0 - self.config.eval_fraction
    if limit and self.num_problems * share > 1.05 * limit:
      problems = self._sample_split(split, limit)
    else:
      problems = self._enumerate(split)
    if limit and len(problems) > limit:
      problems = problems[np.random.default_rng([self.config.split_seed % 2**32, 2]).permutation(
          len(problems))[:limit]]
    if len(problems) > MAX_EXAMPLES_PER_SPLIT:
      raise ValueError(
          f"The {split!r} split has {len(problems)} problems, more than {MAX_EXAMPLES_PER_SPLIT} "
          f"to hold as a list; set max_examples_per_split (a uniform sample of the split), "
          f"or lower eval_fraction for a smaller eval set.")
    order = np.random.default_rng([self.config.split_seed % 2**32, split == "eval"]).permutation(
        len(problems))
    out = []
    for a, op_index, b in problems[order].tolist():
      op = CANONICAL_OPERATIONS[op_index]
      target = a + b if op == "+" else a - b if op == "-" else a * b
      out.append({"prompt": f"{a}{op}{b}=", "answer": str(target), "target": target})
    return out

  def encode(self, example: dict) -> dict[str, np.ndarray]:
    """One example to fixed-shape arrays (host side, e.g. as a Grain map).

    Returns prompt_tokens int32 [prompt_len] (left-padded, <bos> first),
    prompt_mask bool [prompt_len], answer_tokens int32 [answer_len] (answer then
    <eos>, right-padded), answer_mask bool [answer_len], target int32 []. A missing
    "target" is read from "answer".
    """
    for field in ("prompt", "answer"):
      if field not in example:
        raise ValueError(f"ArithmeticTask.encode: example {example!r} has no {field!r} field.")
    target = example.get("target", example["answer"])
    try:
      target = int(target)
    except (TypeError, ValueError):
      raise ValueError(
          f"ArithmeticTask.encode: target {target!r} of example {example!r} is not an integer."
      ) from None
    prompt_tokens, prompt_mask = encode_batch(self.tokenizer, [example["prompt"]], self.prompt_len,
                                              add_bos=True, padding_side="left")
    answer_tokens, answer_mask = encode_batch(self.tokenizer, [example["answer"]], self.answer_len,
                                              add_eos=True, padding_side="right")
    return {"prompt_tokens": prompt_tokens[0], "prompt_mask": prompt_mask[0],
            "answer_tokens": answer_tokens[0], "answer_mask": answer_mask[0],
            "target": np.int32(target)}

  def wrong_answer(self, target: int, rng: np.random.Generator) -> str:
    """A plausible wrong answer to `target` (host side): one digit off by one, as a carry slip.

    Never equal to target and never with a leading zero; the sign is kept.
    """
    sign, digits = ("-" if target < 0 else ""), [int(d) for d in str(abs(int(target)))]
    position = int(rng.integers(len(digits)))
    step = 1 if rng.random() < 0.5 else -1
    if position == 0 and len(digits) > 1 and digits[0] + step in (0, 10):
      step = -step                   # "1.." -> "2..", "9.." -> "8..": no leading zero
    digits[position] = (digits[position] + step) % 10
    return sign + "".join(map(str, digits))

  def generate(self, rng: jax.Array, batch_size: int) -> dict[str, jax.Array]:
    """Draws `batch_size` training problems in-graph (jittable); same arrays as batched `encode`.

    Each row draws several uniform candidates and keeps the first that is not
    held out (uniform over training problems); if all are held out (~1e-9), it
    takes a problem from a fixed table of known training problems instead, so an
    eval problem is never produced.
    """
    # One randint call for a, b, op and the fallback row: each call is a separate
    # threefry kernel, and compiling four of them dominated this function's compile time.
    low = np.array([self._low, self._low, 0, 0], np.int32)[:, None, None]
    high = np.array([self._high + 1, self._high + 1, len(self._op_indices), len(self._fallback)],
                    np.int32)[:, None, None]
    draws = jax.random.randint(rng, (4, batch_size, self._num_candidates), low, high, jnp.int32)
    a, b = draws[0], draws[1]                                             # [batch, candidates]
    op = jnp.asarray(self._op_indices)[draws[2]]
    is_train = ~self.is_eval_problem(a, op, b)
    first = jnp.argmax(is_train, axis=1)[:, None]
    fallback = jnp.asarray(self._fallback)[draws[3, :, 0]]                # [batch, 3]
    any_train = jnp.any(is_train, axis=1)
    pick = lambda x, column: jnp.where(any_train, jnp.take_along_axis(x, first, 1)[:, 0],
                                       fallback[:, column])
    a, op, b = pick(a, 0), pick(op, 1), pick(b, 2)
    target = jnp.where(op == 0, a + b, jnp.where(op == 1, a - b, a * b))
    prompt_tokens, prompt_mask = self._prompt_tokens(a, op, b)
    answer_tokens, answer_mask = self._answer_tokens(target)
    return {"prompt_tokens": prompt_tokens, "prompt_mask": prompt_mask,
            "answer_tokens": answer_tokens, "answer_mask": answer_mask, "target": target}

  def _prompt_tokens(self, a, op, b) -> tuple[jax.Array, jax.Array]:
    """[batch] operands -> "<bos>a<op>b=" right-aligned in [batch, prompt_len] (tokens, mask)."""
    a, op, b = a[:, None], op[:, None], b[:, None]
    len_a, len_b = _num_digits(a), _num_digits(b)
    length = 3 + len_a + len_b                          # <bos>, digits, op, digits, '='
    column = jnp.arange(self.prompt_len)[None, :] - (self.prompt_len - length)
    digit0 = self._digit0_id
    tokens = jnp.select(
        [column < 0, column == 0, column <= len_a, column == len_a + 1, column < length - 1],
        [self.tokenizer.pad_id, self.tokenizer.bos_id, digit0 + _digit_at(a, len_a, column - 1),
         jnp.asarray(self._op_token_ids)[op], digit0 + _digit_at(b, len_b, column - len_a - 2)],
        self._equals_id)
    return tokens.astype(jnp.int32), column >= 0

  def _answer_tokens(self, target) -> tuple[jax.Array, jax.Array]:
    """[batch] int32 answers -> "[-]digits<eos>" left-aligned in [batch, answer_len] (tokens, mask)."""
    target = target[:, None]
    sign = (target < 0).astype(jnp.int32)
    magnitude = jnp.abs(target)
    digits = _num_digits(magnitude)
    column = jnp.arange(self.answer_len)[None, :]
    tokens = jnp.select(
        [column < sign, column < sign + digits, column == sign + digits],
        [self._minus_id, self._digit0_id + _digit_at(magnitude, digits, column - sign),
         self.tokenizer.eos_id],
        self.tokenizer.pad_id)
    return tokens.astype(jnp.int32), column <= sign + digits

  def parse_leading_integer(self, tokens: jax.Array, mask: jax.Array
                            ) -> tuple[jax.Array, jax.Array]:
    """`parse_leading_integer` in this task's own token ids."""
    return parse_leading_integer(tokens, mask, self._digits, self._minus_id)

  def verify(self, completion_tokens: jax.Array, completion_mask: jax.Array,
             target: jax.Array) -> jax.Array:
    """Exact-answer reward in this task's own ids: float32 [batch], see `verify_leading_integer`."""
    return verify_leading_integer(completion_tokens, completion_mask, target, self._digits,
                                  self._minus_id)

  def example_arrays(self, example: dict) -> dict[str, np.ndarray]:
    """The int32 target the in-graph verifier compares with (read from "answer" if absent)."""
    target = example.get("target", example["answer"])
    try:
      return {"target": np.int32(int(target))}
    except (TypeError, ValueError):
      raise ValueError(f"answer {target!r} is not an integer (the arithmetic task's verifier "
                       f"compares integers).") from None

  def in_graph_generator(self, tokenizer: Tokenizer):
    """`generate` when `tokenizer` writes this task's text with the same ids, else None."""
    if not isinstance(tokenizer, CharTokenizer) or tokenizer.alphabet != ALPHABET:
      return None
    return self.generate

  def in_graph_verifier(self, tokenizer: Tokenizer):
    """A jnp verifier in `tokenizer`'s ids when it has one token per character, else None."""
    if not isinstance(tokenizer, (CharTokenizer, ByteTokenizer)):
      return None
    digits, minus_id = digit_table(tokenizer)
    return lambda tokens, mask, batch: verify_leading_integer(tokens, mask, batch["target"],
                                                              digits, minus_id)

  def decode_completion(self, tokens_row) -> str:
    """Host-side text of one completion up to (not including) its first <eos>, for logging."""
    ids = [int(i) for i in np.asarray(tokens_row).reshape(-1)]
    if self.tokenizer.eos_id in ids:
      ids = ids[:ids.index(self.tokenizer.eos_id)]
    return self.tokenizer.decode(ids)


__all__ = ["ALPHABET", "ArithmeticConfig", "ArithmeticTask", "MAX_ANSWER_DIGITS", "digit_table",
           "leading_integer", "leading_integer_match", "parse_leading_integer",
           "verify_leading_integer"]
