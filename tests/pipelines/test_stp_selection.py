"""STP selection rules vs hand-written tables and transcriptions of the official code."""

from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfimprove.objectives import next_token_loss
from selfimprove.pipelines import stp_selection as stp

T, F = True, False


def test_pass_rates_by_hand():
  correct = np.array([[T, F, T, F], [T, T, T, T], [T, T, F, F], [F, F, F, F]])
  mask = np.array([[T, T, T, T], [F, F, F, F], [T, F, T, F], [T, T, T, F]])
  # Row 0: the same correct proof sampled twice counts twice (multiplicity): 2/4.
  # Row 1: no samples -> 0 (correct flags of padding ignored). Row 2: 1 of 2 real. Row 3: 0/3.
  rate, num_correct = stp.pass_rates(correct, mask)
  np.testing.assert_allclose(rate, [0.5, 0.0, 0.5, 0.0])
  np.testing.assert_array_equal(num_correct, [2, 0, 1, 0])
  assert rate.dtype == jnp.float32 and num_correct.dtype == jnp.int32


def test_barely_provable_by_hand():
  rate = jnp.array([0.0, 0.1, 0.25, 0.2, 0.24])
  num_correct = jnp.array([0, 1, 2, 0, 3])
  # no proof / ok / at the cutoff (strict) / no proof / ok
  np.testing.assert_array_equal(stp.barely_provable(rate, num_correct), [F, T, F, F, T])
  np.testing.assert_array_equal(stp.barely_provable(rate, num_correct, max_pass_rate=0.3),
                                [F, T, T, F, T])


def test_proof_length_ratio_by_hand():
  proof_len = np.array([[10, 4, 6], [3, 3, 3], [8, 2, 9]])
  correct = np.array([[T, F, T], [F, F, F], [F, F, T]])
  ratio = stp.proof_length_ratio(proof_len, correct, np.array([4, 2, 3]))
  np.testing.assert_allclose(ratio, [1.5, np.inf, 3.0])  # min(10, 6)/4; none; 9/3


def test_elegance_keep_by_hand():
  #        group 0 (5 valid rows)     | g1 | group 2 (ties)   | invalid in g0 | g3 size 2
  ratio = [5., 1., 3., 2., 4.,          7.,  1., 1., 1., 2., 2., 0.,             9., 8.]
  group = [0, 0, 0, 0, 0,               1,   2, 2, 2, 2, 2,   0,              3, 3]
  valid = [T] * 11 + [F] + [T, T]
  # g0: n = 5, cutoff = sorted[int(1.0)] = 2 -> drop 1. (Were the invalid 0 counted, n = 6 and
  # the cutoff would be 1, keeping it.) g1: size 1 kept. g2: cutoff = sorted[1] = 1, ties kept.
  # g3: n = 2, int(0.4) = 0, cutoff = min -> both kept.
  keep = stp.elegance_keep(jnp.array(ratio), jnp.array(group), jnp.array(valid))
  np.testing.assert_array_equal(keep, [T, F, T, T, T, T, T, T, T, T, T, F, T, T])


def test_elegance_keep_ten_and_inf():
  ratio = jnp.array([10., 9., 8., 7., 6., 5., 4., 3., 2., 1.])
  # n = 10: cutoff = sorted[2] = 3 -> ratios 1 and 2 dropped.
  keep = stp.elegance_keep(ratio, jnp.zeros(10, jnp.int32), jnp.ones(10, bool))
  np.testing.assert_array_equal(keep, [T] * 8 + [F, F])
  # Rows without a correct proof (+inf) sort last and are kept; drop_fraction 0.5 -> sorted[2].
  keep = stp.elegance_keep(jnp.array([jnp.inf, 1., 2., 3.]), jnp.zeros(4, jnp.int32),
                           jnp.ones(4, bool), drop_fraction=0.5)
  np.testing.assert_array_equal(keep, [T, F, F, T])


def official_filter_by_ratio(ratio, group, valid, threshold=0.2):
  """The official filter_by_ratio loop, over the valid rows (ratios precomputed)."""
  groups = defaultdict(list)
  for i in range(len(ratio)):
    if valid[i]:
      groups[group[i]].append(i)
  kept = set()
  for members in groups.values():
    ratios = sorted(ratio[i] for i in members)
    cutoff = ratios[int(len(ratios) * threshold)]
    kept |= {i for i in members if ratio[i] >= cutoff or len(members) < 2}
  return np.array([i in kept for i in range(len(ratio))])


