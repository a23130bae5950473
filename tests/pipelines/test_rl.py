"""RL pipeline (GRPO family): one compile, exactly the forward passes needed, several updates per
step, reward sources and the self-judge against hand computation, KL to the reference."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from selfimprove import judging, multiturn
from selfimprove.models.transformer import Transformer
from selfimprove.objectives import clipped_policy_loss, grpo_advantages
from selfimprove.pipelines import judge_prompts, register_pipeline, rl, rl_rewards
from selfimprove.sampling import sample
from selfimprove.train_state import TrainState
from selfimprove.verifiers import InGraphVerifier
from tests.pipelines.helpers import arithmetic_task, perturbed, real_tokens, run_pieces, tiny_model

register_pipeline("rl", rl.build, section="rl")   # until the registry line lands (a no-op after)

JUDGE = dict(template="{problem}{candidate}=", yes="1", no="0")
WEIGHTS = dict(verifier=1.0, format=0.5, length=-0.25, self_judge=0.3)
ALL_SOURCES = {name: dict(weight=weight, **(JUDGE if name == "self_judge" else {}))
               for name, weight in WEIGHTS.items()}
METRIC_KEYS = ("train/loss", "train/grad_norm", "perf/tokens", "train/reward", "train/reward_std",
               "train/kl", "train/clip_fraction", "train/length", "train/verified_accuracy",
               *(f"train/reward/{name}" for name in WEIGHTS))


def parity_verifier(completion_tokens, completion_mask, batch):
  """1.0 iff the first completion token id is even: mixed rewards from a random model."""
  del batch
  return (completion_mask[:, 0] & (completion_tokens[:, 0] % 2 == 0)).astype(jnp.float32)


def make_pipeline(task, rewards, optimizer=None, **config) -> rl.RL:
  pieces = run_pieces(task, InGraphVerifier(parity_verifier), optimizer)
  return rl.build(pieces, dict(dict(rewards=rewards, group_size=4), **config))


def make_state(pipeline: rl.RL, params, ref_params=None) -> TrainState:
  extra = pipeline.init_extra(params)
  if ref_params is not None:
    extra = {"ref_params": ref_params}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=pipeline.optimizer.init(params),
                    rng=jax.random.key_data(jax.random.key(0)), extra=extra,
                    skipped_updates=jnp.zeros((), jnp.int32),
                    consecutive_skips=jnp.zeros((), jnp.int32))


@pytest.fixture(scope="module")
def run():
  """Every source on, k3 KL to a perturbed reference, 3 jitted steps."""
  task = arithmetic_task()
  pipeline = make_pipeline(task, ALL_SOURCES, kl_coef=0.05, kl_estimator="k3")
  _, params = tiny_model()
  state = make_state(pipeline, params, perturbed(params, 0.05, seed=1))
  batch = task.generate(jax.random.key(3), 4)
  step = jax.jit(pipeline.step)
  states, metrics, keys = [state], [], []
  for i in range(3):
    key = jax.random.fold_in(jax.random.key(7), i)
    new_state, step_metrics = step(states[-1], batch, key)
    states.append(new_state)
    metrics.append(jax.device_get(step_metrics))
    keys.append(key)
  return dict(task=task, pipeline=pipeline, batch=batch, step=step, states=states,
              metrics=metrics, keys=keys)


def test_steps_compile_once_and_log_every_figure(run):
  for before, after, step_metrics in zip(run["states"], run["states"][1:], run["metrics"]):
    assert set(step_metrics) == set(METRIC_KEYS)
    for key, value in step_metrics.items():
      assert np.shape(value) == () and np.isfinite(value), key
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                            before.params, after.params)))
    jax.tree.map(np.testing.assert_array_equal, before.extra, after.extra)   # frozen reference
    # The reward is the weighted sum of the sources (their batch means are linear).
    combined = sum(w * step_metrics[f"train/reward/{name}"] for name, w in WEIGHTS.items())
    assert step_metrics["train/reward"] == pytest.approx(combined, rel=1e-5, abs=1e-6)
    assert step_metrics["train/kl"] > 0 and step_metrics["train/clip_fraction"] == 0.0
  assert run["step"]._cache_size() == 1, "the step recompiled"


def _forward_calls(pipeline, state, batch, monkeypatch):
  """(tokens shape, with a KV cache) of every model call traced in one step."""
  calls, original = [], Transformer.__call__

  def counting(self, tokens, input_mask, cache=None, **kwargs):
    calls.append((tuple(tokens.shape), cache is not None))
    return original(self, tokens, input_mask, cache, **kwargs)

  monkeypatch.setattr(Transformer, "__call__", counting)
  jax.eval_shape(lambda *args: pipeline.step(*args), state, batch, jax.random.key(0))
  monkeypatch.undo()
  return calls


@pytest.mark.parametrize("kl_coef, judge", [(0.0, False), (0.1, False), (0.0, True)])
def test_the_step_runs_exactly_the_forward_passes_it_needs(monkeypatch, kl_coef, judge):
  """num_iterations = 1: prefill, decode, one policy pass with gradients; + the reference pass
  only with a KL term, + one judge pass per self-judge; never a pass for old log-probs."""
  task = arithmetic_task()
  rewards = {"verifier": {"weight": 1.0}, "self_judge": dict(JUDGE, weight=float(judge))}
  pipeline = make_pipeline(task, rewards, kl_coef=kl_coef)
  _, params = tiny_model()
  state = make_state(pipeline, params)
  assert set(state.extra) == ({"ref_params"} if kl_coef else set())
  rows, prompt_len, new = 2 * 4, task.prompt_len, pipeline.max_new_tokens
  judge_len = 1 + prompt_len + new + 1      # template pieces: <bos>, "", "="
  expected = [((2, prompt_len), True), ((rows, 1), True)]  # the sampler: prefill once per prompt
  expected += [((rows, judge_len), False)] * judge                # the judge (current policy)
  expected += [((rows, prompt_len + new), False)] * (kl_coef > 0)  # the reference
  expected += [((rows, prompt_len + new), False)]                 # the policy, with gradients
  assert _forward_calls(pipeline, state, task.generate(jax.random.key(0), 2),
                        monkeypatch) == expected


def test_two_iterations_are_two_clipped_updates_on_the_same_samples():
  """num_iterations = 2 equals two hand-made updates with old log-probs = the sampler's."""
  task = arithmetic_task()
  optimizer = optax.sgd(0.5)     # linear in the gradients: a tight comparison
  pipeline = make_pipeline(task, {"verifier": {"weight": 1.0}}, optimizer, num_iterations=2)
  graphdef, params = tiny_model()
  batch, key = task.generate(jax.random.key(5), 4), jax.random.key(11)
  new_state, metrics = jax.jit(pipeline.step)(make_state(pipeline, params), batch, key)

  sampling = pipeline.sampling_config(True)
  rollout = jax.jit(lambda p: sample(nnx.merge(graphdef, p), batch["prompt_tokens"],
                                     batch["prompt_mask"], key, sampling))(params)
  rewards = np.array([float(m[0] and t[0] % 2 == 0) for t, m in
                      zip(np.asarray(rollout.tokens), np.asarray(rollout.completion_mask))])
  assert 0 < rewards.mean() < 1
  assert metrics["train/reward"] == pytest.approx(rewards.mean())
  advantages = grpo_advantages(jnp.asarray(rewards), 4, True, 1e-4)

  def loss(p):
    logp = multiturn.completion_logprobs(nnx.merge(graphdef, p), rollout.prompt_tokens,
                                         rollout.prompt_mask, rollout.tokens,
                                         rollout.completion_mask)
    return clipped_policy_loss(logp, rollout.logprobs, advantages, rollout.completion_mask,
                               0.2, 0.2, "token_mean")[0]

  by_hand, opt_state = [params], optimizer.init(params)
  for _ in range(2):
    updates, opt_state = optimizer.update(jax.grad(loss)(by_hand[-1]), opt_state, by_hand[-1])
    by_hand.append(optax.apply_updates(by_hand[-1], updates))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               new_state.params, by_hand[2])
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), by_hand[2], by_hand[1])
  assert max(jax.tree.leaves(moved)) > 1e-4     # the second update moved the params again


