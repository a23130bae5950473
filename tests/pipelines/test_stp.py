"""STP's compiled step (selfimprove/pipelines/stp.py): prompts assembled in the graph, the
in-graph and host checks agreeing inside the step, the statistics it keeps, expert iteration
as a mode, one compilation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from selfimprove.encoding import TextEncoder
from selfimprove.models import Transformer, TransformerConfig
from selfimprove.pipelines import stp as stp_lib
from selfimprove.pipelines.base import RunPieces
from selfimprove.pipelines.stp_rows import Piece, pack_left, text_before_stop
from selfimprove.tasks.linear_equations import LinearEquationsConfig, LinearEquationsTask
from selfimprove.train_state import TrainState
from selfimprove.verifiers import InGraphVerifier

SMALL_TASK = dict(min_terms=3, max_terms=6, max_terms_per_side=3, max_coefficient=9,
                  max_solution=9, max_proof_steps=12, max_proof_len=96, num_seed=16,
                  num_train=24, num_eval=8, seed_max_terms=4)
SMALL_STP = dict(conjectures_per_step=4, statements_per_step=4, proofs_per_statement=3,
                 matching_targets=6, novelty_table_size=32, replay_table_size=128,
                 accepted_pool_size=8, eval_samples=2)


@pytest.fixture(scope="module")
def task():
  return LinearEquationsTask(LinearEquationsConfig(**SMALL_TASK))


def _pieces(task, seed=0):
  config = TransformerConfig(vocab_size=32, embed_dim=32, mlp_dim=64, num_layers=2, num_heads=2,
                             num_kv_heads=1, head_dim=16)
  graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(params=seed)))
  tokenizer = task.tokenizer
  pieces = RunPieces(graphdef=graphdef, optimizer=optax.adam(1e-3), encoder=TextEncoder(tokenizer),
                     verifier=InGraphVerifier(task.in_graph_verifier(tokenizer)),
                     prompt_len=24, answer_len=97, stop_token_ids=(tokenizer.eos_id,), task=task)
  return pieces, nnx.to_pure_dict(state)


def _state(pipeline, params, optimizer):
  return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                    rng=jax.random.key_data(jax.random.key(0)), extra=pipeline.init_extra(params),
                    skipped_updates=jnp.int32(0), consecutive_skips=jnp.int32(0))


def test_prompts_built_in_the_graph_are_the_encoders_rows(task):
  """pack_left of (bos, statement, "|", proof, "|") pieces = encoder.prompt_ids of the text,
  left-padded: the step's prompts are the rows the warm start was trained on."""
  pieces, _ = _pieces(task)
  pipeline = stp_lib.build(pieces, SMALL_STP)
  seeds = task.seed_examples()[:5]
  encoder, tok = pieces.encoder, task.tokenizer
  width = pipeline.statement_width
  ids, lengths = stp_lib._id_table([s["statement"] for s in seeds], width, tok, tok.pad_id, "s")
  proof_ids, proof_lengths = stp_lib._id_table([s["answer"] for s in seeds],
                                               pipeline.proof_width, tok, tok.pad_id, "p")
  for proofs, text_of in ((None, lambda s: s["statement"] + "|"),
                          (Piece(jnp.asarray(proof_ids), jnp.asarray(proof_lengths)),
                           lambda s: task.conjecturer_prompt(s["statement"], s["answer"]))):
    tokens, mask = pipeline._prompts(Piece(jnp.asarray(ids), jnp.asarray(lengths)), proofs)
    for row, seed in enumerate(seeds):
      expected = encoder.prompt_ids(text_of(seed))
      got = np.asarray(tokens[row])[np.asarray(mask[row])]
      assert got.tolist() == expected
      assert not np.any(np.asarray(mask[row])[:tokens.shape[1] - len(expected)])


def test_pack_left_and_text_before_stop_by_hand():
  tokens, mask = pack_left([Piece(jnp.asarray([[7, 0], [7, 0]]), jnp.asarray([1, 0])),
                            Piece(jnp.asarray([[4, 5, 0], [6, 0, 0]]), jnp.asarray([2, 1]))],
                           pad_id=0)
  assert np.asarray(tokens).tolist() == [[0, 0, 7, 4, 5], [0, 0, 0, 0, 6]]
  assert np.asarray(mask).tolist() == [[False] * 2 + [True] * 3, [False] * 4 + [True]]
  text, ended = text_before_stop(jnp.asarray([[4, 2, 5], [4, 5, 6]]), jnp.ones((2, 3), bool), (2,))
  assert np.asarray(text).tolist() == [[True, False, False], [True, True, True]]
  assert np.asarray(ended).tolist() == [True, False]