@pytest.mark.parametrize("seed", range(4))
def test_elegance_keep_matches_official_loop(seed):
  rng = np.random.default_rng(seed)
  ratio = rng.integers(0, 6, size=40).astype(np.float32)  # many ties
  group = rng.integers(0, 7, size=40)
  valid = rng.random(40) < 0.8
  for fraction in (0.2, 0.3, 0.55):
    expected = official_filter_by_ratio(ratio, group, valid, fraction)
    keep = stp.elegance_keep(jnp.array(ratio), jnp.array(group), jnp.array(valid),
                             drop_fraction=fraction)
    np.testing.assert_array_equal(keep, expected)


def test_prover_weights_by_hand():
  proof_len = np.array([[100, 200, 300], [100, 0, 0], [50, 50, 50], [10, 10, 10]])
  correct = np.array([[T, T, F], [T, F, F], [T, T, T], [F, F, F]])
  pass_rate = np.array([0.5, 0.25, 0.75, 0.0])
  w = stp.prover_weights(proof_len, correct, pass_rate)
  expected = [[0.45241870901797976, 0.40936537653899097, 0.0],  # exp(-.1)/2, exp(-.2)/2
              [0.9048374180359595, 0.0, 0.0],                   # exp(-.1)/1
              [0.0, 0.0, 0.0],                                  # pass rate 0.75 > 0.5
              [0.0, 0.0, 0.0]]                                  # no correct proof
  np.testing.assert_allclose(w, expected, rtol=1e-6)
  # The same row-0 proofs where sample 1 is a copy of sample 0: one distinct correct proof.
  distinct = np.array([[T, F, T], [T, T, T], [T, T, T], [T, T, T]])
  w = stp.prover_weights(proof_len, correct, pass_rate, distinct)
  np.testing.assert_allclose(w[0], [0.9048374180359595, 0.0, 0.0], rtol=1e-6)
  w = stp.prover_weights(proof_len, correct, pass_rate, max_pass_rate=0.8, length_coef=0.01)
  np.testing.assert_allclose(w[2], [0.2021768865] * 3, rtol=1e-6)  # exp(-0.5)/3


def test_seed_mask_by_hand():
  pass_rate = jnp.array([0.5, 0.35, 0.9, 1.0, 0.36])
  proved = jnp.array([T, T, T, F, T])
  is_conjecture = jnp.array([F, F, T, F, F])
  # ok / at 0.35 (strict) / a conjecture / not proved / ok
  np.testing.assert_array_equal(stp.seed_mask(pass_rate, proved, is_conjecture), [T, F, F, F, T])


def test_mean_pooled_embeddings_by_hand():
  hidden = np.zeros((3, 3, 2), np.float32)
  hidden[0] = [[3, 0], [1, 4], [100, 100]]   # last position is padding: mean (2, 2)
  hidden[1] = [[0, 0], [0, -5], [0, 0]]      # mean (0, -5/3)
  hidden[2] = 7.0                            # no tokens: stays zero (no NaN)
  mask = np.array([[T, T, F], [T, T, T], [F, F, F]])
  out = stp.mean_pooled_embeddings(hidden, mask)
  np.testing.assert_allclose(out, [[0.5 ** 0.5, 0.5 ** 0.5], [0, -1], [0, 0]], atol=1e-6)


def unit(*xs):
  v = np.array(xs, np.float32)
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_distribution_matching_cap_by_hand():
  # Three conjectures, four identical targets near c0 (so the visiting order does not matter).
  # N/M = 3/4; cap 1.5: c0 takes targets 1-2 and is capped, then c1 (next most similar) 3-4.
  conj = unit([1, 0], [0.8, 0.6], [-1, 0])
  targets = unit(*[[1, 0.1]] * 4)
  w = stp.distribution_matching_weights(conj, jnp.ones(3, bool), targets, jnp.ones(4, bool),
                                        jax.random.key(0), cap=1.5)
  np.testing.assert_allclose(w, [1.5, 1.5, 0.0])


