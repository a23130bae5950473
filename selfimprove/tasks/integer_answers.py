"""Reading an integer answer from a completion: on the host (text) and in-graph (token ids).

Both read the same thing: an optional "-" then digits at the start of the
completion, at most MAX_ANSWER_DIGITS of them (an int32 always holds the value).
The arithmetic task verifies with them (`leading_integer_match` on the host,
`verify_leading_integer` inside the compiled step for char/byte tokenizers), and
any task whose answers are integers can.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from selfimprove.tokenizers import Tokenizer

# The verifier reads an int32; 9 digits always fit, 10 may not.
MAX_ANSWER_DIGITS = 9
POW10 = np.array([10**k for k in range(10)], np.int32)   # 10**9 < 2**31

_LEADING_INTEGER = re.compile(r"-?[0-9]+")


def leading_integer(text: str) -> int | None:
  """The integer a completion starts with (host side; the rules of `parse_leading_integer`)."""
  match = _LEADING_INTEGER.match(text)
  if not match or len(match.group().lstrip("-")) > MAX_ANSWER_DIGITS:
    return None
  return int(match.group())


def leading_integer_match(completion: str, example: dict) -> float:
  """Host verifier: 1.0 iff the completion starts with the example's integer answer."""
  value = leading_integer(completion)
  return float(value is not None and value == int(example.get("target", example["answer"])))


def digit_table(tokenizer: Tokenizer) -> tuple[np.ndarray, int]:
  """(value of each token id as a digit, -1 if not one: int32 [vocab]; the id of "-")."""
  table = np.full(tokenizer.vocab_size, -1, np.int32)
  for digit in range(10):
    table[tokenizer.encode(str(digit))[0]] = digit
  return table, tokenizer.encode("-")[0]


def parse_leading_integer(tokens: jax.Array, mask: jax.Array, digit_values: np.ndarray,
                          minus_id: int) -> tuple[jax.Array, jax.Array]:
  """Reads the integer a completion starts with.

  tokens, mask [batch, n] -> (value int32 [batch], valid bool [batch]);
  digit_values [vocab] int32 maps a token id to its digit (-1: not a digit),
  minus_id is the id of "-" (see `digit_table`).

  The integer is an optional '-' then one or more digits, ending at the first
  token that is not a masked-in digit (eos, '=', '+', pad, a masked-out
  position, or the end). Leading zeros are read as the number's value ("0122"
  is 122, "-0" is 0): a model that pads its answer still states the right
  number, and exact string match is the answer_tokens' job (the SFT loss).
  Invalid (value 0): no digit ("", "-", "=5") or more than 9 digits (int32).
  """
  tokens = jnp.asarray(tokens).astype(jnp.int32)
  mask = jnp.asarray(mask).astype(bool)
  table = jnp.asarray(digit_values)
  in_table = (tokens >= 0) & (tokens < table.shape[0])
  digit = jnp.where(in_table, table[jnp.clip(tokens, 0, table.shape[0] - 1)], -1)
  is_digit = mask & (digit >= 0)
  negative = mask[:, 0] & (tokens[:, 0] == minus_id)
  # Shift signed rows left by one so every row's digits start at column 0 (static shapes).
  shift = lambda x: jnp.where(negative[:, None],
                              jnp.concatenate([x[:, 1:], jnp.zeros_like(x[:, :1])], axis=1), x)
  is_digit, digit = shift(is_digit), shift(digit)
  in_number = jnp.cumprod(is_digit.astype(jnp.int32), axis=1).astype(bool)
  num_digits = jnp.sum(in_number, axis=1, dtype=jnp.int32)
  valid = (num_digits >= 1) & (num_digits <= MAX_ANSWER_DIGITS)
  exponent = num_digits[:, None] - 1 - jnp.arange(tokens.shape[1])[None, :]
  # Only terms of valid (<= 9-digit) numbers are summed, so int32 never overflows.
  use = in_number & (exponent < MAX_ANSWER_DIGITS)
  terms = jnp.where(use, digit * jnp.asarray(POW10)[jnp.clip(exponent, 0, 9)], 0)
  magnitude = jnp.sum(terms, axis=1, dtype=jnp.int32)
  value = jnp.where(valid, jnp.where(negative, -magnitude, magnitude), 0)
  return value, valid


def verify_leading_integer(completion_tokens: jax.Array, completion_mask: jax.Array,
                           target: jax.Array, digit_values: np.ndarray, minus_id: int) -> jax.Array:
  """Exact-answer reward: float32 [batch], 1 iff the completion's leading integer equals target.

  completion_tokens/completion_mask [batch, n] as in `Rollout.tokens` /
  `Rollout.completion_mask`; target int32 [batch]; digit_values/minus_id from
  `digit_table(tokenizer)`. Pure JAX, jittable.
  """
  value, valid = parse_leading_integer(completion_tokens, completion_mask, digit_values, minus_id)
  return (valid & (value == jnp.asarray(target).astype(jnp.int32))).astype(jnp.float32)