def _replay(pipeline, params, ref_params, batch, key):
  """A step's rollout, total reward and per-source rewards, jitted."""
  def fn(params, ref_params):
    rollout = sample(nnx.merge(pipeline.graphdef, params), batch["prompt_tokens"],
                     batch["prompt_mask"], key, pipeline.sampling_config(True))
    rows = jax.tree.map(lambda x: jnp.repeat(x, pipeline.config.group_size, axis=0), batch)
    total, per_source = pipeline.rewards(rl_rewards.RewardInputs(rollout, rows, params,
                                                                 ref_params))
    return rollout, total, per_source
  return jax.device_get(jax.jit(fn)(params, ref_params))


def test_reward_sources_by_hand_and_combined_by_weight(run):
  pipeline, state = run["pipeline"], run["states"][0]
  assert [spec.name for spec, _ in pipeline.sources] == list(WEIGHTS)
  rollout, total, values = _replay(pipeline, state.params, state.extra["ref_params"],
                                   run["batch"], run["keys"][0])
  eos = run["task"].tokenizer.eos_id
  for row in range(len(total)):
    ids = real_tokens(rollout.tokens[row], rollout.completion_mask[row])
    assert values["verifier"][row] == float(ids[0] % 2 == 0)
    assert values["format"][row] == float(ids[-1] == eos)
    assert values["length"][row] == pytest.approx(len(ids) / pipeline.max_new_tokens)
  assert 0 < np.mean(values["format"]) < 1 and 0 < np.mean(values["verifier"]) < 1
  np.testing.assert_allclose(total, sum(w * values[name] for name, w in WEIGHTS.items()),
                             rtol=1e-6)
  # A source with weight 0 is off: not computed, not logged.
  off = make_pipeline(run["task"], dict(ALL_SOURCES, length={"weight": 0.0}))
  assert [spec.name for spec, _ in off.sources] == ["verifier", "format", "self_judge"]