def test_distribution_matching_capped_scores_zero_not_minus_inf():
  # Official: similarity * mask. Targets (0, 1) are negative to both conjectures: c1 (-0.6)
  # beats c0 (-0.8) twice (N/M = 2/3 each, capped at 1), then scores 0 and still wins.
  conj = unit([0.6, -0.8], [-0.8, -0.6])
  targets = unit(*[[0, 1]] * 3)
  w = stp.distribution_matching_weights(conj, jnp.ones(2, bool), targets, jnp.ones(3, bool),
                                        jax.random.key(1), cap=1.0)
  np.testing.assert_allclose(w, [0.0, 2.0], rtol=1e-6)


def test_distribution_matching_weight_clipped_to_n_and_padding():
  # One valid target of matching weight 5 > N = 2 valid conjectures: both get N/M = 2/5;
  # the padding conjecture (the most similar) and the padding target count for nothing.
  conj = unit([1, 0], [0, 1], [1, 1])
  targets = unit([1, 1], [1, 0])
  w = stp.distribution_matching_weights(conj, jnp.array([T, T, F]), targets, jnp.array([T, F]),
                                        jax.random.key(2), jnp.array([5, 7]),
                                        max_matching_weight=5)
  np.testing.assert_allclose(w, [0.4, 0.4, 0.0], rtol=1e-6)


def official_wasserstein_matching(emb_p, emb_q_shuffled, matching_weight, k):
  """Transcription of RL_utils.wasserstein_matching after the shuffle and embedding steps.

  Ties in argpartition are broken towards the lower index (stable sort), as lax.top_k does.
  """
  weights = [0] * len(emb_p)
  mask = np.ones_like(emb_p[:, 0])
  n = len(emb_p)
  m = sum(matching_weight)
  similarities = emb_p @ emb_q_shuffled.T
  for i in range(len(emb_q_shuffled)):
    similarity = similarities[:, i]
    top_k = min(matching_weight[i], n)
    for matching_id in np.argsort(-(similarity * mask), kind="stable")[:top_k]:
      weights[matching_id] += n / m
      if weights[matching_id] >= k:
        mask[matching_id] = 0
  return np.array(weights)


@pytest.mark.parametrize("seed", range(6))
def test_distribution_matching_matches_official_loop(seed):
  # Seed 0 has 2 valid conjectures (matching weights clipped to N); in the others the cap binds.
  num_p, num_q, dim = 9, 16, 3
  gen = np.random.default_rng(seed)
  centres = unit(*gen.normal(size=(2, dim)))  # clustered targets so the cap binds
  conj = unit(*gen.normal(size=(num_p, dim)))
  targets = unit(*(centres[gen.integers(0, 2, num_q)] + 0.3 * gen.normal(size=(num_q, dim))))
  conj_valid = gen.random(num_p) < 0.8
  target_valid = gen.random(num_q) < 0.8
  matching = gen.integers(1, 4, num_q)
  cap = [1.0, 1.0, 1.5, 1.25, 0.5, 1.0][seed]
  rng = jax.random.key(seed)
  w = stp.distribution_matching_weights(conj, conj_valid, targets, target_valid, rng, matching,
                                        cap=cap, max_matching_weight=3)
  order = [q for q in np.asarray(jax.random.permutation(rng, num_q)) if target_valid[q]]
  expected = np.zeros(num_p)
  expected[conj_valid] = official_wasserstein_matching(
      conj[conj_valid].astype(np.float64), targets[order].astype(np.float64), matching[order],
      cap)
  np.testing.assert_allclose(w, expected, rtol=1e-5)
  n, taken = np.sum(conj_valid), np.minimum(matching[order], np.sum(conj_valid))
  np.testing.assert_allclose(np.sum(w), np.sum(taken) * n / np.sum(matching[order]), rtol=1e-5)


def test_sequence_hashes_ignore_padding():
  tokens = jnp.array([[5, 6, 7, 0, 0], [0, 0, 5, 6, 7], [5, 9, 6, 9, 7], [5, 6, 7, 9, 9],
                      [7, 6, 5, 0, 0], [5, 6, 7, 7, 0], [5, 6, 0, 0, 0], [0, 0, 0, 0, 0]])
  mask = jnp.array([[T, T, T, F, F], [F, F, T, T, T], [T, F, T, F, T], [T, T, T, F, F],
                    [T, T, T, F, F], [T, T, T, T, F], [T, T, F, F, F], [F, F, F, F, F]])
  h = np.asarray(stp.sequence_hashes(tokens, mask))
  assert h.dtype == np.uint32
  # Rows 0-3 are all the sequence 5 6 7 (padding left, right, inside, other pad ids).
  assert h[0] == h[1] == h[2] == h[3]
  # Reversed, one longer, one shorter, empty: all different from it and from each other.
  assert len(set(h[[0, 4, 5, 6, 7]])) == 5
  # A wider pad does not change the hash.
  wide = stp.sequence_hashes(jnp.pad(tokens, ((0, 0), (3, 0))), jnp.pad(mask, ((0, 0), (3, 0))))
  np.testing.assert_array_equal(wide, h)


