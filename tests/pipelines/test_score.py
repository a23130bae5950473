"""SCoRe pipeline: loss vs hand computation, jitted Stage I/II steps, eval figures, no recompiles."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfimprove import multiturn
from selfimprove.pipelines import score
from selfimprove.objectives import exact_kl, kl_k1, kl_k3, turn_kl
from selfimprove.pipelines.score import (LOSSES, SCoRe, SCoReConfig, multiturn_rl_loss,
                                         online_star_loss, score_loss)
from selfimprove.train_state import TrainState
from selfimprove.verifiers import InGraphVerifier
from tests.pipelines.helpers import (arithmetic_task, levenshtein, perturbed, real_tokens,
                                     run_pieces, tiny_model)

METRIC_KEYS = ("train/loss", "train/grad_norm", "perf/tokens", "train/stage", "train/reward_t1",
               "train/reward_t2", "train/shaped_reward_t2", "train/delta", "train/kl_t1",
               "train/kl_t2", "train/edit_distance", "train/changed", "train/length_t1",
               "train/length_t2")
EVAL_NAMES = ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "edit_distance", "changed")


def parity_verifier(completion_tokens, completion_mask, batch):
  """Reward 1 iff the first completion token id is even (arithmetic prompts).

  A randomly initialised model gets this right about half the time, so the
  reward terms of the loss are not all zero in the tests.
  """
  del batch
  return (completion_mask[:, 0] & (completion_tokens[:, 0] % 2 == 0)).astype(jnp.float32)


def python_parity(tokens, mask) -> float:
  return float(bool(mask[0]) and int(tokens[0]) % 2 == 0)


def seq_sum(x, mask):
  return np.sum(np.where(mask, x, 0.0), axis=1)


def k3(logp, ref):
  d = np.asarray(ref, np.float64) - np.asarray(logp, np.float64)
  return np.exp(d) - d - 1


def exact_kl_by_hand(log_dist, ref_log_dist):
  """sum_v p (log p - log q) per position, in float64, from [..., vocab] log-distributions."""
  p, q = np.exp(np.asarray(log_dist, np.float64)), np.exp(np.asarray(ref_log_dist, np.float64))
  return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def make_pipeline(task, verifier=None, **config) -> SCoRe:
  fields = dict(correction_instruction="=", stage1_steps=2, num_samples_per_prompt=2)
  fields.update(config)
  return score.build(run_pieces(task, verifier), fields)


def make_state(pipeline: SCoRe, params, ref_params) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=pipeline.optimizer.init(params),
                    rng=jax.random.key_data(jax.random.key(0)), extra={"ref_params": ref_params},
                    skipped_updates=jnp.zeros((), jnp.int32),
                    consecutive_skips=jnp.zeros((), jnp.int32))


def test_config_validation_and_baseline_switches():
  base = dict(correction_instruction="=", max_new_tokens=4)
  for field, value, match in [("kl_estimator", "k2", "kl_estimator"),
                              ("advantage", "ppo", "advantage"),
                              ("mode", "dpo", "mode"),
                              ("correction_instruction", "", "correction_instruction"),
                              ("stage1_steps", -1, "stage1_steps")]:
    with pytest.raises(ValueError, match=match):
      SCoReConfig(**dict(base, **{field: value}))
  with pytest.raises(ValueError, match="num_samples_per_prompt >= 2"):
    SCoReConfig(**base, advantage="rloo", num_samples_per_prompt=1)
  baseline = SCoReConfig(**base, stage1_steps=50, alpha=10.0, mode="multiturn_rl_baseline")
  assert (baseline.stage1_steps, baseline.alpha) == (0, 0.0)
  star = SCoReConfig(**base, stage1_steps=50, mode="star_baseline")     # the old name
  assert (star.mode, star.stage1_steps) == ("online_star_baseline", 0)
  for mode in ("offline_star_baseline", "pair_sft_baseline"):
    assert SCoReConfig(**base, stage1_steps=50, mode=mode).stage1_steps == 0
    with pytest.raises(ValueError, match="offline baseline"):
      make_pipeline(arithmetic_task(), mode=mode)      # score.build makes the RL step only
  no_stage1 = SCoReConfig(**base, stage1_steps=50, mode="score_without_stage1")
  assert (no_stage1.stage1_steps, no_stage1.alpha) == (0, 10.0)
  no_shaping = SCoReConfig(**base, stage1_steps=50, mode="score_without_shaping")
  assert (no_shaping.stage1_steps, no_shaping.alpha) == (50, 0.0)
  paper = SCoReConfig(**base)
  assert (paper.alpha, paper.beta1, paper.beta2, paper.advantage, paper.kl_estimator) == (
      10.0, 0.01, 0.1, "reinforce", "exact")
  with pytest.raises(ValueError, match="not in the tokenizer alphabet"):
    make_pipeline(arithmetic_task(), correction_instruction="fix it")


def _loss_inputs(seed=0, rows=4, length=3):
  rng = np.random.default_rng(seed)
  logp1, ref1, logp2, ref2 = (jnp.asarray(-rng.uniform(0.1, 2.0, (rows, length)), jnp.float32)
                              for _ in range(4))
  mask1 = jnp.asarray(rng.uniform(size=(rows, length)) < 0.7).at[:, 0].set(True)
  mask2 = jnp.asarray(rng.uniform(size=(rows, length)) < 0.7).at[:, 0].set(True)
  r1 = jnp.array([0.0, 1.0, 1.0, 0.0])
  r2 = jnp.array([1.0, 1.0, 0.0, 0.0])
  return logp1, ref1, mask1, logp2, ref2, mask2, r1, r2


def _with_k3(logp1, ref1, mask1, logp2, ref2, mask2, r1, r2):
  """The loss functions' arguments: per-token k3 KL in place of the reference log-probs."""
  return (logp1, kl_k3(logp1, ref1), mask1, logp2, kl_k3(logp2, ref2), mask2, r1, r2)


