"""Second-turn context assembly, per-turn re-scoring with holes, and the in-graph edit distance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from selfimprove import multiturn
from tests.pipelines.helpers import levenshtein, real_tokens, tiny_model

# Rows with different prompt and attempt lengths; row 1 has a hole inside the prompt.
PROMPT_TOKENS = np.array([[0, 0, 1, 5, 6],
                          [1, 7, 0, 8, 9],
                          [1, 3, 4, 5, 6]], np.int32)
PROMPT_MASK = PROMPT_TOKENS != 0
ATTEMPT_TOKENS = np.array([[10, 11, 2, 0],
                           [12, 2, 0, 0],
                           [13, 14, 15, 16]], np.int32)
ATTEMPT_MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], bool)
INSTRUCTION = (14, 16)


def test_turn2_context_tokens_and_mask():
  tokens, mask = multiturn.build_turn2_context(PROMPT_TOKENS, PROMPT_MASK, ATTEMPT_TOKENS,
                                               ATTEMPT_MASK, INSTRUCTION)
  assert tokens.shape == mask.shape == (3, 5 + 4 + 2)
  assert tokens.dtype == jnp.int32 and mask.dtype == jnp.bool_
  np.testing.assert_array_equal(tokens, [[0, 0, 1, 5, 6, 10, 11, 2, 0, 14, 16],
                                         [1, 7, 0, 8, 9, 12, 2, 0, 0, 14, 16],
                                         [1, 3, 4, 5, 6, 13, 14, 15, 16, 14, 16]])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1, 1, 1, 1, 1, 0, 1, 1],
                                       [1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 1],
                                       [1] * 11])
  # What the model sees (real tokens in order): prompt, attempt 1 with its stop token, instruction.
  assert real_tokens(tokens[0], mask[0]) == [1, 5, 6, 10, 11, 2, 14, 16]
  assert real_tokens(tokens[1], mask[1]) == [1, 7, 8, 9, 12, 2, 14, 16]
  # Model positions count real tokens only, so holes do not shift the instruction.
  positions = np.cumsum(np.asarray(mask), axis=1) - 1
  np.testing.assert_array_equal(positions[:, -2:], [[6, 7], [6, 7], [9, 10]])
  with pytest.raises(ValueError, match="instruction"):
    multiturn.build_turn2_context(PROMPT_TOKENS, PROMPT_MASK, ATTEMPT_TOKENS, ATTEMPT_MASK, ())


def test_scoring_sequence_and_previous_real_position():
  tokens, mask = multiturn.build_scoring_sequence(PROMPT_TOKENS, PROMPT_MASK, ATTEMPT_TOKENS,
                                                  ATTEMPT_MASK)
  np.testing.assert_array_equal(tokens[:, 5:], ATTEMPT_TOKENS)
  np.testing.assert_array_equal(mask, np.concatenate([PROMPT_MASK, ATTEMPT_MASK], axis=1))
  previous = multiturn.previous_real_position(jnp.asarray([[0, 1, 1, 0, 0, 1, 0],
                                                           [1, 0, 1, 1, 0, 0, 1]], bool))
  np.testing.assert_array_equal(previous, [[-1, -1, 1, 2, 2, 2, 5],
                                           [-1, 0, 0, 2, 3, 3, 3]])


def test_holes_are_invisible_to_the_model():
  """Logits at the real tokens of [x, y1, p, y2] with holes equal those of the compacted rows."""
  graphdef, params = tiny_model()
  forward = jax.jit(lambda params, tokens, mask: nnx.merge(graphdef, params)(tokens, mask)[0])
  logprobs_fn = jax.jit(lambda params, *arrays: multiturn.completion_logprobs(
      nnx.merge(graphdef, params), *arrays))
  context, context_mask = multiturn.build_turn2_context(PROMPT_TOKENS, PROMPT_MASK, ATTEMPT_TOKENS,
                                                        ATTEMPT_MASK, INSTRUCTION)
  completion = np.array([[5, 2, 0], [6, 7, 2], [2, 0, 0]], np.int32)
  completion_mask = completion != 0
  tokens, mask = multiturn.build_scoring_sequence(context, context_mask, completion, completion_mask)
  logits = forward(params, tokens, mask)
  logp = logprobs_fn(params, context, context_mask, completion, completion_mask)
  assert logp.shape == (3, 3)
  # Compacted rows: the real tokens only, from column 0, without any padding. Rows are
  # filled up to a common width with (real) token 3 after the end; causality keeps
  # those from affecting the earlier columns that are compared.
  compact_rows = [real_tokens(tokens[row], mask[row]) for row in range(3)]
  width = max(len(r) for r in compact_rows)
  compact = jnp.array([r + [3] * (width - len(r)) for r in compact_rows], jnp.int32)
  compact_logits = forward(params, compact, jnp.ones_like(compact, bool))
  for row in range(3):
    real = np.flatnonzero(np.asarray(mask[row]))
    np.testing.assert_allclose(logits[row, real], compact_logits[row, :len(real)],
                               rtol=1e-5, atol=1e-5)
    # Completion token k is predicted at the compacted position just before it.
    num_context = int(np.asarray(context_mask[row]).sum())
    num_completion = int(completion_mask[row].sum())
    log_probs = jax.nn.log_softmax(compact_logits[row], axis=-1)
    expected = [float(log_probs[num_context - 1 + k, completion[row, k]])
                for k in range(num_completion)]
    np.testing.assert_allclose(logp[row, :num_completion], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(logp[row, num_completion:], 0.0)


def test_edit_distance_matches_python_reference():
  rng = np.random.default_rng(0)
  rows, length = 64, 6
  a = rng.integers(3, 6, (rows, length))     # a small alphabet makes matches common
  b = rng.integers(3, 6, (rows, length))
  len_a = rng.integers(0, length + 1, rows)
  len_b = rng.integers(0, length + 1, rows)
  b[:8] = a[:8]
  len_b[:8] = len_a[:8]                      # identical attempts
  distance = jax.jit(multiturn.edit_distance)(a, len_a, b, len_b)
  expected = [levenshtein(a[i, :len_a[i]].tolist(), b[i, :len_b[i]].tolist()) for i in range(rows)]
  np.testing.assert_array_equal(distance, expected)
  assert np.all(np.asarray(distance[:8]) == 0)
  normalized = multiturn.normalized_edit_distance(a, len_a, b, len_b)
  np.testing.assert_allclose(normalized, np.array(expected) / np.maximum(np.maximum(len_a, len_b), 1),
                             rtol=1e-6)
  # Different static widths, and a hand-checked pair: kitten -> sitting is 3.
  kitten, sitting = [[1, 2, 3, 3, 4, 5, 0]], [[6, 2, 3, 3, 2, 5, 7, 0, 0]]
  assert int(multiturn.edit_distance(jnp.array(kitten), jnp.array([6]), jnp.array(sitting),
                                     jnp.array([7]))[0]) == 3


def test_completion_logprobs_after_a_right_padded_context():
  """Token 0 of the completion is predicted at the last *real* context token, not the last column."""
  graphdef, params = tiny_model()
  context = jnp.array([[1, 5, 6, 0, 0]], jnp.int32)
  completion = jnp.array([[7, 2, 0]], jnp.int32)
  logp = jax.jit(lambda p: multiturn.completion_logprobs(
      nnx.merge(graphdef, p), context, context != 0, completion, completion != 0))(params)
  compact = jnp.array([[1, 5, 6, 7, 2]], jnp.int32)
  log_probs = jax.nn.log_softmax(jax.jit(lambda p: nnx.merge(graphdef, p)(
      compact, jnp.ones_like(compact, bool))[0])(params)[0], axis=-1)
  np.testing.assert_allclose(logp[0], [log_probs[2, 7], log_probs[3, 2], 0.0], rtol=1e-5, atol=1e-5)
