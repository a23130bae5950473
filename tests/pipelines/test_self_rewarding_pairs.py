"""Pair rules of the self-generated preference pipeline on hand tables: ties and unfinished
candidates, anchored rejection, future-guided chosen, SPPO win rates."""

import jax.numpy as jnp
import numpy as np

from selfimprove.pipelines import self_rewarding_pairs as pairs

INF = np.inf


def _np(choice):
  return {k: np.asarray(v) for k, v in choice._asdict().items()}


def test_best_and_worst_with_ties_and_unfinished_candidates():
  scores = jnp.asarray([[0.2, 0.9, 0.5, 0.1],     # plain: chosen 1, rejected 3
                        [0.4, 0.4, 0.4, 0.4],     # all tied: dropped
                        [0.9, 0.7, 0.7, 0.3],     # best unfinished: chosen 1 (first of the tie)
                        [0.5, 0.8, 0.2, 0.6],     # one finished candidate: dropped
                        [0.3, 0.6, 0.6, 0.3]])    # ties at both ends: first index of each
  finished = jnp.asarray([[1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1], [0, 1, 0, 0],
                          [1, 1, 1, 1]], bool)
  got = _np(pairs.best_and_worst(scores, finished))
  np.testing.assert_array_equal(got["valid"], [True, False, True, False, True])
  np.testing.assert_array_equal(got["chosen"][[0, 2, 4]], [1, 1, 1])
  np.testing.assert_array_equal(got["rejected"][[0, 2, 4]], [3, 3, 0])
  np.testing.assert_allclose(got["chosen_score"][[0, 2, 4]], [0.9, 0.7, 0.6])
  np.testing.assert_allclose(got["rejected_score"][[0, 2, 4]], [0.1, 0.3, 0.3])


def test_anchored_rejection_takes_the_initial_models_worst_only_when_it_is_worse():
  current = jnp.asarray([[0.8, 0.5], [0.8, 0.5], [0.6, 0.6], [0.9, 0.4]])
  anchor = jnp.asarray([[0.3, 0.7], [0.6, 0.9], [0.2, 0.9], [0.1, 0.0]])
  finished = jnp.ones((4, 2), bool)
  anchor_finished = jnp.asarray([[1, 1], [1, 1], [1, 1], [1, 0]], bool)
  choice, from_anchor = pairs.anchored_rejection(current, finished, anchor, anchor_finished)
  got = _np(choice)
  # Row 0: anchor's 0.3 < current's worst 0.5 -> rejected = anchor candidate 0 (index K + 0).
  # Row 1: anchor's worst 0.6 > 0.5 -> the current worst (index 1).
  # Row 2: current tied at 0.6 but the anchor's 0.2 is worse: a valid pair (0.6 > 0.2).
  # Row 3: the anchor's unfinished 0.0 never counts: its finished 0.1 is rejected.
  np.testing.assert_array_equal(got["chosen"], [0, 0, 0, 0])
  np.testing.assert_array_equal(got["rejected"], [2, 1, 2, 2])
  np.testing.assert_array_equal(got["valid"], [True, True, True, True])
  np.testing.assert_array_equal(np.asarray(from_anchor), [True, False, True, True])
  np.testing.assert_allclose(got["rejected_score"], [0.3, 0.5, 0.2, 0.1])


def test_future_guided_chosen_replaces_the_chosen_only_when_the_future_model_is_better():
  current = jnp.asarray([[0.8, 0.5], [0.8, 0.5], [0.5, 0.5]])
  anchor = jnp.asarray([[0.9, 0.9], [0.9, 0.9], [0.9, 0.9]])
  phase_one, _ = pairs.anchored_rejection(current, jnp.ones((3, 2), bool), anchor,
                                          jnp.ones((3, 2), bool))
  assert list(np.asarray(phase_one.valid)) == [True, True, False]     # row 2: all tied
  future = jnp.asarray([[0.95, 0.1], [0.7, 0.2], [0.6, 0.4]])
  future_finished = jnp.asarray([[1, 1], [1, 1], [0, 1]], bool)
  choice, from_future = pairs.future_guided_chosen(phase_one, future, future_finished, offset=4)
  got = _np(choice)
  # Row 0: 0.95 > 0.8 -> future candidate 0 (index 4); row 1: 0.7 < 0.8 -> kept;
  # row 2: the future's finished 0.4 does not beat 0.5 and chosen = rejected score: invalid.
  np.testing.assert_array_equal(got["chosen"][:2], [4, 0])
  np.testing.assert_array_equal(got["rejected"][:2], [1, 1])
  np.testing.assert_array_equal(got["valid"], [True, True, False])
  np.testing.assert_array_equal(np.asarray(from_future), [True, False, False])
  np.testing.assert_allclose(got["chosen_score"][:2], [0.95, 0.8])


def test_win_rates_from_a_preference_matrix_and_the_verifier():
  preference = jnp.asarray([[[0.5, 0.8, 0.6], [0.2, 0.5, 0.9], [0.4, 0.1, 0.5]]])
  np.testing.assert_allclose(pairs.win_rates(preference), [[0.7, 0.55, 0.25]])
  verdicts = jnp.asarray([[1.0, 0.0, 1.0, 0.0]])
  matrix = pairs.verifier_preference(verdicts)
  np.testing.assert_allclose(matrix[0, 0], [0.5, 1.0, 0.5, 1.0])
  np.testing.assert_allclose(matrix[0, 1], [0.0, 0.5, 0.0, 0.5])
  np.testing.assert_allclose(pairs.win_rates(matrix), [[5 / 6, 1 / 6, 5 / 6, 1 / 6]], rtol=1e-6)


def test_take_candidates_picks_each_prompts_row():
  values = jnp.arange(12).reshape(6, 2)          # 3 prompts x 2 candidates, rows of 2 values
  np.testing.assert_array_equal(pairs.take_candidates(values, jnp.asarray([1, 0, 1]), 2),
                                [[2, 3], [4, 5], [10, 11]])