def test_score_loss_by_hand_in_both_stages():
  logp1, ref1, mask1, logp2, ref2, mask2, r1, r2 = inputs = _loss_inputs()
  arrays = _with_k3(*inputs)
  config = SCoReConfig(correction_instruction="=", max_new_tokens=3, alpha=10.0, beta1=0.01,
                       beta2=0.1, kl_estimator="k3", num_samples_per_prompt=2)
  kl1, kl2 = seq_sum(k3(logp1, ref1), mask1), seq_sum(k3(logp2, ref2), mask2)
  s1, s2 = seq_sum(logp1, mask1), seq_sum(logp2, mask2)
  r1n, r2n = np.asarray(r1), np.asarray(r2)

  # Stage I: reward on turn 2 only, KL on turn 1 only (beta2).
  loss, aux = score_loss(*arrays, jnp.array(True), config)
  assert float(loss) == pytest.approx(-np.mean(r2n * s2) + 0.1 * np.mean(kl1), rel=1e-5)
  assert float(aux["kl_t1"]) == pytest.approx(np.mean(kl1), rel=1e-5)
  assert float(aux["kl_t2"]) == pytest.approx(np.mean(kl2), rel=1e-5)
  # Stage II: both rewards, turn 2 shaped (11, 1, -10, 0), beta1 KL on both turns.
  shaped = np.array([11.0, 1.0, -10.0, 0.0])
  loss, aux = score_loss(*arrays, jnp.array(False), config)
  expected = (-np.mean(r1n * s1) + 0.01 * np.mean(kl1) - np.mean(shaped * s2) + 0.01 * np.mean(kl2))
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(aux["shaped_reward_t2"]) == pytest.approx(np.mean(shaped))

  # Gradients in Stage I (k1, so d KL / d logp = 1): turn 1 gets beta2 / rows and no reward
  # term whatever r1 is; turn 2 gets -r2 / rows and no KL.
  k1_config = dataclasses.replace(config, kl_estimator="k1")
  grad1, grad2 = jax.grad(lambda a, b: score_loss(a, kl_k1(a, ref1), mask1, b, kl_k1(b, ref2),
                                                  mask2, r1, r2, jnp.array(True), k1_config)[0],
                          argnums=(0, 1))(logp1, logp2)
  np.testing.assert_allclose(grad1, np.where(mask1, 0.1 / 4, 0.0), atol=1e-7)
  np.testing.assert_allclose(grad2, np.where(mask2, -r2n[:, None] / 4, 0.0), atol=1e-7)


