"""STP: conjecturer-prover self-play (Dong & Ma 2025, arXiv 2502.00212) in one compiled step.

One model plays both roles, told apart by the prompt (text of the task's proof domain):
  prover:       STATEMENT + statement_suffix               -> proof <eos>
  conjecturer:  STATEMENT + "|" + PROOF + conjecture_suffix -> new statement <eos>
(linear equations: "3x+5=20|" -> "3x=20-5;3x=15;x=5", and "3x+5=20|3x=20-5;3x=15;x=5|" ->
"2x-4=x+1").

Each step (the official round, streamed: a round's work on a few statements per step):
 1. Seeds: `conjectures_per_step` statements drawn uniformly from the seed set (level 0,
    with their reference proofs) and the proved training statements whose best pass rate
    is > seed_min_pass_rate (with their shortest verified proof); conjectures are never seeds.
 2. The conjecturer samples one statement per seed. A conjecture counts if it ended,
    is well formed and is new: not a seed, training or held-out statement, not generated
    at an earlier step (the novelty table), not a repeat within the step.
 3. The prover samples `proofs_per_statement` proofs for each conjecture and for
    `statements_per_step` training statements drawn from the unproved ones (the
    official pool re-includes a proved statement when its pass rate is < 0.35, else
    with probability 0.05); the domain's checker verifies every proof; pass rates
    with multiplicity.
 4. Prover examples: verified proofs of statements with pass rate <= 0.5, weight
    exp(-0.001 len) / #distinct correct proofs (`stp_selection.prover_weights`).
 5. Conjecturer examples: new conjectures that are barely provable (>= 1 proof, pass
    rate < 0.25), kept by the elegance filter (drop the lowest 20% of min proof/statement
    length ratios), weighted by distribution matching to `matching_targets` unproved
    training statements (cosine of mean-pooled last hidden states, cap 4).
 6. (prompt, target) pairs already trained on (the replay table) get weight 0; one
    optimizer step on the weighted next-token loss over both roles' examples
    (sum m w CE / sum m w); no examples -> no update.
The per-statement statistics, the shortest proof of each proved training statement, the
novelty and replay tables and the recent accepted conjectures are fixed-capacity arrays
in `state.extra`: they are checkpointed with the parameters and a relaunch continues
bit for bit.

`mode="expert_iteration"`: the official ablation (no conjectures; the same number of
prover samples per step, all on unproved training statements).

Deviations from the official code (github.com/kfdong/STP @2b5fe8b), each for static
shapes or for this domain: rounds are streamed (statistics are per step over that
step's samples); the domain has no lemmas, so the conjecturer prompt has none and the
elegance groups are the step's conjectures; each seed gets one conjecture; proof
lengths are tokens; no verify-time term in the weights; proofs are trained once per
(prompt, target) ever (the replay table) rather than deduplicated per round; a
conjecture's proofs are trained on only while it is new (first generated).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from selfimprove.objectives import next_token_targets, token_logprobs
from selfimprove.pipelines import stp_selection as sel
from selfimprove.pipelines.base import RunPieces
from selfimprove.pipelines.stp_rows import (HostChecks, Piece, as_piece, constant_piece,
                                            in_graph_checks, pack_left, text_before_stop)
from selfimprove.sampling import SamplingConfig, sample
from selfimprove.train_state import TrainState

MODES = ("stp", "expert_iteration")
VERIFIERS = ("in_graph", "host")


@dataclasses.dataclass(frozen=True)
class STPConfig:
  """STP settings (official defaults where the official code has one).

  Attributes:
    mode: "stp" or "expert_iteration" (statements_per_step += conjectures_per_step,
      conjectures_per_step = 0, no proved statements re-included).
    conjectures_per_step: seeds (= conjectures) per step.
    statements_per_step: training statements proved per step.
    proofs_per_statement: K proof samples per statement (official 64, then 32).
    conjecture_max_pass_rate: "barely provable" cutoff, strict (0.25).
    seed_min_pass_rate: a proved statement is a seed above this, strict (0.35).
    prover_max_pass_rate: proofs of statements up to this train the prover (0.5).
    proof_length_coef: prover weight exp(-coef * length) (0.001).
    elegance_drop_fraction: share of lowest proof/statement ratios dropped (0.2).
    matching_cap: a conjecture's distribution-matching weight cap k (4).
    matching_targets: unproved training statements embedded per step as the target.
    reinclude_proved: chance a proved statement with pass rate >= seed_min_pass_rate
      is drawn again (0.05).
    temperature: sampling temperature of both roles (1.0).
    distinct_proofs: count and train each distinct proof once (official).
    novelty_table_size / replay_table_size: hash-table capacities (ring buffers).
    accepted_pool_size: recent accepted conjectures kept (text arrays) for inspection.
    eval_samples: k of the held-out pass@k; pass@1 is the mean over the k samples.
    verifier: "in_graph" (the domain's jnp checks) or "host" (its Python checks through
      jax.pure_callback, as an external checker would plug in).
  """

  mode: str = "stp"
  conjectures_per_step: int = 16
  statements_per_step: int = 16
  proofs_per_statement: int = 8
  conjecture_max_pass_rate: float = 0.25
  seed_min_pass_rate: float = 0.35
  prover_max_pass_rate: float = 0.5
  proof_length_coef: float = 0.001
  elegance_drop_fraction: float = 0.2
  matching_cap: float = 4.0
  matching_targets: int = 64
  reinclude_proved: float = 0.05
  temperature: float = 1.0
  distinct_proofs: bool = True
  novelty_table_size: int = 8192
  replay_table_size: int = 65536
  accepted_pool_size: int = 256
  eval_samples: int = 8
  verifier: str = "in_graph"

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}.")
    if self.verifier not in VERIFIERS:
      raise ValueError(f"verifier must be one of {VERIFIERS}, got {self.verifier!r}.")
    for name in ("statements_per_step", "proofs_per_statement", "matching_targets",
                 "novelty_table_size", "replay_table_size", "accepted_pool_size",
                 "eval_samples"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    if self.conjectures_per_step < 0:
      raise ValueError(f"conjectures_per_step must be >= 0, got {self.conjectures_per_step}.")
    for name in ("conjecture_max_pass_rate", "seed_min_pass_rate", "prover_max_pass_rate",
                 "reinclude_proved"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
    if not 0.0 <= self.elegance_drop_fraction < 1.0:
      raise ValueError(f"elegance_drop_fraction must be in [0, 1), got "
                       f"{self.elegance_drop_fraction}.")
    if self.temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}.")
    if self.mode == "expert_iteration":
      object.__setattr__(self, "statements_per_step",
                         self.statements_per_step + self.conjectures_per_step)
      object.__setattr__(self, "conjectures_per_step", 0)
      object.__setattr__(self, "reinclude_proved", 0.0)


@dataclasses.dataclass(frozen=True)
class Tables:
  """The domain's fixed statement sets as arrays in the run's ids (constants of the step)."""

  train: np.ndarray          # [N, S] int32 training statements (no proofs)
  train_len: np.ndarray      # [N] int32
  seed: np.ndarray           # [M, S] seed statements
  seed_len: np.ndarray       # [M]
  seed_proof: np.ndarray     # [M, P] their reference proofs
  seed_proof_len: np.ndarray
  known_hashes: np.ndarray   # sorted uint32 hashes of every seed, training and held-out statement


def _id_table(texts: list[str], width: int, tokenizer, pad_id: int, what: str
              ) -> tuple[np.ndarray, np.ndarray]:
  ids = np.full((max(len(texts), 1), width), pad_id, np.int32)
  lengths = np.zeros((max(len(texts), 1),), np.int32)
  for row, text in enumerate(texts):
    encoded = tokenizer.encode(text)
    if len(encoded) > width:
      raise ValueError(f"{what} {text!r} is {len(encoded)} tokens, more than the domain's "
                       f"limit of {width}.")
    ids[row, :len(encoded)], lengths[row] = encoded, len(encoded)
  return ids, lengths


def build_tables(task: Any, tokenizer, statement_width: int, proof_width: int) -> Tables:
  pad = tokenizer.pad_id
  train_text = [e["statement"] for e in task.examples("train")]
  seeds = task.seed_examples()
  train, train_len = _id_table(train_text, statement_width, tokenizer, pad, "training statement")
  seed, seed_len = _id_table([e["statement"] for e in seeds], statement_width, tokenizer, pad,
                             "seed statement")
  seed_proof, seed_proof_len = _id_table([e["answer"] for e in seeds], proof_width, tokenizer,
                                         pad, "seed proof")
  held_out, held_out_len = _id_table([e["statement"] for e in task.examples("eval")],
                                     statement_width, tokenizer, pad, "held-out statement")
  hashes = []
  for ids, lengths in ((train, train_len), (seed, seed_len), (held_out, held_out_len)):
    mask = np.arange(statement_width)[None, :] < lengths[:, None]
    hashes.append(np.asarray(sel.sequence_hashes(jnp.asarray(ids), jnp.asarray(mask)))[lengths > 0])
  return Tables(train, train_len, seed, seed_len, seed_proof, seed_proof_len,
                np.sort(np.concatenate(hashes)).astype(np.uint32))


def _in_sorted(hashes: jax.Array, sorted_table: np.ndarray) -> jax.Array:
  table = jnp.asarray(sorted_table)
  index = jnp.minimum(jnp.searchsorted(table, hashes, side="left"), table.shape[0] - 1)
  return table[index] == hashes


def _ring(capacity: int) -> dict:
  return {"table": jnp.zeros((capacity,), jnp.uint32), "valid": jnp.zeros((capacity,), bool),
          "write_pos": jnp.zeros((), jnp.int32)}


def _ring_insert(ring: dict, hashes: jax.Array, keep: jax.Array) -> dict:
  table, valid, write_pos, _ = sel.insert(ring["table"], ring["valid"], ring["write_pos"],
                                          hashes, keep)
  return {"table": table, "valid": valid, "write_pos": write_pos}


def _in_ring(hashes: jax.Array, ring: dict) -> jax.Array:
  return sel.in_table(hashes, ring["table"], ring["valid"])


def _random_pick(key: jax.Array, preferred: jax.Array, count: int) -> jax.Array:
  """`count` distinct indices, uniformly among `preferred` first, then among the rest."""
  u = jax.random.uniform(key, preferred.shape)
  return jax.lax.top_k(jnp.where(preferred, 1.0 + u, u), count)[1]


def _weighted_ce_sums(model, tokens, mask, loss_mask, weights) -> tuple[jax.Array, jax.Array]:
  """(sum m w CE, sum m w) over next-token targets (`stp_selection.weighted_next_token_loss`'s
  numerator and denominator, so several batches combine into one normalised loss)."""
  logits, _ = model(tokens, mask)
  targets, is_target = next_token_targets(tokens, loss_mask)
  logp = token_logprobs(logits, targets)
  mw = is_target.astype(jnp.float32) * weights.astype(jnp.float32)[:, None]
  return -jnp.sum(mw * logp), jnp.sum(mw)


def training_rows(prompt_tokens, prompt_mask, tokens, completion_mask):
  """(tokens, mask, loss_mask) [rows, P + N] of sampled rows: the prompt, then the completion
  (its tokens and <eos> are the targets)."""
  return (jnp.concatenate([prompt_tokens, tokens], axis=1),
          jnp.concatenate([prompt_mask, completion_mask], axis=1),
          jnp.concatenate([jnp.zeros_like(prompt_mask), completion_mask], axis=1))


def prover_example_weights(correct: jax.Array, proof_len: jax.Array, pass_rate: jax.Array,
                           pair_hashes: jax.Array, seen: jax.Array, config: STPConfig
                           ) -> jax.Array:
  """[S * K] weight of each proof sample as a prover example (0: not one).

  correct, proof_len: [S, K]; pass_rate: [S]; pair_hashes, seen: [S * K] the (prompt, proof)
  hash and whether the replay table holds it. The official rule (`prover_weights`: pass rate
  <= prover_max_pass_rate, exp(-coef len) / #distinct correct proofs), then 0 for a pair
  already trained on.
  """
  k = correct.shape[1]
  distinct = sel.first_occurrence(pair_hashes, correct.reshape(-1)).reshape(-1, k)
  weights = sel.prover_weights(proof_len, correct, pass_rate,
                               distinct if config.distinct_proofs else None,
                               max_pass_rate=config.prover_max_pass_rate,
                               length_coef=config.proof_length_coef).reshape(-1)
  return jnp.where(seen, 0.0, weights)


def conjecture_selection(new: jax.Array, pass_rate: jax.Array, num_correct: jax.Array,
                         correct: jax.Array, proof_len: jax.Array, statement_len: jax.Array,
                         config: STPConfig) -> tuple[jax.Array, jax.Array]:
  """(barely provable [C], kept [C]) of the step's conjectures before distribution matching.

  new: [C] well formed and never seen; pass_rate, num_correct: [C]; correct, proof_len: [C, K];
  statement_len: [C]. Barely provable: new, >= 1 correct proof, pass rate below the cutoff;
  kept: also survives the elegance filter among the step's barely provable conjectures.
  """
  barely = new & sel.barely_provable(pass_rate, num_correct,
                                     max_pass_rate=config.conjecture_max_pass_rate)
  ratio = sel.proof_length_ratio(proof_len, correct, jnp.maximum(statement_len, 1))
  elegant = sel.elegance_keep(ratio, jnp.zeros(new.shape, jnp.int32), barely,
                              drop_fraction=config.elegance_drop_fraction)
  return barely, barely & elegant


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of values where mask, NaN (null in metrics.jsonl) where mask is empty."""
  count = jnp.sum(mask, dtype=jnp.float32)
  total = jnp.sum(jnp.where(mask, values, 0).astype(jnp.float32))
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)


