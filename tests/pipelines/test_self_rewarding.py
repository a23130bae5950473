"""The self-generated preference step: round bookkeeping (the reference is the round's start, the
next round starts from the trained model), temporal phases, the DPO loss by hand, SPIN and SPPO
pairs, the online step (one compile, EMA reference), config errors."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from selfimprove.pipelines import self_rewarding
from selfimprove.train_state import TrainState
from selfimprove.verifiers import InGraphVerifier
from tests.pipelines.test_rl import parity_verifier
from tests.pipelines.helpers import arithmetic_task, run_pieces, tiny_model
from tests.train_helpers import assert_trees_equal


def make_pipeline(task, **settings):
  """The pipeline on the tiny random model with the parity verifier (mixed verdicts) and more
  stop ids than <eos> (a random model rarely samples <eos>; candidates must finish to pair)."""
  pieces = run_pieces(task, InGraphVerifier(parity_verifier), optax.adam(1e-2))
  pieces = dataclasses.replace(pieces, stop_token_ids=(task.tokenizer.eos_id, 3, 6, 9, 12, 15))
  defaults = dict(method="self_rewarding", scorer="verifier", num_candidates=4, temperature=1.0,
                  top_p=1.0, steps_per_round=2, judge_eval=dict(enabled=False))
  return self_rewarding.build(pieces, {**defaults, **settings})


def make_state(pipeline, params):
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=pipeline.optimizer.init(params),
                    rng=jax.random.key_data(jax.random.key(0)),
                    extra=pipeline.init_extra(params), skipped_updates=jnp.zeros((), jnp.int32),
                    consecutive_skips=jnp.zeros((), jnp.int32))


def run_steps(pipeline, state, task, count, batch_size=8):
  """`count` jitted steps (advancing state.step as the trainer does): [(state after, metrics)]."""
  step, out = jax.jit(pipeline.step), []
  for i in range(count):
    batch = task.generate(jax.random.fold_in(jax.random.key(1), i), batch_size)
    new_state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(2), i))
    state = new_state._replace(step=new_state.step + 1)
    out.append((state, jax.device_get(metrics)))
  assert step._cache_size() == 1, "the step recompiled"
  return out


@pytest.fixture(scope="module")
def rounds():
  task = arithmetic_task()
  pipeline = make_pipeline(task)
  _, params = tiny_model()
  return task, pipeline, params, run_steps(pipeline, make_state(pipeline, params), task, 5)


def test_the_reference_is_the_rounds_start_and_the_next_round_starts_from_the_trained_model(
    rounds):
  _, pipeline, params, out = rounds
  assert set(out[0][0].extra) == {"round_params"}
  assert_trees_equal(out[0][0].extra["round_params"], params)       # round 0 = the start
  assert_trees_equal(out[1][0].extra["round_params"], params)
  # Step 2 opens round 1 from the params after step 1; step 4 opens round 2 from after step 3.
  assert_trees_equal(out[2][0].extra["round_params"], out[1][0].params)
  assert_trees_equal(out[3][0].extra["round_params"], out[1][0].params)
  assert_trees_equal(out[4][0].extra["round_params"], out[3][0].params)
  for i, (_, metrics) in enumerate(out):
    assert metrics["train/round"] == i // 2
    assert metrics["train/pair_fraction"] > 0
    # At a round's first step the policy is the reference: every implicit reward is 0.
    if i % 2 == 0:
      assert metrics["train/reward_margin"] == pytest.approx(0.0, abs=1e-6), i
    else:
      assert abs(metrics["train/reward_margin"]) > 1e-5, i


def test_the_step_loss_is_dpo_on_the_valid_pairs_by_hand(rounds):
  task, pipeline, _, out = rounds
  state = pipeline.begin_step(out[0][0])                         # step 1, mid round 0
  batch = task.generate(jax.random.fold_in(jax.random.key(1), 1), 8)
  key = jax.random.fold_in(jax.random.key(2), 1)
  pair, choice, _ = jax.jit(pipeline.build_pairs)(state, batch, key)
  logp = jax.jit(pipeline.preference.pair_logprobs)
  chosen, rejected = (np.asarray(x, np.float64) for x in logp(state.params, pair))
  ref_chosen, ref_rejected = (np.asarray(x, np.float64)
                              for x in logp(state.extra["round_params"], pair))
  valid = np.asarray(choice.valid)
  assert 0 < valid.sum() < len(valid)          # some prompts dropped (all candidates tied)
  margin = 0.1 * ((chosen - ref_chosen) - (rejected - ref_rejected))
  expected = np.mean(np.log1p(np.exp(-margin))[valid])
  assert out[1][1]["train/loss"] == pytest.approx(expected, rel=1e-4)
  # The verifier scores: every valid pair is (right, wrong).
  assert out[1][1]["train/chosen_verified"] == 1.0 and out[1][1]["train/rejected_verified"] == 0.0
  assert out[1][1]["train/score_gap"] == 1.0


def test_nll_weight_adds_the_chosen_per_token_nll_to_dpo(rounds):
  task, _, params, out = rounds
  pipeline = make_pipeline(task, nll_weight=0.5)
  state = pipeline.begin_step(out[0][0]._replace(extra=pipeline.init_extra(out[0][0].params)))
  batch = task.generate(jax.random.fold_in(jax.random.key(1), 1), 8)
  key = jax.random.fold_in(jax.random.key(2), 1)
  pair, choice, _ = jax.jit(pipeline.build_pairs)(state, batch, key)
  chosen, rejected = (np.asarray(x, np.float64)
                      for x in jax.jit(pipeline.preference.pair_logprobs)(state.params, pair))
  valid = np.asarray(choice.valid)
  lengths = np.asarray(pair["answer_mask"]).sum(axis=1)
  # Policy = reference here (the round's start), so the DPO term is log 2 on every pair.
  expected = math.log(2.0) + 0.5 * np.mean((-chosen / lengths)[valid])
  _, metrics = jax.jit(pipeline.step)(state, batch, key)
  assert float(metrics["train/loss"]) == pytest.approx(expected, rel=1e-4)


def test_figures_over_pairs_have_no_value_on_a_step_without_a_pair():
  task = arithmetic_task()
  # No candidate counts as finished (10_000 is no token id), so no prompt has a pair.
  pipeline = dataclasses.replace(make_pipeline(task), stop_token_ids=(10_000,))
  _, params = tiny_model()
  _, metrics = run_steps(pipeline, make_state(pipeline, params), task, 1)[0]
  assert metrics["train/pair_fraction"] == 0.0 and metrics["train/loss"] == 0.0
  for key in ("train/reward_margin", "train/chosen_logp", "train/score_gap",
              "train/chosen_verified", "train/chosen_rejected_cosine"):
    assert np.isnan(metrics[key]), key


def _adam_count(opt_state):
  return [int(x) for x in jax.tree.leaves(opt_state) if jnp.issubdtype(x.dtype, jnp.integer)][0]


def test_temporal_rounds_train_a_future_model_then_restart_from_the_rounds_start():
  task = arithmetic_task()
  pipeline = make_pipeline(task, method="temporal", steps_per_round=4, num_candidates=3)
  _, params = tiny_model()
  state = make_state(pipeline, params)
  assert set(state.extra) == {"round_params", "anchor_params", "future_params"}
  out = run_steps(pipeline, state, task, 6)
  assert [m["train/phase"] for _, m in out] == [1, 1, 2, 2, 1, 1]
  # Step 2 (phase 2): M_f = the params after step 1, and training restarts from M_0 = the round's
  # start with a fresh optimizer state (one update counted after it).
  assert_trees_equal(out[2][0].extra["future_params"], out[1][0].params)
  assert out[2][1]["train/reward_margin"] == pytest.approx(0.0, abs=1e-6)
  assert _adam_count(out[1][0].opt_state) == 2 and _adam_count(out[2][0].opt_state) == 1
  # Step 4 opens round 1 from the phase-2 model; the anchor stays the initial model.
  assert_trees_equal(out[4][0].extra["round_params"], out[3][0].params)
  assert_trees_equal(out[5][0].extra["anchor_params"], params)
  assert out[0][1]["train/future_chosen"] == 0.0          # no future model in phase 1
  for _, metrics in out:
    assert 0 <= metrics["train/anchored_rejected"] <= 1


def test_spin_pairs_the_reference_answer_with_the_generators_sample():
  task = arithmetic_task()
  pipeline = make_pipeline(task, method="spin")
  _, params = tiny_model()
  state = make_state(pipeline, params)
  batch = task.generate(jax.random.key(5), 4)
  pair, choice, _ = jax.jit(pipeline.build_pairs)(state, batch, jax.random.key(6))
  np.testing.assert_array_equal(pair["answer_tokens"], batch["answer_tokens"])
  assert pair["rejected_tokens"].shape == (4, pipeline.candidates.max_new_tokens)
  assert np.all(np.asarray(choice.valid))
  (_, metrics), = run_steps(pipeline, state, task, 1)
  assert "train/score_gap" not in metrics and metrics["train/pair_fraction"] == 1.0


def test_sppo_with_the_verifier_regresses_toward_the_win_rates():
  task = arithmetic_task()
  pipeline = make_pipeline(task, method="sppo", scorer="verifier", beta=0.5)
  _, params = tiny_model()
  state = make_state(pipeline, params)
  # The pair of run_steps' first step (same batch and key).
  batch = task.generate(jax.random.fold_in(jax.random.key(1), 0), 8)
  key = jax.random.fold_in(jax.random.key(2), 0)
  pair, choice, _ = jax.jit(pipeline.build_pairs)(state, batch, key)
  valid = np.asarray(choice.valid)
  assert valid.any()
  w_chosen, w_rejected = np.asarray(pair["win_rate_chosen"]), np.asarray(pair["win_rate_rejected"])
  assert np.all(w_chosen[valid] > w_rejected[valid])
  # With K = 4 and 0/1 verdicts the win rates are multiples of 1/6 (pairs of 3 others, ties 1/2).
  np.testing.assert_allclose(np.round(w_chosen * 6), w_chosen * 6, atol=1e-5)
  (_, metrics), = run_steps(pipeline, state, task, 1)
  # Step 0: policy = reference, so each squared term is (eta (P - 1/2))^2 with eta = 1/beta = 2.
  expected = np.mean((0.5 * ((2 * (w_chosen - 0.5)) ** 2 + (2 * (w_rejected - 0.5)) ** 2))[valid])
  assert metrics["train/loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("reference", ["init", "ema"])
def test_online_steps_compile_once_with_a_frozen_or_ema_reference(reference):
  task = arithmetic_task()
  pipeline = make_pipeline(task, steps_per_round=0, reference=reference, ema_decay=0.5,
                           scorer="p_true", template="{problem}{candidate}=", yes="1", no="0")
  _, params = tiny_model()
  state = make_state(pipeline, params)
  assert set(state.extra) == {"ref_params"}
  out = run_steps(pipeline, state, task, 3)            # asserts one compilation
  assert "train/round" not in out[0][1]
  if reference == "init":
    assert_trees_equal(out[2][0].extra["ref_params"], params)
  else:
    expected = jax.tree.map(lambda r, p: 0.5 * r + 0.5 * p, params, out[0][0].params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 out[0][0].extra["ref_params"], expected)


@pytest.mark.parametrize("settings, match", [
    (dict(method="dpo"), "self_rewarding.method='dpo'"),
    (dict(method="temporal", steps_per_round=3), "self_rewarding.steps_per_round=3"),
    (dict(method="temporal", steps_per_round=0), "self_rewarding.steps_per_round=0"),
    (dict(scorer="pairwise"), "self_rewarding.scorer='pairwise'"),
    (dict(method="sppo", scorer="pairwise", pairwise_template=""), "pairwise_template"),
    (dict(num_candidates=1), "self_rewarding.num_candidates=1"),
    (dict(reference="round"), "self_rewarding.reference='round'"),
    (dict(beta=0.0), "self_rewarding.beta=0.0"),
])
def test_config_errors_name_the_field(settings, match):
  with pytest.raises(ValueError, match=match):
    self_rewarding.SelfRewardingConfig(**settings)