def test_baseline_losses_by_hand():
  logp1, ref1, mask1, logp2, ref2, mask2, r1, r2 = inputs = _loss_inputs(seed=1)
  arrays = _with_k3(*inputs)
  s1, s2 = seq_sum(logp1, mask1), seq_sum(logp2, mask2)
  kl1, kl2 = seq_sum(k3(logp1, ref1), mask1), seq_sum(k3(logp2, ref2), mask2)
  r1n, r2n = np.asarray(r1), np.asarray(r2)
  common = dict(correction_instruction="=", max_new_tokens=3, num_samples_per_prompt=2)
  # Multi-turn RL baseline: Stage II from step 0 with alpha = 0.
  config = SCoReConfig(**common, stage1_steps=10, mode="multiturn_rl_baseline")
  assert LOSSES[config.mode] is multiturn_rl_loss
  loss, _ = multiturn_rl_loss(*arrays, jnp.array(True), config)   # one stage, whatever in_stage1
  expected = -np.mean(r1n * s1) - np.mean(r2n * s2) + 0.01 * (np.mean(kl1) + np.mean(kl2))
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  # STaR: likelihood of attempt 2 of traces whose attempt 2 is right; no turn-1 term, no KL.
  config = SCoReConfig(**common, mode="star_baseline")
  assert LOSSES[config.mode] is online_star_loss
  loss, _ = online_star_loss(*arrays, jnp.array(False), config)
  assert float(loss) == pytest.approx(-np.mean(r2n * s2), rel=1e-5)
  # The ablations: Stage II without the shaping bonus; no Stage I (Stage II from step 0).
  config = SCoReConfig(**common, stage1_steps=10, mode="score_without_shaping")
  loss, _ = LOSSES[config.mode](*arrays, jnp.array(False), config)
  assert float(loss) == pytest.approx(expected, rel=1e-5)        # = multi-turn RL in Stage II
  loss, _ = LOSSES[config.mode](*arrays, jnp.array(True), config)
  assert float(loss) == pytest.approx(-np.mean(r2n * s2) + 0.1 * np.mean(kl1), rel=1e-5)
  config = SCoReConfig(**common, stage1_steps=10, mode="score_without_stage1")
  assert config.stage1_steps == 0
  loss, _ = LOSSES[config.mode](*arrays, jnp.array(False), config)
  shaped = r2n + 10 * (r2n - r1n)
  assert float(loss) == pytest.approx(-np.mean(r1n * s1) - np.mean(shaped * s2) +
                                      0.01 * (np.mean(kl1) + np.mean(kl2)), rel=1e-5)
  # RLOO with 2 samples per prompt: A = r - other = +-(r_a - r_b).
  config = SCoReConfig(**common, advantage="rloo")
  loss, _ = score_loss(*arrays, jnp.array(False), config)
  shaped = r2n + 10 * (r2n - r1n)
  rloo = lambda r: r - r.reshape(-1, 2)[:, ::-1].reshape(-1)
  expected = (-np.mean(rloo(r1n) * s1) - np.mean(rloo(shaped) * s2) +
              0.01 * (np.mean(kl1) + np.mean(kl2)))
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_exact_kl_is_the_kl_of_the_two_distributions_and_zero_for_identical_ones():
  rng = np.random.default_rng(3)
  logits, ref_logits = rng.normal(size=(2, 4, 3, 7)) * 2
  log_p = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(jnp.asarray(ref_logits, jnp.float32), axis=-1)
  p, q = np.exp(np.asarray(log_p, np.float64)), np.exp(np.asarray(log_q, np.float64))
  direct = np.sum(p * np.log(p / q), axis=-1)                      # sum_v p(v) log p(v)/q(v)
  np.testing.assert_allclose(exact_kl(log_p, log_q), direct, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(exact_kl(log_p, log_q)) > 0)
  np.testing.assert_allclose(exact_kl(log_p, log_p), 0.0, atol=1e-7)
  # Its gradient is zero at ref = pi (a minimum), unlike a sampled estimate's.
  grad = jax.grad(lambda z: jnp.sum(exact_kl(jax.nn.log_softmax(z), log_p)))(
      jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)
  # turn_kl: "exact" from the distributions; "k1"/"k3" from the sampled tokens' log-probs.
  tokens = jnp.asarray(rng.integers(0, 7, size=(4, 3)))
  take = lambda lp: np.take_along_axis(np.asarray(lp), np.asarray(tokens)[..., None], -1)[..., 0]
  np.testing.assert_allclose(turn_kl(log_p, log_q, take(log_p), take(log_q), "exact"), direct,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(turn_kl(log_p, log_q, take(log_p), take(log_q), "k3"),
                             kl_k3(take(log_p), take(log_q)), rtol=1e-6)


@pytest.fixture(scope="module")
def parity_run():
  """A SCoRe pipeline on the parity reward and its jitted step, run for 4 steps (2 per stage)."""
  task = arithmetic_task()
  pipeline = make_pipeline(task, InGraphVerifier(parity_verifier))
  _, params = tiny_model()
  ref_params = perturbed(params, 0.05, seed=1)     # so both KLs are non-zero
  state = make_state(pipeline, params, ref_params)
  batch = task.generate(jax.random.key(3), 4)
  step = jax.jit(pipeline.step)
  states, metrics, keys = [state], [], []
  for i in range(4):
    key = jax.random.fold_in(jax.random.key(7), i)
    new_state, step_metrics = step(states[-1], batch, key)
    states.append(new_state._replace(step=states[-1].step + 1))   # the trainer advances step
    metrics.append(jax.device_get(step_metrics))
    keys.append(key)
  return dict(pipeline=pipeline, batch=batch, step=step, states=states, metrics=metrics, keys=keys)


def test_steps_change_params_with_finite_metrics_and_one_compile(parity_run):
  states, metrics = parity_run["states"], parity_run["metrics"]
  for before, after, step_metrics in zip(states, states[1:], metrics):
    assert set(METRIC_KEYS) <= set(step_metrics)
    for key, value in step_metrics.items():
      assert np.shape(value) == () and np.isfinite(value), key
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                           before.params, after.params)
    assert all(jax.tree.leaves(changed))
    # The reference policy never moves.
    jax.tree.map(np.testing.assert_array_equal, before.extra, after.extra)
  assert [float(m["train/stage"]) for m in metrics] == [1.0, 1.0, 2.0, 2.0]
  assert all(m["train/kl_t1"] > 0 and m["train/kl_t2"] > 0 for m in metrics)   # k3 >= 0, ref differs
  assert parity_run["step"]._cache_size() == 1, "the step recompiled across steps or stages"


