"""SCoRe's offline SFT baselines: data sampled once from the starting model, pairs as the paper
builds them, the loss against hand computation, per-prompt sampling keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from selfimprove import multiturn
from selfimprove.pipelines import score_baselines
from selfimprove.pipelines.score_baselines import (OfflineCorrectionSFT, pair_targets,
                                                   problem_keys)
from selfimprove.sampling import SamplingConfig, sample
from selfimprove.verifiers import InGraphVerifier
from tests.pipelines.helpers import arithmetic_task, perturbed, real_tokens, run_pieces, tiny_model
from tests.pipelines.test_score import make_state, parity_verifier, seq_sum


def build(mode: str, seed: int = 0) -> OfflineCorrectionSFT:
  task = arithmetic_task()
  pieces = run_pieces(task, InGraphVerifier(parity_verifier))
  pieces = type(pieces)(**{**pieces.__dict__, "seed": seed})
  return score_baselines.build(pieces, dict(correction_instruction="=", stage1_steps=5,
                                            num_samples_per_prompt=2, mode=mode))


def test_pair_targets_by_hand():
  """Wrong attempt -> the first right attempt of its problem; right -> itself; no right -> dropped."""
  tokens = jnp.arange(8)[:, None] * jnp.ones((1, 3), jnp.int32)     # row i is [i, i, i]
  mask = jnp.ones((8, 3), bool).at[:, 2].set(jnp.arange(8) % 2 == 0)
  reward = jnp.array([0., 1., 1., 0., 0., 0., 1., 1.])               # problems of 2 attempts
  target, target_mask, weight = pair_targets(tokens, mask, reward, 2)
  np.testing.assert_array_equal(target[:, 0], [1, 1, 2, 2, 4, 5, 6, 7])
  np.testing.assert_array_equal(target_mask, mask[np.array([1, 1, 2, 2, 4, 5, 6, 7])])
  np.testing.assert_array_equal(weight, [1, 1, 1, 1, 0, 0, 1, 1])
  # Groups of 4: the wrong ones take the first right attempt of their group, not a later one.
  target, _, weight = pair_targets(tokens, mask, jnp.array([0., 0., 1., 1., 0., 0., 0., 0.]), 4)
  np.testing.assert_array_equal(target[:, 0], [2, 2, 2, 3, 4, 5, 6, 7])
  np.testing.assert_array_equal(weight, [1, 1, 1, 1, 0, 0, 0, 0])


def test_problem_keys_depend_on_the_problem_only():
  task = arithmetic_task()
  batch = task.generate(jax.random.key(3), 6)
  keys = jax.random.key_data(problem_keys(jax.random.key(0), batch["prompt_tokens"],
                                          batch["prompt_mask"]))
  order = np.array([5, 2, 0, 1, 4, 3])
  shuffled = jax.random.key_data(problem_keys(jax.random.key(0), batch["prompt_tokens"][order],
                                              batch["prompt_mask"][order]))
  np.testing.assert_array_equal(shuffled, np.asarray(keys)[order])
  assert len({np.asarray(k).tobytes() for k in keys}) == len(
      {np.asarray(p).tobytes() for p in batch["prompt_tokens"]})
  other_seed = jax.random.key_data(problem_keys(jax.random.key(1), batch["prompt_tokens"],
                                                batch["prompt_mask"]))
  assert not np.array_equal(other_seed, keys)


def test_sampling_with_one_key_per_prompt_ignores_the_rest_of_the_batch():
  graphdef, params = tiny_model()
  model = nnx.merge(graphdef, params)
  task = arithmetic_task()
  batch = task.generate(jax.random.key(0), 4)
  keys = jax.random.split(jax.random.key(7), 4)
  config = SamplingConfig(max_new_tokens=4, num_samples_per_prompt=3,
                          stop_token_ids=(task.tokenizer.eos_id,))
  run = jax.jit(lambda p, m, k: sample(model, p, m, k, config).tokens)
  whole = np.asarray(run(batch["prompt_tokens"], batch["prompt_mask"], keys))
  for i in range(4):
    alone = np.asarray(run(batch["prompt_tokens"][i:i + 1], batch["prompt_mask"][i:i + 1],
                           keys[i:i + 1]))
    np.testing.assert_array_equal(alone, whole[3 * i:3 * i + 3])
  assert len({row.tobytes() for row in whole}) > 4     # the samples of a prompt differ


@pytest.fixture(scope="module")
def offline_star_run():
  pipeline = build("offline_star_baseline")
  _, params = tiny_model()
  ref = perturbed(params, 0.3, seed=1)          # the starting model differs from the policy
  batch = arithmetic_task().generate(jax.random.key(0), 4)
  step = jax.jit(pipeline.step)
  state0 = make_state(pipeline, params, ref)
  state1, metrics0 = step(state0, batch, jax.random.key(10))
  return dict(pipeline=pipeline, params=params, ref=ref, batch=batch, step=step,
              states=(state0, state1), metrics0=metrics0)


def test_offline_star_data_comes_from_the_starting_model_and_is_never_refreshed(offline_star_run):
  run = offline_star_run
  pipeline, batch, (state0, state1) = run["pipeline"], run["batch"], run["states"]
  assert pipeline.scorer.config.mode == "offline_star_baseline"
  assert pipeline.scorer.config.stage1_steps == 0
  make = jax.jit(lambda params, keys: pipeline.make_examples(pipeline.scorer, params, batch, keys))
  keys = problem_keys(jax.random.key(0), batch["prompt_tokens"], batch["prompt_mask"])
  examples = make(run["ref"], keys)
  # The data is the starting model's two-turn rollout under the problems' keys ...
  rollout = jax.jit(pipeline.scorer.rollout, static_argnums=3)(
      run["ref"], batch, keys, pipeline.scorer.sampling_config(train=True))
  np.testing.assert_array_equal(examples.target, rollout.tokens_t2)
  np.testing.assert_array_equal(examples.context, rollout.context_t2)
  np.testing.assert_array_equal(examples.weight, rollout.reward_t2)
  # ... whatever the step's key or the current parameters (after an update they differ).
  assert not np.array_equal(jax.tree.leaves(state1.params)[0], jax.tree.leaves(state0.params)[0])
  _, metrics1 = run["step"](state1, batch, jax.random.key(99))
  for name in ("train/kept_fraction", "train/data_draft_reward", "train/data_target_reward"):
    assert float(metrics1[name]) == float(run["metrics0"][name]), name
  assert float(run["metrics0"]["train/kept_fraction"]) == float(np.mean(rollout.reward_t2))
  # Another run seed is another dataset.
  other = build("offline_star_baseline", seed=1)
  assert other.data_seed == 1 and pipeline.data_seed == 0
  # The loss: -mean_rows(weight * log pi(y2 | x, y1, p)) under the policy, by hand.
  model = nnx.merge(pipeline.scorer.graphdef, state0.params)
  logp = multiturn.completion_logprobs(model, examples.context, examples.context_mask,
                                       examples.target, examples.target_mask)
  expected = -np.mean(np.asarray(examples.weight) * seq_sum(np.asarray(logp),
                                                            np.asarray(examples.target_mask)))
  assert float(run["metrics0"]["train/loss"]) == pytest.approx(expected, rel=1e-4, abs=1e-6)
  assert 0 < float(run["metrics0"]["train/kept_fraction"]) < 1   # the filter did something


def test_pair_sft_examples_pair_the_starting_models_attempts():
  pipeline = build("pair_sft_baseline")
  _, params = tiny_model()
  ref = perturbed(params, 0.3, seed=2)
  batch = arithmetic_task().generate(jax.random.key(5), 8)
  keys = problem_keys(jax.random.key(0), batch["prompt_tokens"], batch["prompt_mask"])
  examples = jax.jit(lambda p: pipeline.make_examples(pipeline.scorer, p, batch, keys))(ref)
  sampling = pipeline.scorer.sampling_config(train=True)
  first = sample(nnx.merge(pipeline.scorer.graphdef, ref), batch["prompt_tokens"],
                 batch["prompt_mask"], keys, sampling)
  reward = np.asarray(parity_verifier(first.tokens, first.completion_mask, None))
  np.testing.assert_array_equal(examples.draft_reward, reward)
  instruction = list(pipeline.scorer.instruction_ids)
  checked = 0
  for row in range(16):
    problem, attempts = row // 2, [2 * (row // 2), 2 * (row // 2) + 1]
    draft = real_tokens(first.tokens[row], first.completion_mask[row])
    prompt = real_tokens(batch["prompt_tokens"][problem], batch["prompt_mask"][problem])
    context = real_tokens(examples.context[row], examples.context_mask[row])
    assert context == prompt + draft + instruction           # [x, y-, p]
    right = [a for a in attempts if reward[a] == 1]
    if reward[row] == 1:
      expected = row
    elif right:
      expected = right[0]
    else:
      assert examples.weight[row] == 0
      continue
    assert examples.weight[row] == 1
    assert real_tokens(examples.target[row], examples.target_mask[row]) == real_tokens(
        first.tokens[expected], first.completion_mask[expected])
    checked += reward[row] == 0
  assert checked > 0        # at least one wrong attempt was paired with a right one
  # The step's loss on these pairs: -mean_rows(weight * log pi(y+ | x, y-, p)), by hand.
  state = make_state(pipeline, params, ref)
  _, metrics = jax.jit(pipeline.step)(state, batch, jax.random.key(0))
  logp = multiturn.completion_logprobs(nnx.merge(pipeline.scorer.graphdef, params),
                                       examples.context, examples.context_mask, examples.target,
                                       examples.target_mask)
  expected = -np.mean(np.asarray(examples.weight) * seq_sum(np.asarray(logp),
                                                            np.asarray(examples.target_mask)))
  assert float(metrics["train/loss"]) == pytest.approx(expected, rel=1e-4, abs=1e-6)
  assert float(metrics["train/kept_fraction"]) == pytest.approx(float(np.mean(examples.weight)))


def test_offline_modes_step_and_evaluate_like_score():
  for mode in ("offline_star_baseline", "pair_sft_baseline"):
    pipeline = build(mode)
    _, params = tiny_model()
    state = make_state(pipeline, params, params)
    batch = arithmetic_task().generate(jax.random.key(0), 2)
    new_state, metrics = jax.eval_shape(pipeline.step, state, batch, jax.random.key(1))
    assert {"train/loss", "train/grad_norm", "perf/tokens", "train/kept_fraction"} <= set(metrics)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert pipeline.eval_metric_names == pipeline.scorer.eval_metric_names
    assert set(pipeline.init_extra(params)) == {"ref_params"}