@pytest.mark.parametrize("judge", ["policy", "reference"])
def test_self_judge_is_p_true_of_the_judge_prompt_rendered_as_text(run, judge):
  task, state = run["task"], run["states"][0]
  pipeline = make_pipeline(task, {"self_judge": dict(JUDGE, weight=1.0, judge=judge)})
  assert pipeline.config.keeps_reference == (judge == "reference")
  rollout, _, values = _replay(pipeline, state.params, state.extra["ref_params"], run["batch"],
                               run["keys"][0])
  (_, source), = pipeline.sources
  tokens, mask = jax.device_get(jax.jit(source.prompt)(rollout))
  assert np.all(mask[:, -1])                                     # left-padded
  encoder, tokenizer = run_pieces(task).encoder, task.tokenizer
  template = judging.JudgeTemplate(JUDGE["template"], yes=JUDGE["yes"], no=JUDGE["no"])
  yes_ids, no_ids = template.answer_ids(encoder)
  judge_params = state.params if judge == "policy" else state.extra["ref_params"]
  model = nnx.merge(pipeline.graphdef, judge_params)
  for row in range(len(values["self_judge"])):
    problem = tokenizer.decode(real_tokens(rollout.prompt_tokens[row], rollout.prompt_mask[row]))
    completion = real_tokens(rollout.tokens[row], rollout.completion_mask[row])
    candidate = tokenizer.decode([t for t in completion if t != tokenizer.eos_id])
    ids = encoder.prompt_ids(template.render(problem=problem, candidate=candidate))
    assert real_tokens(tokens[row], mask[row]) == ids, (problem, candidate)
    logits, _ = model(jnp.asarray([ids]), jnp.ones((1, len(ids)), bool))
    expected = judging.yes_no_probability(logits[:, -1], yes_ids, no_ids)[0]
    assert values["self_judge"][row] == pytest.approx(float(expected), rel=1e-5)


def test_the_verifier_measures_the_samples_when_it_is_no_reward(run):
  """Self-judge as the only reward: train/verified_accuracy is still the verifier's verdict."""
  task, state, batch, key = run["task"], run["states"][0], run["batch"], run["keys"][0]
  judged = make_pipeline(task, {"self_judge": dict(JUDGE, weight=1.0)})
  assert [spec.source for spec, _ in judged.sources] == ["self_judge"]
  _, metrics = jax.jit(judged.step)(make_state(judged, state.params), batch, key)
  rollout, _, _ = _replay(judged, state.params, None, batch, key)
  verdicts = [float(real_tokens(t, m)[0] % 2 == 0)
              for t, m in zip(rollout.tokens, rollout.completion_mask)]
  assert 0 < np.mean(verdicts) < 1
  assert float(metrics["train/verified_accuracy"]) == pytest.approx(np.mean(verdicts))
  assert "train/reward/verifier" not in metrics
  # With the verifier as a reward the figure is its reward's mean.
  assert run["metrics"][0]["train/verified_accuracy"] == pytest.approx(
      run["metrics"][0]["train/reward/verifier"])