def _replay_fn(pipeline, state, batch, key):
  rollout = pipeline.rollout(state.params, batch, key, pipeline.sampling_config(train=True))
  dists = pipeline.turn_log_distributions(state.params, rollout)
  refs = pipeline.turn_log_distributions(state.extra["ref_params"], rollout)
  token = lambda dist, tokens, mask: multiturn.token_logprobs_of(dist, tokens, mask)
  logps = (token(dists[0], rollout.tokens_t1, rollout.mask_t1),
           token(dists[1], rollout.tokens_t2, rollout.mask_t2))
  ref_logps = (token(refs[0], rollout.tokens_t1, rollout.mask_t1),
               token(refs[1], rollout.tokens_t2, rollout.mask_t2))
  return rollout, logps, ref_logps, dists, refs


def _replay(pipeline, state, batch, key):
  """A step's rollout, token log-probs (policy, ref) and log-distributions (policy, ref)."""
  return jax.device_get(jax.jit(_replay_fn, static_argnums=0)(pipeline, state, batch, key))


@pytest.mark.parametrize("index", [0, 2])
def test_step_loss_matches_hand_computation_from_the_rollout(parity_run, index):
  """Step `index` (0: Stage I, 2: Stage II) re-done from its rollout, logps and rewards by hand."""
  pipeline, state = parity_run["pipeline"], parity_run["states"][index]
  step_metrics, key = parity_run["metrics"][index], parity_run["keys"][index]

  rollout, (logp1, logp2), _, dists, refs = _replay(pipeline, state, parity_run["batch"], key)
  assert pipeline.config.kl_estimator == "exact"      # the default: the paper's KL(pi || ref)
  mask1, mask2 = np.asarray(rollout.mask_t1), np.asarray(rollout.mask_t2)
  r1, r2 = np.asarray(rollout.reward_t1), np.asarray(rollout.reward_t2)
  assert 0 < r1.mean() < 1 and 0 < r2.mean() < 1, "want mixed rewards for a meaningful check"
  assert step_metrics["train/reward_t1"] == pytest.approx(r1.mean())
  assert step_metrics["train/reward_t2"] == pytest.approx(r2.mean())
  # The parity reward is recomputed from the attempts' tokens in Python.
  for row in range(len(r1)):
    assert r1[row] == python_parity(rollout.tokens_t1[row], mask1[row])
    assert r2[row] == python_parity(rollout.tokens_t2[row], mask2[row])
  s1, s2 = seq_sum(logp1, mask1), seq_sum(logp2, mask2)
  kl1, kl2 = (seq_sum(exact_kl_by_hand(dist, ref), mask)
              for dist, ref, mask in zip(dists, refs, (mask1, mask2)))
  config = pipeline.config
  if index < config.stage1_steps:
    expected = -np.mean(r2 * s2) + config.beta2 * np.mean(kl1)
  else:
    shaped = r2 + config.alpha * (r2 - r1)
    expected = (-np.mean(r1 * s1) + config.beta1 * np.mean(kl1) - np.mean(shaped * s2) +
                config.beta1 * np.mean(kl2))
  assert float(step_metrics["train/loss"]) == pytest.approx(expected, rel=1e-4, abs=1e-5)
  assert float(step_metrics["train/kl_t1"]) == pytest.approx(np.mean(kl1), rel=1e-4, abs=1e-6)
  tokens = (rollout.prompt_mask.sum() + rollout.lengths_t1.sum() + rollout.context_mask_t2.sum() +
            rollout.lengths_t2.sum())
  assert float(step_metrics["perf/tokens"]) == float(tokens)