def test_sequence_hashes_few_collisions():
  tokens = jax.random.randint(jax.random.key(0), (4000, 12), 0, 50)
  h = np.asarray(stp.sequence_hashes(tokens, jnp.ones((4000, 12), bool)))
  assert len(set(h.tolist())) == 4000


def test_first_occurrence_by_hand():
  hashes = jnp.array([3, 5, 3, 7, 5, 3, 9, 9], jnp.uint32)
  valid = jnp.array([T, T, T, F, T, T, F, T])
  # Duplicates in one batch keep the first; an invalid first copy (row 6) leaves row 7 first.
  np.testing.assert_array_equal(stp.first_occurrence(hashes, valid), [T, T, F, F, F, F, F, T])


def test_in_table_by_hand():
  table = jnp.array([4, 0, 8, 0], jnp.uint32)
  queries = jnp.array([4, 0, 8, 5, 4294967295], jnp.uint32)
  # Slot 1 holds a stale 0 (invalid) but slot 3 a valid 0.
  np.testing.assert_array_equal(stp.in_table(queries, table, jnp.array([T, F, T, T])),
                                [T, T, T, F, F])
  # Only invalid zeros: 0 is not in the table; an empty table holds nothing.
  np.testing.assert_array_equal(stp.in_table(queries, table, jnp.array([T, F, T, F])),
                                [T, F, T, F, F])
  np.testing.assert_array_equal(stp.in_table(queries, table, jnp.zeros(4, bool)), [F] * 5)


def test_insert_ring_buffer_by_hand():
  table, valid, pos = jnp.zeros(4, jnp.uint32), jnp.zeros(4, bool), jnp.int32(0)
  u = lambda *xs: jnp.array(xs, jnp.uint32)  # noqa: E731
  table, valid, pos, dropped = stp.insert(table, valid, pos, u(10, 11, 12), jnp.array([T, F, T]))
  np.testing.assert_array_equal(table, [10, 12, 0, 0])
  np.testing.assert_array_equal(valid, [T, T, F, F])
  assert (int(pos), int(dropped)) == (2, 0)
  # Wrap-around: slots 2, 3, 0; the oldest entry (10) is overwritten.
  table, valid, pos, dropped = stp.insert(table, valid, pos, u(20, 21, 22), jnp.ones(3, bool))
  np.testing.assert_array_equal(table, [22, 12, 20, 21])
  np.testing.assert_array_equal(valid, [T, T, T, T])
  assert (int(pos), int(dropped)) == (1, 1)
  np.testing.assert_array_equal(stp.in_table(u(10, 12, 22), table, valid), [F, T, T])
  # Six kept rows into four slots from position 1: only the last four (32..35) land, at slots
  # 3, 0, 1, 2; lost: the four old entries plus 30 and 31.
  table, valid, pos, dropped = stp.insert(table, valid, pos, u(30, 31, 32, 33, 34, 35),
                                          jnp.ones(6, bool))
  np.testing.assert_array_equal(table, [33, 34, 35, 32])
  assert (int(pos), int(dropped)) == (3, 6)
  # Nothing kept: no change.
  out = stp.insert(table, valid, pos, u(1, 2), jnp.zeros(2, bool))
  np.testing.assert_array_equal(out[0], table)
  assert (int(out[2]), int(out[3])) == (3, 0)


def test_novelty_pipeline_round_trip():
  tokens = jnp.array([[1, 2, 0], [1, 2, 0], [3, 0, 0], [0, 1, 2]])
  mask = jnp.array([[T, T, F], [T, T, F], [T, F, F], [F, T, T]])
  h = stp.sequence_hashes(tokens, mask)
  table, valid, pos = jnp.zeros(8, jnp.uint32), jnp.zeros(8, bool), jnp.int32(0)
  new = stp.first_occurrence(h, jnp.ones(4, bool)) & ~stp.in_table(h, table, valid)
  np.testing.assert_array_equal(new, [T, F, T, F])
  table, valid, pos, _ = stp.insert(table, valid, pos, h, new)
  new = stp.first_occurrence(h, jnp.ones(4, bool)) & ~stp.in_table(h, table, valid)
  np.testing.assert_array_equal(new, [F, F, F, F])
  assert int(pos) == 2


