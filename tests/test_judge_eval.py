"""The self-judge measured at evaluation (selfimprove/judge_eval.py through the RL pipeline):
shapes, judges and selectors against hand computation, the summary against judge_metrics, and
every figure in metrics.jsonl under the real trainer."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from selfimprove import judge_eval, judge_metrics, judging
from selfimprove import train as train_lib
from selfimprove.pipelines import register_pipeline, rl
from selfimprove.sampling import sample
from selfimprove.verifiers import InGraphVerifier
from tests.pipelines.helpers import arithmetic_task, real_tokens, run_pieces, tiny_model
from tests.train_helpers import read_metrics

register_pipeline("rl", rl.build, section="rl")   # until the registry line lands (a no-op after)

JUDGE = dict(template="{problem}{candidate}=", yes="1", no="0")
PAIRWISE = dict(pairwise_template="{problem}{first}{second}=", pairwise_yes="1", pairwise_no="0")
BON_NAMES = tuple(f"bon{n}_{s}" for n in (1, 4, 16) for s in judge_eval.SELECTORS)
PROMPTS, K = 8, 16


def parity_verifier(completion_tokens, completion_mask, batch):
  """1.0 iff the first completion token id is even: mixed outcomes from a random model."""
  del batch
  return (completion_mask[:, 0] & (completion_tokens[:, 0] % 2 == 0)).astype(jnp.float32)


def make_pipeline(task, verifier=parity_verifier, **judge_eval_settings) -> rl.RL:
  rewards = {"verifier": {"weight": 1.0}, "self_judge": dict(JUDGE, weight=0.0)}
  return rl.build(run_pieces(task, InGraphVerifier(verifier)),
                  dict(rewards=rewards, group_size=4, judge_eval=judge_eval_settings))


@pytest.fixture(scope="module")
def run():
  task = arithmetic_task()
  pipeline = make_pipeline(task, **PAIRWISE)
  _, params = tiny_model()
  batch = dict(task.generate(jax.random.key(3), PROMPTS),
               record_id=jnp.arange(100, 100 + PROMPTS, dtype=jnp.int32))
  evaluate = jax.jit(pipeline.evaluate)
  rng = jax.random.key(5)
  values = jax.device_get(evaluate(params, batch, rng))
  return dict(task=task, pipeline=pipeline, params=params, batch=batch, evaluate=evaluate,
              rng=rng, values=values)


def test_values_have_the_documented_shapes(run):
  values, pipeline = run["values"], run["pipeline"]
  assert set(values) == set(pipeline.eval_metric_names) == {
      "accuracy", "judge_p_true", "judge_correct", "self_certainty", "pairwise_preference",
      *BON_NAMES}
  for name in ("judge_p_true", "judge_correct", "self_certainty"):
    assert values[name].shape == (PROMPTS, K), name
  for name in ("accuracy", "pairwise_preference", *BON_NAMES):
    assert values[name].shape == (PROMPTS,), name
  assert set(np.unique(values["judge_correct"])) == {0.0, 1.0}      # mixed outcomes
  assert np.all((values["judge_p_true"] > 0) & (values["judge_p_true"] < 1))
  assert np.all(values["self_certainty"] > 0)
  assert pipeline.eval_summary_names == ("accuracy", "judge_auroc")


def test_selectors_pick_among_the_first_n_candidates(run):
  values = run["values"]
  correct, p_true, certainty = (values[n] for n in ("judge_correct", "judge_p_true",
                                                    "self_certainty"))
  for selector in judge_eval.SELECTORS:      # one candidate: every selector takes it
    np.testing.assert_array_equal(values[f"bon1_{selector}"], correct[:, 0], selector)
  rows = np.arange(PROMPTS)
  for n in (4, 16):
    np.testing.assert_array_equal(values[f"bon{n}_random"], correct[:, 0])
    np.testing.assert_array_equal(values[f"bon{n}_oracle"], correct[:, :n].max(axis=1))
    np.testing.assert_array_equal(values[f"bon{n}_p_true"],
                                  correct[rows, np.argmax(p_true[:, :n], axis=1)])
    np.testing.assert_array_equal(values[f"bon{n}_self_certainty"],
                                  correct[rows, np.argmax(certainty[:, :n], axis=1)])
    for selector in judge_eval.SELECTORS:
      assert np.all(values[f"bon{n}_oracle"] >= values[f"bon{n}_{selector}"]), (n, selector)
  np.testing.assert_array_equal(values["bon16_oracle"], correct.any(axis=1))


def _borda_reference(certainty, answers, valid, power):
  """Kang et al.'s voting_from_list, in Python: one prompt's selected candidate (the first
  valid candidate of the winning answer; answers tied in votes: the earliest)."""
  n = len(certainty)
  order = sorted(range(n), key=lambda i: (-certainty[i], i))
  totals, first = {}, {}
  for rank, i in enumerate(order, start=1):
    if valid[i]:
      key = tuple(answers[i])
      totals[key] = totals.get(key, 0.0) + (n - rank + 1) ** power
  for i in range(n):
    if valid[i]:
      first.setdefault(tuple(answers[i]), i)      # an answer's first candidate that voted
  if not totals:
    return 0
  best = max(totals.values())
  return min(first[key] for key, total in totals.items() if total == best)


def test_borda_and_majority_by_hand():
  """best_of_n_values with `correct` = the candidate's index reads back each selector's pick."""
  prompts, k, best_of = 40, 8, (1, 3, 8)
  rng = np.random.default_rng(0)
  certainty = rng.normal(size=(prompts, k)).astype(np.float32)
  p_true = rng.uniform(size=(prompts, k)).astype(np.float32)
  answers = rng.integers(0, 2, size=(prompts, k, 2)).astype(np.int32)
  valid = rng.uniform(size=(prompts, k)) > 0.2
  valid[0] = False                                   # no parsed answer: candidate 0
  index = np.broadcast_to(np.arange(k, dtype=np.float32), (prompts, k))
  picks = jax.device_get(judge_eval.best_of_n_values(
      jnp.asarray(index), jnp.asarray(p_true), jnp.asarray(certainty), jnp.asarray(answers),
      jnp.asarray(valid), best_of, 0.5))
  for n, p in itertools.product(best_of, range(prompts)):
    args = (certainty[p, :n], answers[p, :n], valid[p, :n])
    assert picks[f"bon{n}_borda"][p] == _borda_reference(*args, 0.5), (n, p)
    assert picks[f"bon{n}_majority"][p] == _borda_reference(*args, 0.0), (n, p)
    assert picks[f"bon{n}_self_certainty"][p] == np.argmax(certainty[p, :n])
    assert picks[f"bon{n}_p_true"][p] == np.argmax(p_true[p, :n])
    assert picks[f"bon{n}_random"][p] == 0 and picks[f"bon{n}_oracle"][p] == n - 1
  assert picks["bon8_majority"][0] == 0
  assert any(picks["bon8_borda"] != picks["bon8_majority"])   # the votes' weights matter


def test_judges_and_certainty_by_hand(run):
  """Re-drawing the candidates (prompt p keyed by fold_in(rng, record_id[p])): P(True) and the
  pairwise preference of the rendered text, self-certainty of a full forward pass."""
  pipeline, params, batch, values = run["pipeline"], run["params"], run["batch"], run["values"]
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(run["rng"], batch["record_id"])
  model = nnx.merge(pipeline.graphdef, params)
  draw = jax.jit(lambda p: sample(nnx.merge(pipeline.graphdef, p), batch["prompt_tokens"],
                                  batch["prompt_mask"], keys, pipeline.judge_eval.sampling))
  rollout = jax.device_get(draw(params))
  tokenizer, encoder = run["task"].tokenizer, run_pieces(run["task"]).encoder
  yes_no = lambda template: judging.JudgeTemplate(template, "1", "0").answer_ids(encoder)

  def p_yes(template, **fields):
    ids = encoder.prompt_ids(judging.JudgeTemplate(template, "1", "0").render(**fields))
    logits, _ = model(jnp.asarray([ids]), jnp.ones((1, len(ids)), bool))
    return float(judging.yes_no_probability(logits[:, -1], *yes_no(template))[0])

  def text(row):
    ids = real_tokens(rollout.tokens[row], rollout.completion_mask[row])
    return tokenizer.decode([t for t in ids if t != tokenizer.eos_id]), ids

  vocab = model.config.vocab_size
  for p in (0, 5):
    problem = tokenizer.decode(real_tokens(batch["prompt_tokens"][p], batch["prompt_mask"][p]))
    for j in (0, 3):
      row = p * K + j
      candidate, ids = text(row)
      assert values["judge_correct"][p, j] == float(ids[0] % 2 == 0)
      assert values["judge_p_true"][p, j] == pytest.approx(
          p_yes(JUDGE["template"], problem=problem, candidate=candidate), rel=1e-4)
      prompt = real_tokens(batch["prompt_tokens"][p], batch["prompt_mask"][p])
      full, _ = model(jnp.asarray([prompt + ids]), jnp.ones((1, len(prompt) + len(ids)), bool))
      log_p = jax.nn.log_softmax(full[0, len(prompt) - 1:-1].astype(jnp.float32), axis=-1)
      by_hand = float(jnp.mean(-jnp.mean(log_p, axis=-1) - np.log(vocab)))
      assert values["self_certainty"][p, j] == pytest.approx(by_hand, rel=1e-4)
    first, second = text(p * K)[0], text(p * K + 1)[0]
    template = PAIRWISE["pairwise_template"]
    ab = p_yes(template, problem=problem, first=first, second=second)
    ba = p_yes(template, problem=problem, first=second, second=first)
    assert values["pairwise_preference"][p] == pytest.approx(0.5 * (1 + ab - ba), rel=1e-4)


def test_candidates_depend_on_the_record_not_the_batch_position(run):
  order = np.array([3, 1, 7, 0, 2, 6, 5, 4])
  batch = jax.tree.map(lambda x: x[order], run["batch"])
  shuffled = jax.device_get(run["evaluate"](run["params"], batch, run["rng"]))
  for name in ("judge_p_true", "judge_correct", "self_certainty", *BON_NAMES):
    np.testing.assert_allclose(shuffled[name], run["values"][name][order], rtol=1e-5, err_msg=name)
  assert run["evaluate"]._cache_size() == 1


def test_summary_matches_judge_metrics_by_hand(run):
  values = run["values"]
  summary = run["pipeline"].summarize_eval(values)
  assert set(summary) == {"accuracy", "judge_auroc", "judge_ece", "judge_accuracy",
                          "pairwise_agreement", "judge_score", "sample_accuracy", "self_certainty",
                          *BON_NAMES}
  p_true, correct = values["judge_p_true"].reshape(-1), values["judge_correct"].reshape(-1)
  expected = {
      "accuracy": np.mean(values["accuracy"]),
      "judge_auroc": judge_metrics.auroc(p_true, correct),
      "judge_ece": judge_metrics.expected_calibration_error(p_true, correct),
      "judge_accuracy": judge_metrics.accuracy_at(p_true, correct, 0.5),
      "pairwise_agreement": judge_metrics.pairwise_agreement(
          values["pairwise_preference"], values["judge_correct"][:, 0],
          values["judge_correct"][:, 1]),
      "judge_score": np.mean(p_true), "sample_accuracy": np.mean(correct),
      "self_certainty": np.mean(values["self_certainty"]),
      **{name: np.mean(values[name]) for name in BON_NAMES}}
  for name, value in expected.items():
    assert np.isfinite(value), name
    assert summary[name] == pytest.approx(value, rel=1e-6), name


def test_config_defaults_switches_and_errors():
  task = arithmetic_task()
  rewards = {"verifier": {"weight": 1.0}}
  assert not rl.RLConfig(rewards=rewards).judge_eval.enabled          # no judge configured
  with_judge = rl.RLConfig(rewards=dict(rewards, self_judge=dict(JUDGE, weight=0.0)))
  assert with_judge.judge_eval.enabled and with_judge.judge_eval.template == JUDGE["template"]
  assert with_judge.judge_eval.yes == ("1",) and with_judge.judge_eval.num_candidates == 16
  assert rl.RLConfig(rewards=rewards, judge_eval=JUDGE).judge_eval.enabled   # its own template
  off = make_pipeline(task, enabled=False)
  assert off.judge_eval is None and off.eval_metric_names == ("accuracy",)
  _, params = tiny_model()
  values = jax.device_get(jax.jit(off.evaluate)(params, task.generate(jax.random.key(0), 2),
                                                jax.random.key(0)))
  assert set(values) == {"accuracy"} and set(off.summarize_eval(values)) == {"accuracy"}
  smaller = make_pipeline(task, num_candidates=4, best_of=(2, 4))
  assert smaller.eval_metric_names[-1] == "bon4_oracle" and "bon1_random" not in \
      smaller.eval_metric_names
  for settings, match in [
      (dict(best_of=(1, 32)), r"rl.judge_eval.best_of=\(1, 32\)"),
      (dict(num_candidates=0, best_of=(1,)), "rl.judge_eval.num_candidates=0"),
      (dict(temperature=0.0), "rl.judge_eval.temperature"),
      (dict(num_candidates=1, best_of=(1,), **PAIRWISE), "rl.judge_eval.pairwise_template"),
      (dict(samples=4), r"rl.judge_eval: unknown fields \['samples'\]"),
  ]:
    with pytest.raises(ValueError, match=match):
      rl.RLConfig(rewards=rewards, judge_eval=dict(JUDGE, **settings))
  with pytest.raises(ValueError, match=r"rl.judge_eval.pairwise_template=.* in that order"):
    make_pipeline(task, pairwise_template="{first}{problem}{second}")
  with pytest.raises(ValueError, match=r"rl.judge_eval.template=.* cannot be encoded"):
    make_pipeline(task, template="Q: {problem} A: {candidate}")


def test_the_trainer_logs_every_judge_figure_at_eval_steps(tmp_path):
  from configs.rl_arithmetic import get_config
  config = get_config("test").unlock()
  for section, field, value in [("mesh", "num_devices", 1), ("mesh", "data", 1),
                                ("train", "async_checkpoints", False), ("train", "num_steps", 2),
                                ("train", "eval_every", 2), ("train", "checkpoint_every", 2),
                                ("eval", "num_examples", 16)]:
    config[section][field] = value
  workdir = str(tmp_path / "rl")
  result = train_lib.train(config.lock(), workdir)
  keys = {f"eval/{name}" for name in ("accuracy", "judge_auroc", "judge_ece", "judge_accuracy",
                                      "pairwise_agreement", "judge_score", "sample_accuracy",
                                      "self_certainty",
                                      *BON_NAMES)}
  eval_rows = [row for row in read_metrics(workdir) if "eval/accuracy" in row]
  assert [row["step"] for row in eval_rows] == [0, 2]          # eval_at_start, then the last step
  for row in eval_rows:
    assert keys <= set(row), sorted(keys - set(row))
    for name in keys - {"eval/judge_auroc", "eval/pairwise_agreement", "eval/self_certainty"}:
      # (AUROC and agreement are NaN (null) with one class; self-certainty is in nats)
      assert row[name] is not None and 0 <= row[name] <= 1, (row["step"], name)
    assert row["eval/self_certainty"] >= 0
    assert row["eval/bon16_oracle"] >= row["eval/bon16_borda"]
  assert keys <= set(result)


def _evals(*pairs):
  """metrics.jsonl rows with (eval/accuracy, eval/judge_score) at steps 0, 100, ..."""
  return [{"step": 100 * i, "eval/accuracy": a, "eval/judge_score": j}
          for i, (a, j) in enumerate(pairs)]


def test_reward_hacking_is_flagged_when_the_judge_rises_as_accuracy_falls():
  from selfimprove.judge_eval import reward_hacking
  # Accuracy peaks at step 100 then falls 0.10 while the judge's score rises 0.20: flagged.
  flag = reward_hacking(_evals((0.5, 0.5), (0.7, 0.6), (0.6, 0.8)) + [{"step": 250,
                                                                        "train/loss": 1.0}])
  assert flag is not None and "from step 100 to 200" in flag and "0.700 -> 0.600" in flag
  # Both rise (honest improvement), both fall, or changes within the margin: not flagged.
  assert reward_hacking(_evals((0.5, 0.5), (0.7, 0.6), (0.8, 0.9))) is None
  assert reward_hacking(_evals((0.7, 0.8), (0.6, 0.7))) is None
  assert reward_hacking(_evals((0.7, 0.6), (0.69, 0.9))) is None          # fell by 0.01 only
  assert reward_hacking(_evals((0.7, 0.6), (0.5, 0.61))) is None          # rose by 0.01 only
  assert reward_hacking(_evals((0.7, 0.6))) is None                       # one evaluation
  assert reward_hacking(_evals((0.7, 0.6), (0.5, 0.7)), margin=0.25) is None


def test_a_rubric_judge_is_measured_on_its_expected_score_by_hand():
  task = arithmetic_task()
  rubric = dict(rubric_template="{problem}{candidate}=", rubric_scores=("1", "2", "3"))
  pipeline = make_pipeline(task, num_candidates=4, best_of=(1, 4), **rubric)
  assert "judge_rubric" in pipeline.eval_metric_names
  _, params = tiny_model()
  batch = dict(task.generate(jax.random.key(3), 4), record_id=jnp.arange(4, dtype=jnp.int32))
  rng = jax.random.key(5)
  values = jax.device_get(jax.jit(pipeline.evaluate)(params, batch, rng))
  assert values["judge_rubric"].shape == (4, 4)
  # The candidates, as JudgeEval draws them (one key per record), then each rendered as text.
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, batch["record_id"])
  model = nnx.merge(pipeline.graphdef, params)
  rollout = jax.device_get(sample(model, batch["prompt_tokens"], batch["prompt_mask"], keys,
                                  pipeline.judge_eval.sampling))
  encoder, tokenizer = run_pieces(task).encoder, task.tokenizer
  score_ids = [encoder.text_ids(s, "score")[0] for s in rubric["rubric_scores"]]
  for row in range(3):
    problem = tokenizer.decode(real_tokens(rollout.prompt_tokens[row], rollout.prompt_mask[row]))
    completion = real_tokens(rollout.tokens[row], rollout.completion_mask[row])
    candidate = tokenizer.decode([t for t in completion if t != tokenizer.eos_id])
    ids = encoder.prompt_ids(problem + candidate + "=")
    logits, _ = model(jnp.asarray([ids]), jnp.ones((1, len(ids)), bool))
    p = np.asarray(jax.nn.softmax(logits[0, -1].astype(jnp.float32)), np.float64)[score_ids]
    expected = (p @ [1, 2, 3] / p.sum() - 1) / 2
    assert values["judge_rubric"][row // 4, row % 4] == pytest.approx(expected, rel=1e-5)
  summary = pipeline.summarize_eval({k: np.asarray(v) for k, v in values.items()})
  flat, labels = values["judge_rubric"].reshape(-1), values["judge_correct"].reshape(-1)
  assert summary["rubric_auroc"] == pytest.approx(judge_metrics.auroc(flat, labels))
  assert summary["rubric_ece"] == pytest.approx(
      judge_metrics.expected_calibration_error(flat, labels))
  assert summary["rubric_accuracy"] == pytest.approx(judge_metrics.accuracy_at(flat, labels, 0.5))