def test_the_step_with_the_exact_kl_penalises_the_kl_of_the_distributions(parity_run):
  """kl_estimator="exact": the logged KL is sum_t KL(pi_t || ref_t) of the re-scored turns."""
  base = parity_run["pipeline"]
  pipeline = dataclasses.replace(base, config=dataclasses.replace(base.config, kl_estimator="exact"))
  state, key = parity_run["states"][2], parity_run["keys"][2]
  _, metrics = jax.jit(pipeline.step)(state, parity_run["batch"], key)
  rollout, _, _, (dist1, dist2), (ref1, ref2) = _replay(pipeline, state, parity_run["batch"], key)
  for dist, ref, mask, name in ((dist1, ref1, rollout.mask_t1, "train/kl_t1"),
                                (dist2, ref2, rollout.mask_t2, "train/kl_t2")):
    per_token = exact_kl_by_hand(dist, ref)
    assert float(metrics[name]) == pytest.approx(np.mean(seq_sum(per_token, mask)), rel=1e-4)
    assert float(metrics[name]) > 0


def test_evaluate_figures_match_the_attempts(parity_run):
  pipeline, batch = parity_run["pipeline"], parity_run["batch"]
  params = parity_run["states"][-1].params
  evaluate = jax.jit(pipeline.evaluate)
  values = jax.device_get(evaluate(params, batch, jax.random.key(0)))
  assert set(values) == set(EVAL_NAMES) == set(pipeline.eval_metric_names)
  for name in EVAL_NAMES:
    assert np.shape(values[name]) == (4,), name
  # Greedy by default: the key does not matter.
  again = jax.device_get(evaluate(params, batch, jax.random.key(1)))
  jax.tree.map(np.testing.assert_array_equal, values, again)
  # Hand check on the same greedy attempts.
  rollout = jax.jit(pipeline.rollout, static_argnums=3)(
      params, batch, jax.random.key(0), pipeline.sampling_config(train=False))
  assert rollout.tokens_t1.shape[0] == 4          # one attempt per prompt in eval
  for row in range(4):
    first = real_tokens(rollout.tokens_t1[row], rollout.mask_t1[row])
    second = real_tokens(rollout.tokens_t2[row], rollout.mask_t2[row])
    r1 = python_parity(rollout.tokens_t1[row], rollout.mask_t1[row])
    r2 = python_parity(rollout.tokens_t2[row], rollout.mask_t2[row])
    assert values["acc_t1"][row] == r1 and values["acc_t2"][row] == r2
    assert values["delta"][row] == r2 - r1
    assert values["delta_i2c"][row] == float(r1 == 0 and r2 == 1)
    assert values["delta_c2i"][row] == float(r1 == 1 and r2 == 0)
    distance = levenshtein(first, second) / max(len(first), len(second), 1)
    assert values["edit_distance"][row] == pytest.approx(distance)
    assert values["changed"][row] == float(first != second)