@pytest.mark.parametrize("estimator", ["k3", "exact", "k1"])
def test_kl_is_zero_for_identical_policies(run, estimator):
  base = run["pipeline"]
  pipeline = dataclasses.replace(base, config=dataclasses.replace(base.config,
                                                                  kl_estimator=estimator))
  step = run["step"] if estimator == "k3" else jax.jit(pipeline.step)
  state = run["states"][0]
  same = state._replace(extra={"ref_params": state.params})
  _, metrics = step(same, run["batch"], run["keys"][0])
  assert float(metrics["train/kl"]) == pytest.approx(0.0, abs=1e-6)
  if estimator != "k1":       # k1 can be negative; k3 and the exact KL are > 0 when ref differs
    _, metrics = step(state, run["batch"], run["keys"][0])
    assert float(metrics["train/kl"]) > 1e-4


def test_evaluate_is_the_verifiers_accuracy_on_greedy_completions(run):
  pipeline, params, batch = run["pipeline"], run["states"][-1].params, run["batch"]
  evaluate = jax.jit(pipeline.evaluate)
  values = jax.device_get(evaluate(params, batch, jax.random.key(0)))
  assert set(values) == set(pipeline.eval_metric_names) and "accuracy" in values
  again = jax.device_get(evaluate(params, batch, jax.random.key(1)))
  np.testing.assert_array_equal(values["accuracy"], again["accuracy"])    # greedy: key unused
  rollout = sample(nnx.merge(pipeline.graphdef, params), batch["prompt_tokens"],
                   batch["prompt_mask"], jax.random.key(0), pipeline.sampling_config(False))
  assert rollout.tokens.shape[0] == 4
  np.testing.assert_array_equal(values["accuracy"], [float(t[0] % 2 == 0) for t in
                                                     np.asarray(rollout.tokens)])


def test_left_pad_keeps_the_order_of_real_tokens():
  tokens = jnp.array([[5, 6, 7, 8, 9], [1, 2, 3, 4, 5]])
  mask = jnp.array([[1, 0, 1, 0, 1], [1, 1, 1, 1, 1]], bool)
  padded, padded_mask = judge_prompts.left_pad(tokens, mask, pad_id=0)
  assert padded.tolist() == [[0, 0, 5, 7, 9], [1, 2, 3, 4, 5]]
  assert padded_mask.tolist() == [[False, False, True, True, True], [True] * 5]


def test_config_errors_name_the_field():
  task = arithmetic_task()
  verifier = {"verifier": {"weight": 1.0}}
  for fields, match in [
      (dict(group_size=1), "RLConfig.group_size=1"),
      (dict(advantage="ppo"), "RLConfig.advantage='ppo'"),
      (dict(aggregation="sum"), "RLConfig.aggregation"),
      (dict(kl_estimator="k2"), "RLConfig.kl_estimator"),
      (dict(kl_coef=-1.0), "RLConfig.kl_coef"),
      (dict(num_iterations=0), "RLConfig.num_iterations"),
      (dict(clip_eps_high=0.0), "RLConfig.clip_eps_low/clip_eps_high"),
      (dict(num_iterations=2, temperature=0.7), "RLConfig.temperature=0.7: must be 1.0 when"),
      (dict(rewards={"bleu": {}}), r"rl.rewards.bleu.source='bleu'"),
      (dict(rewards={"v": {"source": "verifier", "template": "x"}}), r"rl.rewards.v: unknown"),
      (dict(rewards={"verifier": {"weight": 0.0}}), "no source has a non-zero weight"),
      (dict(rewards={"self_judge": dict(JUDGE, judge="other")}), "rl.rewards.self_judge.judge"),
  ]:
    with pytest.raises(ValueError, match=match):
      rl.RLConfig(**dict(dict(rewards=verifier), **fields))
  rl.RLConfig(rewards=verifier, num_iterations=1, temperature=0.7)    # on-policy: any temperature
  # A list of dicts works too (a name per entry, default its source).
  as_list = rl.RLConfig(rewards=[{"source": "verifier"}, {"source": "length", "weight": -0.5},
                                 {"source": "length", "name": "bonus", "weight": 0.0}])
  assert [(s.name, s.source, s.weight) for s in as_list.rewards] == [
      ("verifier", "verifier", 1.0), ("length", "length", -0.5)]
  with pytest.raises(ValueError, match="names .* must differ"):
    rl.RLConfig(rewards=[{"source": "length"}, {"source": "length"}])
  bad_order = dict(JUDGE, template="{candidate}{problem}")
  with pytest.raises(ValueError, match=r"rl.rewards.self_judge.template=.* in that order"):
    make_pipeline(task, {"self_judge": bad_order})
  with pytest.raises(ValueError, match="rl.rewards.self_judge.template=.* cannot be encoded"):
    make_pipeline(task, {"self_judge": dict(JUDGE, template="Q: {problem} A: {candidate}")})