@dataclasses.dataclass(frozen=True)
class STP:
  graphdef: nnx.GraphDef
  optimizer: optax.GradientTransformation
  config: STPConfig
  tables: Tables
  checks: Any                      # stp_rows.Checks
  verifier: Any                    # the run's verifier, for held-out evaluation
  prefix_ids: tuple[int, ...]      # before a statement in every prompt (<bos>)
  statement_suffix_ids: tuple[int, ...]
  conjecture_suffix_ids: tuple[int, ...]
  statement_width: int
  proof_width: int
  stop_token_ids: tuple[int, ...]
  pad_id: int
  eval_metric_names: tuple[str, ...] = ("pass_at_1", "pass_at_k")

  def _sampling(self, max_new_tokens: int, samples: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=max_new_tokens, temperature=self.config.temperature,
                          num_samples_per_prompt=samples, stop_token_ids=self.stop_token_ids,
                          pad_token_id=self.pad_id)

  def init_extra(self, params: dict) -> dict:
    del params
    n, c = self.tables.train.shape[0], self.config
    return {
        "proved": jnp.zeros((n,), bool),
        "best_pass_rate": jnp.zeros((n,), jnp.float32),   # max over steps of a step's pass rate
        "attempts": jnp.zeros((n,), jnp.int32),           # proof samples spent on each statement
        "proof": jnp.full((n, self.proof_width), self.pad_id, jnp.int32),   # shortest verified
        "proof_len": jnp.zeros((n,), jnp.int32),
        "novelty": _ring(c.novelty_table_size),           # conjectures generated so far
        "replay": _ring(c.replay_table_size),             # (prompt, target) pairs trained on
        "accepted": {"tokens": jnp.full((c.accepted_pool_size, self.statement_width),
                                        self.pad_id, jnp.int32),
                     "len": jnp.zeros((c.accepted_pool_size,), jnp.int32),
                     "pass_rate": jnp.zeros((c.accepted_pool_size,), jnp.float32),
                     "step": jnp.full((c.accepted_pool_size,), -1, jnp.int32),
                     "write_pos": jnp.zeros((), jnp.int32), "total": jnp.zeros((), jnp.int32)},
        "generated_proofs": jnp.zeros((), jnp.int32),
    }

  # -- pieces of the step ------------------------------------------------------------------

  def _prompts(self, statements: Piece, proofs: Piece | None = None):
    rows = statements.ids.shape[0]
    pieces = [constant_piece(self.prefix_ids, rows), statements,
              constant_piece(self.statement_suffix_ids, rows)]
    if proofs is not None:
      pieces += [proofs, constant_piece(self.conjecture_suffix_ids, rows)]
    return pack_left(pieces, self.pad_id)

  def _conjectures(self, model, extra: dict, key: jax.Array):
    """Seeds, their prompts, the sampled conjectures and which of them count."""
    c, t = self.config, self.tables
    pick_key, sample_key = jax.random.split(key)
    train_seeds = sel.seed_mask(extra["best_pass_rate"], extra["proof_len"] > 0,
                                jnp.zeros_like(extra["proved"]),
                                min_pass_rate=c.seed_min_pass_rate)
    eligible = jnp.concatenate([jnp.ones((t.seed.shape[0],), bool), train_seeds])
    pick = _random_pick(pick_key, eligible, c.conjectures_per_step)
    statements = Piece(jnp.concatenate([jnp.asarray(t.seed), jnp.asarray(t.train)])[pick],
                       jnp.concatenate([jnp.asarray(t.seed_len), jnp.asarray(t.train_len)])[pick])
    proofs = Piece(jnp.concatenate([jnp.asarray(t.seed_proof), extra["proof"]])[pick],
                   jnp.concatenate([jnp.asarray(t.seed_proof_len), extra["proof_len"]])[pick])
    prompt, prompt_mask = self._prompts(statements, proofs)
    rollout = sample(model, prompt, prompt_mask, sample_key,
                     self._sampling(self.statement_width + 1, 1))
    text_mask, ended = text_before_stop(rollout.tokens, rollout.completion_mask,
                                        self.stop_token_ids)
    conjecture = as_piece(rollout.tokens, text_mask, self.statement_width)
    fits = ended & (jnp.sum(text_mask, axis=1) <= self.statement_width)
    ids = conjecture.ids
    mask = jnp.arange(self.statement_width)[None, :] < conjecture.length[:, None]
    well_formed = fits & self.checks.well_formed(ids, mask)
    hashes = sel.sequence_hashes(ids, mask)
    new = (well_formed & ~_in_sorted(hashes, t.known_hashes)
           & ~_in_ring(hashes, extra["novelty"]) & sel.first_occurrence(hashes, well_formed))
    distinct = sel.first_occurrence(hashes, ended)
    return dict(rollout=rollout, statement=conjecture, mask=mask, hashes=hashes,
                well_formed=well_formed, new=new, distinct=distinct)

  def _embed(self, model, statements: Piece) -> jax.Array:
    tokens, mask = self._prompts(statements)
    hidden, _ = model(tokens, mask, return_hidden=True)
    return sel.mean_pooled_embeddings(hidden, mask)

  def step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
           ) -> tuple[TrainState, dict[str, jax.Array]]:
    del batch   # statements come from the tables and the state, not the trainer's rows
    c, t, extra = self.config, self.tables, state.extra
    conj_key, pick_key, prove_key, target_key, match_key = jax.random.split(rng, 5)
    model = nnx.merge(self.graphdef, state.params)
    num_conj, num_train, k = c.conjectures_per_step, c.statements_per_step, c.proofs_per_statement
    train_ids, train_len = jnp.asarray(t.train), jnp.asarray(t.train_len)

    # Statements to prove: the step's conjectures, then training statements.
    pool = ~extra["proved"] | (extra["best_pass_rate"] < c.seed_min_pass_rate) if (
        c.reinclude_proved > 0) else ~extra["proved"]
    if c.reinclude_proved > 0:
      pick_key, coin_key = jax.random.split(pick_key)
      pool = pool | (jax.random.uniform(coin_key, pool.shape) < c.reinclude_proved)
    picked = _random_pick(pick_key, pool, num_train)
    statements = Piece(train_ids[picked], train_len[picked])
    statement_ok = jnp.ones((num_train,), bool)
    if num_conj:
      conj = self._conjectures(model, extra, conj_key)
      statements = Piece(jnp.concatenate([conj["statement"].ids, statements.ids]),
                         jnp.concatenate([conj["statement"].length, statements.length]))
      statement_ok = jnp.concatenate([conj["new"], statement_ok])

    prompt, prompt_mask = self._prompts(statements)
    proofs = sample(model, prompt, prompt_mask, prove_key,
                    self._sampling(self.proof_width + 1, k))
    proof_text, _ = text_before_stop(proofs.tokens, proofs.completion_mask, self.stop_token_ids)
    statement_mask = jnp.arange(self.statement_width)[None, :] < statements.length[:, None]
    correct = self.checks.check_proof(jnp.repeat(statements.ids, k, axis=0),
                                      jnp.repeat(statement_mask, k, axis=0),
                                      proofs.tokens, proof_text)
    correct = correct.reshape(-1, k) & statement_ok[:, None]
    pass_rate, num_correct = sel.pass_rates(correct, jnp.ones_like(correct))
    proof_len = jnp.sum(proof_text, axis=1, dtype=jnp.int32).reshape(-1, k)

    # Prover examples, and the (prompt, target) hashes shared with the replay table.
    prover_tokens, prover_mask, prover_loss_mask = training_rows(
        proofs.prompt_tokens, proofs.prompt_mask, proofs.tokens, proofs.completion_mask)
    pair_hash = sel.sequence_hashes(prover_tokens, prover_mask)
    prover_w = prover_example_weights(correct, proof_len, pass_rate, pair_hash,
                                      _in_ring(pair_hash, extra["replay"]), c)

    metrics = {}
    new_extra = dict(extra)
    if num_conj:
      conj_rate = pass_rate[:num_conj]
      barely, kept = conjecture_selection(conj["new"], conj_rate, num_correct[:num_conj],
                                          correct[:num_conj], proof_len[:num_conj],
                                          conj["statement"].length, c)
      # Distribution matching toward unproved training statements (official: all of them).
      targets = _random_pick(target_key, ~extra["proved"], c.matching_targets)
      embeddings = jax.lax.stop_gradient(self._embed(model, conj["statement"]))
      target_embeddings = jax.lax.stop_gradient(
          self._embed(model, Piece(train_ids[targets], train_len[targets])))
      conj_w = sel.distribution_matching_weights(embeddings, kept, target_embeddings,
                                                 ~extra["proved"][targets], match_key,
                                                 cap=c.matching_cap)
      rollout = conj["rollout"]
      conj_tokens, conj_mask, conj_loss_mask = training_rows(
          rollout.prompt_tokens, rollout.prompt_mask, rollout.tokens, rollout.completion_mask)
      conj_hash = sel.sequence_hashes(conj_tokens, conj_mask)
      conj_w = jnp.where(kept & ~_in_ring(conj_hash, extra["replay"]), conj_w, 0.0)
      accepted = conj_w > 0
      difficulty = self.checks.difficulty(conj["statement"].ids, conj["mask"])
      metrics.update({
          "conjecture/well_formed": jnp.mean(conj["well_formed"]),
          "conjecture/new": jnp.mean(conj["new"]),
          "conjecture/barely_provable": jnp.mean(barely),
          "conjecture/accepted": jnp.mean(accepted),
          "conjecture/distinct": jnp.mean(conj["distinct"]),
          "conjecture/pass_rate": _masked_mean(conj_rate, conj["new"]),
          "conjecture/difficulty": _masked_mean(difficulty, accepted),
          "conjecture/new_difficulty": _masked_mean(difficulty, conj["new"]),
          "conjecture/weight": jnp.sum(conj_w)})
      new_extra["novelty"] = _ring_insert(extra["novelty"], conj["hashes"], conj["new"])
      new_extra["accepted"] = self._remember(extra["accepted"], conj["statement"], conj_rate,
                                             accepted, state.step)

    def loss_fn(params):
      m = nnx.merge(self.graphdef, params)
      num, den = _weighted_ce_sums(m, prover_tokens, prover_mask, prover_loss_mask, prover_w)
      if num_conj:
        conj_num, conj_den = _weighted_ce_sums(m, conj_tokens, conj_mask, conj_loss_mask, conj_w)
        num, den = num + conj_num, den + conj_den
      return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0), den

    (loss, total_weight), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    has_examples = total_weight > 0   # no examples: no update (Adam's moments would still move)
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(has_examples, new, old),
                                     (params, opt_state), (state.params, state.opt_state))

    # Training statistics of the drawn training statements (the rows after the conjectures).
    train_rate, train_correct = pass_rate[num_conj:], num_correct[num_conj:]
    best_proof = self._shortest_proofs(proofs.tokens, proof_text, correct, proof_len)
    new_extra.update(self._record(extra, picked, train_rate, train_correct,
                                  jax.tree.map(lambda x: x[num_conj:], best_proof)))
    trained = jnp.concatenate([prover_w > 0] + ([conj_w > 0] if num_conj else []))
    trained_hash = jnp.concatenate([pair_hash] + ([conj_hash] if num_conj else []))
    new_extra["replay"] = _ring_insert(extra["replay"], trained_hash, trained)
    new_extra["generated_proofs"] = extra["generated_proofs"] + correct.size

    metrics.update({
        "train/loss": loss, "train/grad_norm": optax.tree.norm(grads),
        "train/proved_fraction": jnp.mean(new_extra["proved"]),
        "train/generated_proofs": new_extra["generated_proofs"].astype(jnp.float32),
        "train/statement_pass_rate": jnp.mean(train_rate),
        "train/prover_examples": jnp.sum(prover_w > 0, dtype=jnp.float32),
        "train/conjecturer_examples": jnp.sum(conj_w > 0, dtype=jnp.float32) if num_conj
        else jnp.float32(0.0),
        "train/proof_length": jnp.sum(jnp.where(correct, proof_len, 0))
        / jnp.maximum(jnp.sum(correct), 1),
        "perf/tokens": jnp.sum(prover_mask) + (jnp.sum(conj_mask) if num_conj else 0)})
    if num_conj:
      metrics["conjecture/pool_size"] = jnp.sum(new_extra["novelty"]["valid"], dtype=jnp.float32)
    state = state._replace(params=params, opt_state=opt_state, extra=new_extra)
    return state, metrics

  def _shortest_proofs(self, tokens, text_mask, correct, proof_len) -> dict:
    """Each statement's shortest correct proof of the step: {"ids": [S, P], "len": [S]} (0: none)."""
    k = self.config.proofs_per_statement
    length = jnp.where(correct, proof_len, jnp.iinfo(jnp.int32).max)
    best = jnp.argmin(length, axis=1)
    rows = jnp.arange(correct.shape[0]) * k + best
    ids = jnp.where(text_mask[rows], tokens[rows], self.pad_id)[:, :self.proof_width]
    found = jnp.any(correct, axis=1)
    return {"ids": ids, "len": jnp.where(found, proof_len[jnp.arange(correct.shape[0]), best], 0)}

  def _record(self, extra, picked, rate, num_correct, best_proof) -> dict:
    """The drawn training statements' statistics after this step's samples."""
    k = self.config.proofs_per_statement
    stored = extra["proof_len"][picked]
    shorter = (best_proof["len"] > 0) & ((stored == 0) | (best_proof["len"] < stored))
    return {
        "proved": extra["proved"].at[picked].set(extra["proved"][picked] | (num_correct > 0)),
        "best_pass_rate": extra["best_pass_rate"].at[picked].max(rate),
        "attempts": extra["attempts"].at[picked].add(k),
        "proof": extra["proof"].at[picked].set(
            jnp.where(shorter[:, None], best_proof["ids"], extra["proof"][picked])),
        "proof_len": extra["proof_len"].at[picked].set(
            jnp.where(shorter, best_proof["len"], stored))}

  def _remember(self, pool: dict, statements: Piece, pass_rate, accepted, step) -> dict:
    """Append the accepted conjectures to the ring of recent ones."""
    capacity = pool["len"].shape[0]
    offset = jnp.cumsum(accepted, dtype=jnp.int32) - 1
    slot = jnp.where(accepted, (pool["write_pos"] + offset) % capacity, capacity)
    num = jnp.sum(accepted, dtype=jnp.int32)
    return {"tokens": pool["tokens"].at[slot].set(statements.ids, mode="drop"),
            "len": pool["len"].at[slot].set(statements.length, mode="drop"),
            "pass_rate": pool["pass_rate"].at[slot].set(pass_rate, mode="drop"),
            "step": pool["step"].at[slot].set(jnp.full_like(slot, step), mode="drop"),
            "write_pos": (pool["write_pos"] + num) % capacity, "total": pool["total"] + num}

  def evaluate(self, params: dict, batch: dict[str, jax.Array], rng: jax.Array
               ) -> dict[str, jax.Array]:
    """pass@1 (mean over eval_samples proofs at the sampling temperature) and pass@k per row."""
    k = self.config.eval_samples
    model = nnx.merge(self.graphdef, params)
    rollout = sample(model, batch["prompt_tokens"], batch["prompt_mask"], rng,
                     self._sampling(self.proof_width + 1, k))
    repeated = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), batch)
    correct = self.verifier(rollout.tokens, rollout.completion_mask, repeated).reshape(-1, k)
    return {"pass_at_1": jnp.mean(correct, axis=1), "pass_at_k": jnp.max(correct, axis=1)}