def numpy_weighted_loss(logits, tokens, loss_mask, weights):
  logits = np.asarray(logits, np.float64)
  logp = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
  num = den = 0.0
  for b in range(tokens.shape[0]):
    for t in range(1, tokens.shape[1]):
      if loss_mask[b, t]:
        num += weights[b] * -logp[b, t - 1, tokens[b, t]]
        den += weights[b]
  return num / den


def test_weighted_next_token_loss_vs_numpy():
  k1, k2 = jax.random.split(jax.random.key(0))
  logits = jax.random.normal(k1, (3, 5, 7)) * 2
  tokens = np.asarray(jax.random.randint(k2, (3, 5), 0, 7))
  loss_mask = np.array([[F, F, T, T, F], [F, T, T, T, T], [T, F, F, F, T]])
  weights = np.array([0.5, 2.0, 0.0])
  loss = stp.weighted_next_token_loss(logits, tokens, loss_mask, weights)
  np.testing.assert_allclose(loss, numpy_weighted_loss(logits, tokens, loss_mask, weights),
                             rtol=1e-5)
  # Unit weights: the plain masked mean of objectives.next_token_loss.
  np.testing.assert_allclose(stp.weighted_next_token_loss(logits, tokens, loss_mask, np.ones(3)),
                             next_token_loss(logits, tokens, loss_mask), rtol=1e-6)


def test_weighted_next_token_loss_by_hand():
  # Uniform logits: every CE is log 4, whatever the weights; no weight at all -> 0.
  logits, tokens = jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), jnp.int32)
  mask = jnp.array([[F, T, T], [F, F, T]])
  np.testing.assert_allclose(stp.weighted_next_token_loss(logits, tokens, mask,
                                                          jnp.array([3.0, 0.1])), np.log(4))
  assert float(stp.weighted_next_token_loss(logits, tokens, mask, jnp.zeros(2))) == 0.0


def test_every_rule_jits():
  key = jax.random.key(3)
  correct = jax.random.bernoulli(key, 0.4, (4, 6))
  mask = jnp.ones((4, 6), bool).at[1, 3:].set(False)
  lengths = jax.random.randint(key, (4, 6), 1, 300)
  rate, num = stp.pass_rates(correct, mask)
  hidden, hidden_mask = jax.random.normal(key, (6, 5, 3)), jnp.ones((6, 5), bool).at[0, 2:].set(F)
  emb = stp.mean_pooled_embeddings(hidden, hidden_mask)
  tokens = jax.random.randint(key, (4, 6), 0, 9)
  table, table_valid = jnp.arange(5, dtype=jnp.uint32), jnp.array([T, F, T, T, F])
  hashes = stp.sequence_hashes(tokens, mask)
  calls = [
      (stp.pass_rates, (correct, mask)),
      (stp.barely_provable, (rate, num)),
      (stp.proof_length_ratio, (lengths, correct, jnp.array([5, 6, 7, 8]))),
      (stp.elegance_keep, (rate, jnp.array([0, 1, 0, 0]), jnp.array([T, T, T, F]))),
      (stp.prover_weights, (lengths, correct, rate)),
      (stp.seed_mask, (rate, num > 0, jnp.array([F, T, F, F]))),
      (stp.mean_pooled_embeddings, (hidden, hidden_mask)),
      (stp.distribution_matching_weights, (emb[:4], mask[:, 0], emb, hidden_mask[:, 1], key)),
      (stp.sequence_hashes, (tokens, mask)),
      (stp.first_occurrence, (hashes, mask[:, 0])),
      (stp.in_table, (hashes, table, table_valid)),
      (stp.insert, (table, table_valid, jnp.int32(4), hashes, mask[:, 4])),
      (stp.weighted_next_token_loss, (jax.random.normal(key, (4, 6, 9)), tokens, mask, rate)),
  ]
  for fn, args in calls:
    eager, jitted = fn(*args), jax.jit(fn)(*args)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), eager, jitted)