def _run_steps(pipeline, params, optimizer, num_steps):
  state = _state(pipeline, params, optimizer)
  step = jax.jit(pipeline.step)
  history = []
  for _ in range(num_steps):
    state, metrics = step(state, {}, jax.random.fold_in(jax.random.key(1), state.step))
    state = state._replace(step=state.step + 1)
    history.append(jax.tree.map(np.asarray, metrics))
  return state, history, step


def test_host_checks_give_the_in_graph_checks_results_inside_the_step(task):
  pieces, params = _pieces(task)
  results = []
  for verifier in ("in_graph", "host"):
    pipeline = stp_lib.build(pieces, dict(SMALL_STP, verifier=verifier))
    state, history, step = _run_steps(pipeline, params, pieces.optimizer, 2)
    assert step._cache_size() == 1   # the step compiled once
    results.append((jax.tree.map(np.asarray, state), history))
  (state_a, hist_a), (state_b, hist_b) = results
  jax.tree.map(np.testing.assert_array_equal, state_a.extra, state_b.extra)
  jax.tree.map(np.testing.assert_array_equal, state_a.params, state_b.params)
  for a, b in zip(hist_a, hist_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_expert_iteration_is_a_mode_with_the_same_prover_budget(task):
  pieces, params = _pieces(task)
  stp_config = stp_lib.STPConfig(**SMALL_STP)
  ei = stp_lib.build(pieces, dict(SMALL_STP, mode="expert_iteration"))
  assert ei.config.conjectures_per_step == 0 and ei.config.reinclude_proved == 0.0
  assert ei.config.statements_per_step == (stp_config.statements_per_step
                                           + stp_config.conjectures_per_step)
  state, history, _ = _run_steps(ei, params, pieces.optimizer, 2)
  per_step = ei.config.statements_per_step * ei.config.proofs_per_statement
  assert [float(h["train/generated_proofs"]) for h in history] == [per_step, 2 * per_step]
  assert not any(key.startswith("conjecture/") for key in history[0])
  extra = jax.tree.map(np.asarray, state.extra)
  # Each step draws distinct statements: attempts count K per drawn statement.
  assert extra["attempts"].sum() == 2 * per_step
  assert set(np.unique(extra["attempts"])) <= {0, ei.config.proofs_per_statement,
                                               2 * ei.config.proofs_per_statement}


def test_record_keeps_proved_best_rate_and_the_shortest_proof(task):
  pieces, _ = _pieces(task)
  pipeline = stp_lib.build(pieces, SMALL_STP)
  extra = pipeline.init_extra({})
  width = pipeline.proof_width
  picked = jnp.asarray([3, 5])
  proof = lambda n, v: jnp.where(jnp.arange(width) < n, v, pieces.pad_id)
  first = pipeline._record(extra, picked, jnp.asarray([0.5, 0.0]), jnp.asarray([2, 0]),
                           {"ids": jnp.stack([proof(10, 4), proof(0, 0)]),
                            "len": jnp.asarray([10, 0])})
  extra = dict(extra, **first)
  assert np.flatnonzero(np.asarray(extra["proved"])).tolist() == [3]
  assert float(extra["best_pass_rate"][3]) == 0.5 and int(extra["proof_len"][3]) == 10
  # A later, longer proof and a lower pass rate change neither; a shorter proof replaces it.
  second = pipeline._record(extra, jnp.asarray([3, 7]), jnp.asarray([0.25, 1.0]),
                            jnp.asarray([1, 3]), {"ids": jnp.stack([proof(12, 5), proof(6, 6)]),
                                                  "len": jnp.asarray([12, 6])})
  assert float(second["best_pass_rate"][3]) == 0.5 and int(second["proof_len"][3]) == 10
  assert np.asarray(second["proof"][3]).tolist() == np.asarray(proof(10, 4)).tolist()
  assert int(second["proof_len"][7]) == 6 and bool(second["proved"][7])
  third = pipeline._record(dict(extra, **second), jnp.asarray([3]), jnp.asarray([0.5]),
                           jnp.asarray([1]), {"ids": proof(4, 9)[None], "len": jnp.asarray([4])})
  assert int(third["proof_len"][3]) == 4
  assert np.asarray(third["attempts"])[[3, 5, 7]].tolist() == [9, 3, 3]


def test_shortest_proofs_pick_the_shortest_correct_sample(task):
  pieces, _ = _pieces(task)
  pipeline = stp_lib.build(pieces, SMALL_STP)
  k, n = 3, pipeline.proof_width + 1
  tokens = jnp.arange(2 * k * n, dtype=jnp.int32).reshape(2 * k, n) % 19 + 3
  lengths = jnp.asarray([[9, 4, 6], [5, 7, 8]])
  text = jnp.arange(n)[None, :] < lengths.reshape(-1, 1)
  correct = jnp.asarray([[True, False, True], [False, False, False]])
  best = pipeline._shortest_proofs(tokens, text, correct, lengths)
  assert np.asarray(best["len"]).tolist() == [6, 0]
  assert np.asarray(best["ids"][0][:6]).tolist() == np.asarray(tokens[2][:6]).tolist()
  assert np.all(np.asarray(best["ids"][0][6:]) == pieces.pad_id)


def test_config_errors_name_the_field(task):
  pieces, _ = _pieces(task)
  with pytest.raises(ValueError, match="mode must be one of"):
    stp_lib.build(pieces, dict(SMALL_STP, mode="stpp"))
  with pytest.raises(ValueError, match="statements_per_step and matching_targets"):
    stp_lib.build(pieces, dict(SMALL_STP, statements_per_step=1000))
  with pytest.raises(ValueError, match="proof-domain task"):
    stp_lib.build(dataclasses.replace(pieces, task=object()), SMALL_STP)


def test_prover_example_weights_by_hand():
  """Pass rate <= 0.5, exp(-0.001 len) / #distinct correct proofs, duplicates and pairs already
  trained on (the replay table) get 0."""
  config = stp_lib.STPConfig(**SMALL_STP)
  correct = jnp.asarray([[True, True, False], [True, True, True], [True, False, False]])
  proof_len = jnp.asarray([[10, 10, 7], [5, 6, 7], [20, 3, 3]])
  pass_rate = jnp.asarray([2 / 3, 1.0, 1 / 3])
  pass_rate = pass_rate.at[0].set(0.5)          # row 0 at the cutoff (kept: <=)
  hashes = jnp.asarray([7, 7, 8, 1, 2, 3, 4, 5, 6], jnp.uint32)   # row 0: one proof twice
  seen = jnp.zeros((9,), bool).at[6].set(True)                    # row 2's proof was trained on
  got = np.asarray(stp_lib.prover_example_weights(correct, proof_len, pass_rate, hashes, seen,
                                                  config))
  want = np.zeros(9)
  want[0] = np.exp(-0.001 * 10) / 1               # one distinct correct proof in row 0
  np.testing.assert_allclose(got, want, rtol=1e-6)
  no_dedup = stp_lib.prover_example_weights(correct, proof_len, pass_rate, hashes, seen,
                                            dataclasses.replace(config, distinct_proofs=False))
  np.testing.assert_allclose(np.asarray(no_dedup)[:2], [np.exp(-0.01) / 2] * 2, rtol=1e-6)


def test_conjecture_selection_by_hand():
  """Barely provable = new, >= 1 proof, pass rate < 0.25; the elegance filter then drops the
  lowest 20% of min(proof length / statement length) among them."""
  config = stp_lib.STPConfig(**SMALL_STP)
  k = 8
  num_correct = np.asarray([1, 1, 1, 1, 1, 1, 0, 2, 1])
  correct = np.arange(k)[None, :] < num_correct[:, None]
  pass_rate = num_correct / k
  new = np.ones(9, bool)
  new[5] = False                                  # seen before: never selected
  proof_len = np.full((9, k), 40)
  proof_len[:, 0] = [40, 12, 30, 35, 50, 60, 10, 40, 45]
  statement_len = np.full(9, 10)
  barely, kept = stp_lib.conjecture_selection(jnp.asarray(new), jnp.asarray(pass_rate),
                                              jnp.asarray(num_correct), jnp.asarray(correct),
                                              jnp.asarray(proof_len), jnp.asarray(statement_len),
                                              config)
  # Rows 0-4 and 8 are barely provable (row 6: no proof; row 7: 2/8 = 0.25 is not < 0.25).
  assert np.flatnonzero(np.asarray(barely)).tolist() == [0, 1, 2, 3, 4, 8]
  # Six candidates: cutoff = sorted ratios[int(6 * 0.2)] = 3.0 -> row 1 (ratio 1.2) is dropped.
  assert np.flatnonzero(np.asarray(kept)).tolist() == [0, 2, 3, 4, 8]