def build(pieces: RunPieces, settings: dict) -> STP:
  """STP over the run's task, which must be a proof domain (see the module docstring)."""
  config = STPConfig(**settings)
  task, encoder = pieces.task, pieces.encoder
  needed = ("seed_examples", "statement_checks", "check_proof", "is_well_formed", "difficulty",
            "statement_suffix", "conjecture_suffix", "limits")
  missing = [name for name in needed if not hasattr(task, name)]
  if missing:
    raise ValueError(f"STP needs a proof-domain task (e.g. linear_equations); "
                     f"{type(task).__name__} lacks {missing}.")
  if encoder.format.chat_template:
    raise ValueError("STP assembles its prompts from token pieces inside the step; run it "
                     "without a chat template (config.tokenizer.chat_template=False).")
  tokenizer = encoder.tokenizer
  if config.verifier == "in_graph":
    statement_checks = task.statement_checks(tokenizer)
    if statement_checks is None:
      raise ValueError("verifier='in_graph': the task's in-graph checks cannot read this "
                       "tokenizer (not one token per character); use verifier='host'.")
    checks = in_graph_checks(statement_checks)
  else:
    checks = HostChecks(task, tokenizer).checks()
  statement_width, proof_width = task.limits.statement_len, task.limits.proof_len
  tables = build_tables(task, tokenizer, statement_width, proof_width)
  if config.conjectures_per_step and not len(task.seed_examples()):
    raise ValueError("STP needs a seed set to conjecture from (the task has none); use "
                     "mode='expert_iteration' or a task with seed statements.")
  if config.conjectures_per_step > tables.seed.shape[0] + tables.train.shape[0]:
    raise ValueError(f"conjectures_per_step={config.conjectures_per_step} is more than the "
                     f"seed and training statements together.")
  if config.statements_per_step > tables.train.shape[0] or (
      config.matching_targets > tables.train.shape[0]):
    raise ValueError(f"statements_per_step and matching_targets must be at most the "
                     f"{tables.train.shape[0]} training statements.")
  prefix = tuple(encoder.prompt_ids(""))
  return STP(graphdef=pieces.graphdef, optimizer=pieces.optimizer, config=config, tables=tables,
             checks=checks, verifier=pieces.verifier, prefix_ids=prefix,
             statement_suffix_ids=encoder.text_ids(task.statement_suffix, "statement_suffix"),
             conjecture_suffix_ids=encoder.text_ids(task.conjecture_suffix, "conjecture_suffix"),
             statement_width=statement_width, proof_width=proof_width,
             stop_token_ids=pieces.stop_token_ids, pad_id=pieces.pad_id)