@pytest.mark.parametrize("judge", ["policy", "reference"])
def test_self_certainty_reward_is_the_mean_kl_from_uniform_of_the_judges_distributions(run, judge):
  task, state = run["task"], run["states"][0]
  pipeline = make_pipeline(task, {"self_certainty": {"weight": 1.0, "judge": judge}})
  assert pipeline.config.keeps_reference == (judge == "reference")
  rollout, _, values = _replay(pipeline, state.params, state.extra["ref_params"], run["batch"],
                               run["keys"][0])
  judge_params = state.params if judge == "policy" else state.extra["ref_params"]
  model = nnx.merge(pipeline.graphdef, judge_params)
  for row in range(len(values["self_certainty"])):
    prompt = real_tokens(rollout.prompt_tokens[row], rollout.prompt_mask[row])
    completion = real_tokens(rollout.tokens[row], rollout.completion_mask[row])
    ids = prompt + completion
    logits, _ = model(jnp.asarray([ids]), jnp.ones((1, len(ids)), bool))
    logp = np.asarray(jax.nn.log_softmax(logits[0, len(prompt) - 1:len(ids) - 1]), np.float64)
    vocab = logp.shape[-1]
    # KL(U || p) = sum_j (1/V) (log(1/V) - log p_j), averaged over the completion's tokens.
    expected = np.mean(np.sum((-np.log(vocab) - logp) / vocab, axis=-1))
    assert values["self_certainty"][row] == pytest.approx(expected, rel=1e-4)


def test_run_flags_name_the_rewarded_judges_score():
  task = arithmetic_task()
  rows = [{"step": 0, "eval/accuracy": 0.8, "eval/judge_score": 0.5, "eval/self_certainty": 1.0},
          {"step": 100, "eval/accuracy": 0.5, "eval/judge_score": 0.5, "eval/self_certainty": 2.0}]
  judge_eval = dict(JUDGE, num_candidates=2, best_of=(1,))
  by_certainty = make_pipeline(task, {"self_certainty": {"weight": 1.0}}, judge_eval=judge_eval)
  assert "eval/self_certainty rose" in by_certainty.run_flags(rows)["reward_hacking"]
  by_p_true = make_pipeline(task, {"self_judge": dict(JUDGE, weight=1.0)},
                            judge_eval=judge_eval)
  assert by_p_true.run_flags(rows) == {}            # its judge's score did not rise
  by_verifier = make_pipeline(task, {"verifier": {"weight": 1.0}}, judge_eval=judge_eval)
  assert by_verifier.run_flags(rows) == {}          # no judge is rewarded


def test_majority_reward_by_hand():
  """Groups of 4 answers as token rows (eos = 2, pad = 0): the most frequent answer gets 1."""
  reward = rl_rewards.MajorityReward(group_size=4, dropped_ids=(2, 0))
  rows = [[5, 6, 2, 0], [5, 6, 2, 0], [7, 2, 0, 0], [5, 6, 2, 0],     # 56 x3, 7 x1
          [7, 2, 0, 0], [8, 2, 0, 0], [8, 0, 0, 0], [7, 0, 0, 0],     # tie 7/8: the first (7)
          [2, 0, 0, 0], [2, 0, 0, 0], [9, 2, 0, 0], [2, 0, 0, 0]]     # empty answers never vote
  tokens = jnp.asarray(rows, jnp.int32)
  mask = jnp.asarray([[t != 0 or j == 0 for j, t in enumerate(row)] for row in rows])
  inputs = rl_rewards.RewardInputs(
      rollout=type("R", (), {"tokens": tokens, "completion_mask": mask})(), rows={},
      params=None, ref_params=None)
  np.testing.assert_array_equal(reward(inputs), [1, 1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0])


def _judge_probabilities(model, encoder, text, answers):
  """Next-token probabilities of `answers` (token ids) after the prompt-encoded `text`."""
  ids = encoder.prompt_ids(text)
  logits, _ = model(jnp.asarray([ids]), jnp.ones((1, len(ids)), bool))
  return np.asarray(jax.nn.softmax(logits[0, -1].astype(jnp.float32)), np.float64)[list(answers)]


