"""STP's selection rules (Dong & Ma 2025) as pure, jittable functions of fixed-shape arrays.

Each rule follows the official code, github.com/kfdong/STP @2b5fe8b (defaults = its values):

* `pass_rates`: mean verifier result per statement with multiplicity (duplicates count);
  `RL_utils.update_succ_rates` / `get_conjecture_examples.get_succ_rate`.
* `barely_provable`: >= 1 correct proof and pass rate < 0.25 (CONJECTURE_THRESHOLD);
  `Sampler_base.get_conjecture_examples`. The "proof invokes the shared lemma" test there is
  textual (Lean `invokes`) and stays with the caller.
* `proof_length_ratio`, `elegance_keep`: min over correct proofs of len(proof)/len(statement);
  per group drop rows below sorted_ratios[int(n * 0.2)]; `RL_utils.filter_by_ratio`.
* `prover_weights`: pass rate <= 0.5, w = exp(-0.001 len) / #correct proofs;
  `RL_step2_train.compute_weight`, `format_and_deduplicate_dataset`.
* `seed_mask`: proved, pass rate > 0.35 (CONJECTURE_THRESHOLD + 0.1), conjecture level 0;
  `Sampler_base.select`.
* `mean_pooled_embeddings`, `distribution_matching_weights`: k = 4 (the call site's value; the
  function's own default is 3); `embedding_utils.EmbeddingWorker.compute_last_hidden_state`,
  `RL_utils.wasserstein_matching`, `Sampler_base.filtered_conjecture_examples`.
* `sequence_hashes`, `first_occurrence`, `in_table`, `insert`: a fixed-capacity stand-in for
  the official Python sets (conjecture dedup in `select`, (prompt, target) dedup against the
  replay buffer in `format_and_deduplicate_*`).
* `weighted_next_token_loss`: sum m w CE / sum m w; levanter/examples/weighted_lm.py
  `compute_weighted_loss`.

Layout: statements are rows [S] with K proof samples each ([S, K], `sample_mask` marks real
samples, a duplicate proof is another sample); conjectures are rows [C] / [P]; padding rows
carry `valid=False`. Deviations from the official code are stated in each docstring.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from selfimprove.objectives import next_token_targets, token_logprobs


def pass_rates(correct: jax.Array, sample_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(pass_rate [S] float32, num_correct [S] int32) from correct, sample_mask: [S, K] bool.

  pass_rate = #correct real samples / #real samples (0 for a row without samples); duplicate
  proofs are separate samples, as the official multiplicity counts. The official code also
  merges rows with the same statement text and keeps the max over rounds (`succ_rates`) for
  seed selection: both are the caller's (one row per statement; keep the running max).
  """
  real = sample_mask.astype(bool)
  num_correct = jnp.sum(correct.astype(bool) & real, axis=1, dtype=jnp.int32)
  num_samples = jnp.sum(real, axis=1, dtype=jnp.int32)
  rate = num_correct / jnp.maximum(num_samples, 1)
  return rate.astype(jnp.float32), num_correct


def barely_provable(pass_rate: jax.Array, num_correct: jax.Array, *,
                    max_pass_rate: float = 0.25) -> jax.Array:
  """[S] bool: num_correct >= 1 and pass_rate < max_pass_rate (strict), from [S] each."""
  return (num_correct > 0) & (pass_rate < max_pass_rate)


def proof_length_ratio(proof_len: jax.Array, correct: jax.Array,
                       statement_len: jax.Array) -> jax.Array:
  """[C] float32: min over correct proofs of proof_len / statement_len; +inf if none.

  proof_len, correct: [C, K]; statement_len: [C]. Official: character lengths, min over
  every stored correct proof of the statement (this and the last 2 rounds) with 1e5 where
  none; here the K samples given and +inf (both sort after every real ratio).
  """
  ratio = proof_len.astype(jnp.float32) / statement_len.astype(jnp.float32)[:, None]
  return jnp.min(jnp.where(correct.astype(bool), ratio, jnp.inf), axis=1)


