"""How good a self-judge is, measured against a verifier: host-side numpy summaries.

Each function takes the judge's scores and the verifier's results over all eval
examples (1-D arrays, one entry per judged candidate or pair) and returns one
float. Labels are the verifier's outcome (bool or 0/1: True = correct).
Metrics follow Kadavath et al. 2022 (AUROC, ECE, Brier) and Kang et al. 2025
(accuracy of the best-of-N selection).
"""

from __future__ import annotations

import numpy as np


def _vectors(name_a: str, a, name_b: str, b) -> tuple[np.ndarray, np.ndarray]:
  """Two 1-D float64 arrays of the same length (and no NaN), or a ValueError naming them."""
  a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
  if a.shape != b.shape:
    raise ValueError(f"{name_a} has {a.size} entries but {name_b} has {b.size}.")
  for name, values in ((name_a, a), (name_b, b)):
    if np.isnan(values).any():
      raise ValueError(f"{name} holds NaN at entries {np.flatnonzero(np.isnan(values))[:10]}.")
  return a, b


def auroc(scores, labels) -> float:
  """Area under the ROC curve: P(score of a correct > score of an incorrect), ties counted 1/2.

  The Mann-Whitney statistic U / (n_pos n_neg), from average ranks:
  U = sum of the positives' ranks - n_pos (n_pos + 1) / 2. scores, labels: [n].
  NaN when the labels hold only one class.
  """
  scores, labels = _vectors("scores", scores, "labels", labels)
  positive = labels > 0.5
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  # Rank of a group of tied values: the mean of the positions it spans (1-based).
  group_rank = np.cumsum(counts) - (counts - 1) / 2.0
  ranks = group_rank[inverse]
  u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def _calibration_error(probs: np.ndarray, labels: np.ndarray, bins: np.ndarray) -> float:
  """sum_b (n_b / n) |mean(labels_b) - mean(probs_b)| over the non-empty bins ([n] bin ids)."""
  if probs.size == 0:
    return float("nan")
  counts = np.bincount(bins)
  used = counts > 0
  mean_prob = np.bincount(bins, weights=probs)[used] / counts[used]
  accuracy = np.bincount(bins, weights=labels)[used] / counts[used]
  return float(np.sum(counts[used] / probs.size * np.abs(accuracy - mean_prob)))


def expected_calibration_error(probs, labels, num_bins: int = 10) -> float:
  """ECE with equal-width bins: sum_b (n_b / n) |accuracy_b - confidence_b|.

  probs in [0, 1] and labels: [n]. Bin b holds probs in [b/B, (b+1)/B); the last
  bin also holds 1.0. accuracy_b is the share of correct labels in the bin,
  confidence_b the mean prob. NaN for no examples.
  """
  probs, labels = _vectors("probs", probs, "labels", labels)
  if num_bins < 1:
    raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
  if ((probs < 0) | (probs > 1)).any():
    raise ValueError(f"probs must lie in [0, 1]; got values from {probs.min()} to {probs.max()}.")
  bins = np.minimum((probs * num_bins).astype(np.int64), num_bins - 1)
  return _calibration_error(probs, labels, bins)


def expected_calibration_error_equal_mass(probs, labels, num_bins: int = 10) -> float:
  """ECE with equal-count bins (Kadavath et al.'s calibration charts): [n], [n] -> float.

  The examples sorted by prob (stable: ties keep their order) are cut into
  `num_bins` runs whose sizes differ by at most one; then as
  `expected_calibration_error`. NaN for no examples.
  """
  probs, labels = _vectors("probs", probs, "labels", labels)
  if num_bins < 1:
    raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
  bins = np.empty(probs.size, np.int64)
  for b, members in enumerate(np.array_split(np.argsort(probs, kind="stable"), num_bins)):
    bins[members] = b
  return _calibration_error(probs, labels, bins)


def brier_score(probs, labels) -> float:
  """Mean squared error of the probabilities: mean (p - y)^2 over [n]; NaN for no examples."""
  probs, labels = _vectors("probs", probs, "labels", labels)
  return float(np.mean((probs - labels) ** 2)) if probs.size else float("nan")


def accuracy_at(probs, labels, threshold: float = 0.5) -> float:
  """Share of examples where (prob >= threshold) equals the label: [n], [n] -> float.

  The judge accepts a candidate at or above the threshold (Self-J's selective
  answering declines below it). NaN for no examples.
  """
  probs, labels = _vectors("probs", probs, "labels", labels)
  if not probs.size:
    return float("nan")
  return float(np.mean((probs >= threshold) == (labels > 0.5)))


def pairwise_agreement(pref_a_over_b, verifier_a, verifier_b) -> float:
  """How often the pairwise judge picks the candidate the verifier scores higher.

  pref_a_over_b: [pairs] the judge's P(A better than B) (`pairwise_preference`);
  verifier_a, verifier_b: [pairs] the verifier's rewards (or 0/1 correctness) of
  A and B. Over the pairs whose rewards differ, the share where the judge's
  preference (> 0.5 for A, < 0.5 for B) agrees with the verifier; a preference
  of exactly 0.5 counts 1/2, as a tie does in `auroc`. NaN if no pair differs.
  """
  pref, verifier_a = _vectors("pref_a_over_b", pref_a_over_b, "verifier_a", verifier_a)
  _, verifier_b = _vectors("pref_a_over_b", pref, "verifier_b", verifier_b)
  differ = verifier_a != verifier_b
  if not differ.any():
    return float("nan")
  judge = np.sign(pref[differ] - 0.5)                           # +1 A, -1 B, 0 undecided
  verifier = np.sign(verifier_a[differ] - verifier_b[differ])   # +1 or -1
  return float(np.mean(np.where(judge == 0, 0.5, judge == verifier)))


def best_of_n_accuracy(correct, selected) -> float:
  """Accuracy of best-of-N selection: mean over prompts of correct[p, selected[p]].

  correct: [P, N] the verifier's outcome of each of a prompt's N candidates;
  selected: [P] int, the chosen candidate (`judging.best_of_n` / `borda_vote`).
  """
  correct = np.asarray(correct, np.float64)
  selected = np.asarray(selected, np.int64).reshape(-1)
  if correct.ndim != 2 or correct.shape[0] != selected.size:
    raise ValueError(f"correct must be [prompts, N] and selected [prompts]; got shapes "
                     f"{correct.shape} and {selected.shape}.")
  if ((selected < 0) | (selected >= correct.shape[1])).any():
    raise ValueError(f"selected holds indices outside [0, {correct.shape[1]}).")
  if not selected.size:
    return float("nan")
  return float(np.mean(correct[np.arange(selected.size), selected]))