def _texts(task, rollout, row):
  tokenizer = task.tokenizer
  problem = tokenizer.decode(real_tokens(rollout.prompt_tokens[row], rollout.prompt_mask[row]))
  completion = real_tokens(rollout.tokens[row], rollout.completion_mask[row])
  return problem, tokenizer.decode([t for t in completion if t != tokenizer.eos_id])


def test_rubric_reward_is_the_expected_score_of_the_rendered_prompt(run):
  task, state = run["task"], run["states"][0]
  rubric = dict(template="{problem}{candidate}=", scores=("1", "2", "3"), weight=1.0)
  pipeline = make_pipeline(task, {"rubric": rubric})
  rollout, _, values = _replay(pipeline, state.params, None, run["batch"], run["keys"][0])
  encoder = run_pieces(task).encoder
  score_ids = [encoder.text_ids(s, "score")[0] for s in rubric["scores"]]
  model = nnx.merge(pipeline.graphdef, state.params)
  for row in range(len(values["rubric"])):
    problem, candidate = _texts(task, rollout, row)
    p = _judge_probabilities(model, encoder, problem + candidate + "=", score_ids)
    assert values["rubric"][row] == pytest.approx(float(p @ [1, 2, 3] / p.sum()), rel=1e-5)


def test_pairwise_reward_is_the_mean_order_averaged_win_rate_in_the_group(run):
  task, state = run["task"], run["states"][0]
  pairwise = dict(template="{problem}{first}{second}=", yes="1", no="0", weight=1.0)
  pipeline = make_pipeline(task, {"pairwise": pairwise})
  rollout, _, values = _replay(pipeline, state.params, None, run["batch"], run["keys"][0])
  encoder, g = run_pieces(task).encoder, pipeline.config.group_size
  (yes,), (no,) = (encoder.text_ids(pairwise[k], k) for k in ("yes", "no"))
  model = nnx.merge(pipeline.graphdef, state.params)
  for prompt in range(2):                       # two prompts' groups: 2 x 12 judge prompts
    texts = [_texts(task, rollout, prompt * g + i) for i in range(g)]
    p = np.zeros((g, g))
    for i in range(g):
      for j in range(g):
        if i != j:
          p_yes, p_no = _judge_probabilities(model, encoder,
                                             texts[i][0] + texts[i][1] + texts[j][1] + "=",
                                             [yes, no])
          p[i, j] = p_yes / (p_yes + p_no)
    expected = [np.mean([0.5 * (1 + p[i, j] - p[j, i]) for j in range(g) if j != i])
                for i in range(g)]
    np.testing.assert_allclose(values["pairwise"][prompt * g:(prompt + 1) * g], expected,
                               rtol=1e-5)
  # Order-averaged win rates of a group sum to G / 2 (each pair's two preferences sum to 1).
  np.testing.assert_allclose(np.asarray(values["pairwise"]).reshape(-1, g).sum(axis=1), g / 2,
                             rtol=1e-5)


def test_a_host_python_verifier_rewards_like_the_same_rule_in_graph():
  """The verifier source calls the run's verifier, in-graph or a host Python function (through
  jax.pure_callback): the same rule both ways gives the same rewards and the same update."""
  from selfimprove.verifiers import HostVerifier
  task = arithmetic_task()
  tokenizer = task.tokenizer
  seven = tokenizer.encode("7")[-1]

  def contains_seven_in_graph(tokens, mask, batch):
    del batch
    return jnp.any((tokens == seven) & mask, axis=1).astype(jnp.float32)

  def contains_seven(text, example):
    del example
    return float("7" in text)

  batch = dict(task.generate(jax.random.key(3), 8), record_id=jnp.arange(8, dtype=jnp.int32))
  host = HostVerifier(contains_seven, tokenizer, [{}] * 8, (tokenizer.eos_id,))
  results = []
  for verifier in (InGraphVerifier(contains_seven_in_graph), host):
    pipeline = rl.build(run_pieces(task, verifier),
                        dict(rewards={"verifier": {"weight": 1.0}}, group_size=4))
    _, params = tiny_model()
    state, metrics = jax.jit(pipeline.step)(make_state(pipeline, params), batch,
                                            jax.random.key(9))
    results.append((jax.device_get(state.params), jax.device_get(metrics)))
  (graph_params, graph_metrics), (host_params, host_metrics) = results
  assert 0 < graph_metrics["train/reward/verifier"] < 1            # both outcomes sampled
  assert host_metrics["train/reward/verifier"] == graph_metrics["train/reward/verifier"]
  jax.tree.map(np.testing.assert_array_equal, host_params, graph_params)
  assert host.failure() is None