def _runs(is_new: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(start [C], size [C]) of each position's run, from is_new [C] bool (True: a run starts)."""
  n = is_new.shape[0]
  pos = jnp.arange(n)
  is_new = is_new.at[0].set(True)
  is_end = jnp.concatenate([is_new[1:], jnp.ones((1,), bool)])
  start = jax.lax.cummax(jnp.where(is_new, pos, 0))
  end = jax.lax.cummin(jnp.where(is_end, pos, n), reverse=True)
  return start, end - start + 1


def elegance_keep(ratio: jax.Array, group: jax.Array, valid: jax.Array, *,
                  drop_fraction: float = 0.2) -> jax.Array:
  """[C] bool: rows kept by the official `filter_by_ratio`, from ratio, group, valid: [C].

  Per group (official: shared lemma) of n valid rows, with the ratios sorted ascending:
  cutoff = sorted[int(n * drop_fraction)] (Python float arithmetic, exactly: looked up in a
  table made here); keep ratio >= cutoff (ties kept) or n < 2. Invalid rows: False, not
  counted. O(C log C) by one sort; drop_fraction must be in [0, 1).
  """
  num_rows = ratio.shape[0]
  cutoff_index = jnp.asarray([int(n * drop_fraction) for n in range(num_rows + 1)], jnp.int32)
  invalid = (~valid.astype(bool)).astype(jnp.int32)  # invalid rows sort last
  invalid_s, group_s, ratio_s, row_s = jax.lax.sort(
      (invalid, group.astype(jnp.int32), ratio.astype(jnp.float32), jnp.arange(num_rows)),
      num_keys=3)
  is_new = jnp.concatenate([jnp.ones((1,), bool), (invalid_s[1:] != invalid_s[:-1]) |
                            (group_s[1:] != group_s[:-1])])
  start, size = _runs(is_new)
  cutoff = ratio_s[start + jnp.minimum(cutoff_index[size], size - 1)]
  keep_s = (invalid_s == 0) & ((ratio_s >= cutoff) | (size < 2))
  return jnp.zeros((num_rows,), bool).at[row_s].set(keep_s)


def prover_weights(proof_len: jax.Array, correct: jax.Array, pass_rate: jax.Array,
                   distinct: jax.Array | None = None, *, max_pass_rate: float = 0.5,
                   length_coef: float = 0.001) -> jax.Array:
  """[S, K] float32 expert-iteration weight of each proof sample (0: not trained on).

  w = exp(-length_coef * proof_len) / (#correct proofs of the statement) for a correct proof
  of a statement with pass_rate <= max_pass_rate. proof_len, correct: [S, K] (correct False
  at padding samples); pass_rate: [S]; distinct: optional [S, K] bool, True at the first copy
  of each distinct proof of its row.

  Official: `exp(-0.001 len(proof) - 0.01 verify_time)`, len in characters, divided by the
  number of *distinct* correct proofs (it verifies deduplicated proofs and trains on each
  (prompt, target) once). We have no verify time (that term is dropped) and proof_len is
  whatever length the caller passes (tokens, or characters). With `distinct`, duplicates get
  0 and the divisor counts distinct proofs, as officially; without it every sample is its own
  proof (so a proof sampled m times carries m times the weight).
  """
  counted = correct.astype(bool)
  if distinct is not None:
    counted = counted & distinct.astype(bool)
  num_counted = jnp.sum(counted, axis=1, keepdims=True, dtype=jnp.int32)
  eligible = counted & (pass_rate <= max_pass_rate)[:, None]
  weight = jnp.exp(-length_coef * proof_len.astype(jnp.float32)) / jnp.maximum(num_counted, 1)
  return jnp.where(eligible, weight, 0.0).astype(jnp.float32)


def seed_mask(pass_rate: jax.Array, proved: jax.Array, is_conjecture: jax.Array, *,
              min_pass_rate: float = 0.35) -> jax.Array:
  """[S] bool conjecture seeds: proved, pass_rate > min_pass_rate (strict), not a conjecture.

  All [S]. Official seeds are the stored correct *proofs* of such statements (pass rate = max
  over rounds, conjecture level 0), then paired with lemmas; picking a proof, the lemma
  pairing and the 10% per-lemma caps are the caller's.
  """
  return proved.astype(bool) & (pass_rate > min_pass_rate) & ~is_conjecture.astype(bool)


def mean_pooled_embeddings(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """[B, D] float32: masked mean over positions of hidden [B, L, D] (mask [B, L]), L2-normalised.

  Official: last hidden state of the model body (HF AutoModel, inputs padded/truncated to
  512 tokens, statement text only), a row without tokens divided by 1; the normalisation is in
  `wasserstein_matching`. A zero vector stays zero here (the official code would give NaN).
  """
  m = mask.astype(jnp.float32)[..., None]
  mean = jnp.sum(hidden.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
  norm = jnp.linalg.norm(mean, axis=-1, keepdims=True)
  return mean / jnp.maximum(norm, 1e-12)


def distribution_matching_weights(conjecture_embeddings: jax.Array, conjecture_valid: jax.Array,
                                  target_embeddings: jax.Array, target_valid: jax.Array,
                                  rng: jax.Array, target_matching_weight: jax.Array | None = None,
                                  *, cap: float = 4.0, max_matching_weight: int = 1) -> jax.Array:
  """[P] float32 conjecture weights of the official `wasserstein_matching` (0: dropped).

  conjecture_embeddings [P, D], target_embeddings [Q, D]: L2-normalised (cosine = dot);
  conjecture_valid [P], target_valid [Q] bool; target_matching_weight [Q] int (official
  `matching_weight` from the dataset config, default 1: e.g. 256 for miniF2F/ProofNet valid).
  N = #valid conjectures, M = sum of the valid targets' matching weights. The valid targets
  are visited in the order `jax.random.permutation(rng, Q)` (official: numpy shuffle); each
  adds N / M to each of its top min(matching_weight, N) conjectures by score, where score is
  the cosine similarity, or 0 once a conjecture's weight has reached `cap` (official: the
  similarity times a 0/1 mask, so a capped conjecture can still win against negative
  similarities). Deviations: matching weights above `max_matching_weight` (static, the top_k
  size) are clipped to it; ties go to the lower index (numpy's argpartition leaves them
  unspecified); weights accumulate in float32 (official: float64).
  """
  num_conjectures = conjecture_embeddings.shape[0]
  num_targets = target_embeddings.shape[0]
  if target_matching_weight is None:
    target_matching_weight = jnp.ones((num_targets,), jnp.int32)
  conjecture_valid = conjecture_valid.astype(bool)
  matching = jnp.where(target_valid, target_matching_weight.astype(jnp.int32), 0)
  n = jnp.sum(conjecture_valid, dtype=jnp.int32)
  increment = n.astype(jnp.float32) / jnp.maximum(jnp.sum(matching), 1).astype(jnp.float32)
  similarity = (jnp.asarray(conjecture_embeddings, jnp.float32)
                @ jnp.asarray(target_embeddings, jnp.float32).T)  # [P, Q]
  k = min(max_matching_weight, num_conjectures)

  def visit(carry, q):
    weights, open_ = carry  # [P] float32, [P] bool (official `mask`)
    score = jnp.where(open_, similarity[:, q], 0.0)
    _, top = jax.lax.top_k(jnp.where(conjecture_valid, score, -jnp.inf), k)
    take = jnp.arange(k) < jnp.minimum(matching[q], n)
    weights = weights.at[top].add(jnp.where(take, increment, 0.0))
    return (weights, open_ & (weights < cap)), None

  init = (jnp.zeros((num_conjectures,), jnp.float32), jnp.ones((num_conjectures,), bool))
  (weights, _), _ = jax.lax.scan(visit, init, jax.random.permutation(rng, num_targets))
  return weights


# ---- Novelty: a fixed-capacity table of uint32 sequence hashes -----------------------

def _mix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser (a bijection of uint32)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def sequence_hashes(tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """[C] uint32 hash of each row's real tokens (tokens [C, L] int, mask [C, L] bool).

  Hashes the sequence of tokens where mask is True, in order: each token is mixed with its
  rank among the real tokens (not its position), so where the padding sits, how much there
  is and what id it has do not matter. Distinct sequences collide with probability ~2^-32 per
  pair (a false "seen" for about T / 2^32 of queries against a full table of T).
  """
  real = mask.astype(bool)
  rank = (jnp.cumsum(real, axis=1) - 1).astype(jnp.uint32)
  token_terms = _mix32(tokens.astype(jnp.uint32) ^ _mix32(rank * jnp.uint32(0x9E3779B9)
                                                         + jnp.uint32(0x7F4A7C15)))
  total = jnp.sum(jnp.where(real, token_terms, jnp.uint32(0)), axis=1, dtype=jnp.uint32)
  length = jnp.sum(real, axis=1, dtype=jnp.int32).astype(jnp.uint32)
  return _mix32(total + length * jnp.uint32(0x27D4EB2F))


def first_occurrence(hashes: jax.Array, valid: jax.Array) -> jax.Array:
  """[C] bool: True at the first valid row of each distinct hash (hashes [C], valid [C])."""
  num_rows = hashes.shape[0]
  invalid = (~valid.astype(bool)).astype(jnp.int32)
  invalid_s, hashes_s, row_s = jax.lax.sort(
      (invalid, hashes.astype(jnp.uint32), jnp.arange(num_rows)), num_keys=3)
  is_new = jnp.concatenate([jnp.ones((1,), bool), hashes_s[1:] != hashes_s[:-1]])
  return jnp.zeros((num_rows,), bool).at[row_s].set(is_new & (invalid_s == 0))


def in_table(hashes: jax.Array, table: jax.Array, table_valid: jax.Array) -> jax.Array:
  """[C] bool: hash [C] is held by a valid entry of table [T] uint32 (table_valid [T])."""
  invalid = (~table_valid.astype(bool)).astype(jnp.int32)
  table_s, invalid_s = jax.lax.sort((table.astype(jnp.uint32), invalid), num_keys=2)
  # Among equal hashes the valid entries sort first, so the leftmost match decides.
  hashes = hashes.astype(jnp.uint32)
  index = jnp.minimum(jnp.searchsorted(table_s, hashes, side="left"), table.shape[0] - 1)
  return (table_s[index] == hashes) & (invalid_s[index] == 0)


def insert(table: jax.Array, table_valid: jax.Array, write_pos: jax.Array, hashes: jax.Array,
           keep: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Ring-buffer insert: (table [T] uint32, table_valid [T] bool, write_pos [] int32, num_dropped).

  The rows of hashes [C] with keep [C] True are written, in row order, to slots write_pos,
  write_pos + 1, ... (mod T), overwriting the oldest entries once the table is full; the new
  write_pos is (write_pos + #kept) mod T. If more than T rows are kept only the last T land.
  num_dropped [] int32 = hashes lost = evicted valid entries + kept rows that did not land.
  No membership test here: pass keep = first_occurrence & ~in_table to insert only new ones.
  Official: unbounded Python sets (nothing is ever dropped).
  """
  capacity = table.shape[0]
  keep = keep.astype(bool)
  num_kept = jnp.sum(keep, dtype=jnp.int32)
  offset = jnp.cumsum(keep, dtype=jnp.int32) - 1
  lands = keep & (offset >= num_kept - capacity)
  slot = jnp.where(lands, (write_pos + offset) % capacity, capacity)  # capacity: dropped
  new_table = table.at[slot].set(hashes.astype(table.dtype), mode="drop")
  new_valid = table_valid.at[slot].set(True, mode="drop")
  num_dropped = (jnp.sum(table_valid, dtype=jnp.int32) + num_kept
                 - jnp.sum(new_valid, dtype=jnp.int32))
  return new_table, new_valid, ((write_pos + num_kept) % capacity).astype(jnp.int32), num_dropped


def weighted_next_token_loss(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array,
                             weights: jax.Array) -> jax.Array:
  """Scalar sum_{b,t} m_bt w_b CE_bt / sum_{b,t} m_bt w_b (levanter `compute_weighted_loss`).

  logits [B, T, V] at position t predict tokens [B, T] at t+1; loss_mask [B, T] bool is True
  where tokens[:, t] is a target (as `objectives.next_token_loss`: column 0 never is);
  weights [B] per example. The official mask is indexed by the predicting position and its
  targets are `roll(tokens, -1)`, so the last position's prediction of tokens[:, 0] (BOS) is
  in its loss whenever the prompt ends before the last position; here that wrapped pair never
  counts. 0 (official:
  NaN) when sum m w = 0. One batch: levanter's gradient accumulation averages microbatches.
  """
  targets, is_target = next_token_targets(tokens, loss_mask)
  logp = token_logprobs(logits, targets)
  mw = is_target.astype(jnp.float32) * weights.astype(jnp.float32)[:, None]
  total = jnp.sum(mw)
  return jnp.where(total > 0, -jnp.sum(mw * logp) / jnp.where(total > 0, total, 1.0), 0.0)
