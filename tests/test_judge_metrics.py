"""Judge metrics against hand-computed tables (with ties) and brute-force references."""

import math

import numpy as np
import pytest

from selfimprove import judge_metrics


def _brute_force_auroc(scores, labels):
  """Over every (correct, incorrect) pair: 1 if the correct one scores higher, 1/2 on a tie."""
  positives = [s for s, y in zip(scores, labels) if y]
  negatives = [s for s, y in zip(scores, labels) if not y]
  wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
  return wins / (len(positives) * len(negatives))


def test_auroc_by_hand_with_ties():
  # Correct: 0.9, 0.8, 0.1; incorrect: 0.8, 0.3. Pairs: 1 + 1 + 1/2 + 1 + 0 + 0 = 3.5 of 6.
  scores = [0.9, 0.8, 0.8, 0.3, 0.1]
  labels = [1, 1, 0, 0, 1]
  assert judge_metrics.auroc(scores, labels) == pytest.approx(3.5 / 6)
  assert judge_metrics.auroc([0.1, 0.2, 0.3], [False, True, True]) == 1.0
  assert judge_metrics.auroc([0.1, 0.2, 0.3], [True, False, False]) == 0.0
  assert judge_metrics.auroc([0.5] * 4, [1, 0, 1, 0]) == 0.5
  assert math.isnan(judge_metrics.auroc([0.1, 0.7], [1, 1]))
  assert math.isnan(judge_metrics.auroc([], []))


def test_auroc_equals_the_pair_count_on_random_data():
  rng = np.random.default_rng(0)
  for size, levels in ((7, 3), (7, 3), (50, 5), (200, 1000)):
    scores = rng.integers(0, levels, size) / levels      # ties at every level
    labels = rng.random(size) < 0.4
    labels[:2] = True, False                             # both classes present
    assert judge_metrics.auroc(scores, labels) == pytest.approx(
        _brute_force_auroc(scores, labels), abs=1e-12)


def test_expected_calibration_error_by_hand():
  probs = [0.05, 0.15, 0.15, 0.95, 1.0]
  labels = [0, 1, 0, 1, 1]
  # Bin 0: |0 - 0.05| x 1/5; bin 1: |0.5 - 0.15| x 2/5; bin 9 (holds 1.0): |1 - 0.975| x 2/5.
  expected = 0.05 / 5 + 0.35 * 2 / 5 + 0.025 * 2 / 5
  assert judge_metrics.expected_calibration_error(probs, labels) == pytest.approx(expected)
  # One bin: |mean label - mean prob|; a perfectly calibrated table: 0.
  assert judge_metrics.expected_calibration_error(probs, labels, num_bins=1) == pytest.approx(
      abs(0.6 - np.mean(probs)))
  calibrated = judge_metrics.expected_calibration_error([0.25] * 4 + [1.0] * 2,
                                                        [1, 0, 0, 0, 1, 1], num_bins=4)
  assert calibrated == pytest.approx(0.0)
  assert math.isnan(judge_metrics.expected_calibration_error([], []))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    judge_metrics.expected_calibration_error([1.2], [1])


def test_expected_calibration_error_with_equal_mass_bins_by_hand():
  # Two bins of two: {0.1, 0.2} has accuracy 0 and confidence 0.15; {0.3, 0.4}: 1 and 0.35.
  probs, labels = [0.4, 0.1, 0.3, 0.2], [1, 0, 1, 0]
  assert judge_metrics.expected_calibration_error_equal_mass(probs, labels, num_bins=2) == (
      pytest.approx(0.5 * 0.15 + 0.5 * 0.65))
  # Sizes differ by at most one: 5 examples in 2 bins are 3 + 2.
  probs, labels = [0.1, 0.2, 0.3, 0.8, 0.9], [0, 1, 0, 1, 1]
  expected = 3 / 5 * abs(1 / 3 - 0.2) + 2 / 5 * abs(1 - 0.85)
  assert judge_metrics.expected_calibration_error_equal_mass(probs, labels, num_bins=2) == (
      pytest.approx(expected))


def test_brier_and_accuracy_at_by_hand():
  probs, labels = [0.9, 0.5, 0.2, 0.7], [1, 0, 0, 0]
  assert judge_metrics.brier_score(probs, labels) == pytest.approx((0.01 + 0.25 + 0.04 + 0.49) / 4)
  # Accept at or above the threshold: 0.9 right, 0.5 wrong, 0.2 right, 0.7 wrong.
  assert judge_metrics.accuracy_at(probs, labels) == 0.5
  assert judge_metrics.accuracy_at(probs, labels, threshold=0.8) == 1.0
  assert math.isnan(judge_metrics.accuracy_at([], []))
  with pytest.raises(ValueError, match="probs has 2 entries but labels has 1"):
    judge_metrics.accuracy_at([0.1, 0.2], [1])
  with pytest.raises(ValueError, match="NaN"):
    judge_metrics.brier_score([0.1, float("nan")], [1, 0])


def test_pairwise_agreement_by_hand():
  pref = [0.9, 0.2, 0.6, 0.5, 0.99, 0.1]
  verifier_a = [1, 1, 0, 1, 0.5, 0]
  verifier_b = [0, 0, 1, 0, 0.5, 0]
  # Pairs 0-3 differ (4 and 5 are ties, left out): agree, disagree, disagree, undecided (1/2).
  assert judge_metrics.pairwise_agreement(pref, verifier_a, verifier_b) == pytest.approx(1.5 / 4)
  assert judge_metrics.pairwise_agreement([0.7, 0.3], [2.0, 0.5], [1.0, 3.0]) == 1.0
  assert math.isnan(judge_metrics.pairwise_agreement([0.7], [1], [1]))


def test_best_of_n_accuracy_by_hand():
  correct = [[0, 1, 1], [1, 0, 0], [0, 0, 0]]
  assert judge_metrics.best_of_n_accuracy(correct, [1, 0, 2]) == pytest.approx(2 / 3)
  assert judge_metrics.best_of_n_accuracy(correct, [0, 1, 1]) == 0.0
  with pytest.raises(ValueError, match="outside"):
    judge_metrics.best_of_n_accuracy(correct, [0, 3, 1])
  with pytest.raises(ValueError, match=r"\[prompts, N\]"):
    judge_metrics.best_of_n_accuracy(correct, [0, 1])