def test_reference_policy_lives_in_the_state():
  pipeline = make_pipeline(arithmetic_task())
  _, params = tiny_model()
  extra = pipeline.init_extra(params)
  assert set(extra) == {"ref_params"}
  jax.tree.map(np.testing.assert_array_equal, extra["ref_params"], params)
  shardings = pipeline.extra_shardings({"a": "sharding"})
  assert shardings == {"ref_params": {"a": "sharding"}}


@pytest.mark.parametrize("mode", ["multiturn_rl_baseline", "online_star_baseline"])
def test_baseline_modes_trace_the_same_step(mode):
  """The baselines are the same step with other coefficients: it traces with the same outputs."""
  task = arithmetic_task()
  pipeline = make_pipeline(task, mode=mode)
  _, params = tiny_model()
  state = make_state(pipeline, params, params)
  batch = task.generate(jax.random.key(0), 2)
  new_state, metrics = jax.eval_shape(pipeline.step, state, batch, jax.random.key(1))
  assert set(METRIC_KEYS) <= set(metrics) and all(m.shape == () for m in metrics.values())
  assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_sampled_evaluation(parity_run):
  """eval_greedy=False: attempts are sampled at eval_temperature, reproducibly per key, and the
  figures are those of exactly the sampled attempts."""
  base = parity_run["pipeline"]
  pipeline = dataclasses.replace(base, config=dataclasses.replace(base.config, eval_greedy=False,
                                                                  eval_temperature=1.0))
  sampling = pipeline.sampling_config(train=False)
  assert not sampling.greedy and sampling.temperature == 1.0 and sampling.num_samples_per_prompt == 1
  params, batch = parity_run["states"][-1].params, parity_run["batch"]
  evaluate = jax.jit(pipeline.evaluate)
  rollout_fn = jax.jit(pipeline.rollout, static_argnums=3)
  values = jax.device_get(evaluate(params, batch, jax.random.key(0)))
  jax.tree.map(np.testing.assert_array_equal, values,
               jax.device_get(evaluate(params, batch, jax.random.key(0))))
  rollouts = [rollout_fn(params, batch, jax.random.key(k), sampling) for k in range(4)]
  assert len({np.asarray(r.tokens_t1).tobytes() for r in rollouts}) > 1   # the key matters
  rollout = rollouts[0]
  for row in range(rollout.tokens_t1.shape[0]):
    r1 = python_parity(rollout.tokens_t1[row], rollout.mask_t1[row])
    r2 = python_parity(rollout.tokens_t2[row], rollout.mask_t2[row])
    assert (values["acc_t1"][row], values["acc_t2"][row]) == (r1, r2)
    assert values["delta_i2c"][row] - values["delta_c2i"][row] == r2 - r1
