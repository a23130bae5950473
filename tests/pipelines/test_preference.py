"""Offline preference pipeline (DPO / IPO / SPIN / SPPO): losses vs a hand forward pass, step 0,
one compile, a learning smoke test, data errors naming file:line, and the trainer with exact
resume (configs/preference_jsonl.py:test)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from selfimprove import objectives as obj
from selfimprove.encoding import RowEncoder, TextEncoder, measure_lengths
from selfimprove.pipelines import preference
from selfimprove.tasks.jsonl import JsonlTask, JsonlTaskConfig
from selfimprove.train_state import TrainState
from tests.pipelines.helpers import arithmetic_task, perturbed, run_pieces, tiny_model
from tests.train_helpers import assert_trees_equal, copy_run_until, final_state, read_metrics, single_device_config

METRIC_KEYS = {"train/loss", "train/grad_norm", "perf/tokens", "train/reward_margin",
               "train/reward_accuracy", "train/chosen_logp", "train/rejected_logp"}
HAND_LOSSES = {
    "dpo": lambda lp, w, beta: obj.dpo_loss(*lp, beta),
    "spin_hinge": lambda lp, w, beta: obj.spin_hinge_loss(*lp, beta),
    "ipo": lambda lp, w, beta: obj.ipo_loss(*lp, beta),
    "sppo": lambda lp, w, beta: obj.sppo_loss(*lp, *w, beta),
}


def pair_records(n: int, seed: int) -> list[dict]:
  """Arithmetic pairs in the char alphabet: chosen = the sum, rejected = a wrong number of
  another length (so chosen and rejected are padded differently); win rates for SPPO."""
  rng = np.random.default_rng(seed)
  records = []
  for _ in range(n):
    a, b = (int(x) for x in rng.integers(0, 100, size=2))
    wrong = str(a + b + int(rng.integers(1, 9)) * (10 if rng.random() < 0.5 else 100))
    win = float(rng.uniform(0.5, 1.0))
    records.append({"prompt": f"{a}+{b}=", "answer": str(a + b), "rejected": wrong,
                    "win_rate_chosen": win, "win_rate_rejected": 1.0 - win})
  return records


def write_jsonl(path, records) -> str:
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  return str(path)


def jsonl_task(tmp_path, train, evals) -> JsonlTask:
  return JsonlTask(JsonlTaskConfig(train_path=write_jsonl(tmp_path / "train.jsonl", train),
                                   eval_path=write_jsonl(tmp_path / "eval.jsonl", evals),
                                   verifier="exact_match"))


def pair_encoder(task: JsonlTask, **data) -> preference.PairRowEncoder:
  """The run's rows in the arithmetic char ids (the tiny model's vocabulary) plus the pairs."""
  encoder = TextEncoder(arithmetic_task().tokenizer)
  splits = {"train": task.examples("train"), "eval": task.examples("eval")}
  prompt_len, answer_len = measure_lengths(encoder, splits, 0, 0)
  rows = RowEncoder(encoder, prompt_len, answer_len, task.example_arrays)
  return preference.pair_rows(rows, dict(preference_pairs=True, **data), task, seed=0)


def batch_of(rows, task, split="train", order=None) -> dict:
  examples = task.examples(split)
  encoded = [rows((i, examples[i])) for i in (order if order is not None else range(len(examples)))]
  return {k: jnp.asarray(np.stack([r[k] for r in encoded])) for k in encoded[0]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  task = jsonl_task(tmp_path_factory.mktemp("pairs"), pair_records(8, 0), pair_records(4, 1))
  rows = pair_encoder(task, win_rates=True)
  return dict(task=task, rows=rows, batch=batch_of(rows, task))


def make_pipeline(loss="dpo", beta=0.1, optimizer=None):
  pieces = run_pieces(arithmetic_task(), optimizer=optimizer)
  return preference.build(pieces, dict(loss=loss, beta=beta))


def make_state(pipeline, params, ref_params=None) -> TrainState:
  extra = pipeline.init_extra(params) if ref_params is None else {"ref_params": ref_params}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=pipeline.optimizer.init(params),
                    rng=jax.random.key_data(jax.random.key(0)), extra=extra,
                    skipped_updates=jnp.zeros((), jnp.int32),
                    consecutive_skips=jnp.zeros((), jnp.int32))


def hand_logprob(graphdef, params, prompt_ids, completion_ids) -> float:
  """Summed log p(completion | prompt) from one unpadded forward pass of the sequence alone."""
  tokens = jnp.asarray([list(prompt_ids) + list(completion_ids)], jnp.int32)
  logits, _ = nnx.merge(graphdef, params)(tokens, jnp.ones(tokens.shape, bool))
  logp = jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)
  start = len(prompt_ids)
  return float(sum(logp[start + t - 1, token] for t, token in enumerate(completion_ids)))


def hand_pair_logprobs(graphdef, params, batch) -> tuple[np.ndarray, np.ndarray]:
  real = lambda t, m: [int(x) for x, keep in zip(np.asarray(t), np.asarray(m)) if keep]  # noqa
  chosen, rejected = [], []
  for i in range(batch["prompt_tokens"].shape[0]):
    prompt = real(batch["prompt_tokens"][i], batch["prompt_mask"][i])
    chosen.append(hand_logprob(graphdef, params, prompt,
                               real(batch["answer_tokens"][i], batch["answer_mask"][i])))
    rejected.append(hand_logprob(graphdef, params, prompt,
                                 real(batch["rejected_tokens"][i], batch["rejected_mask"][i])))
  return np.asarray(chosen), np.asarray(rejected)


def test_rows_hold_the_rejected_answer_right_padded_with_eos(data):
  rows, batch, eos = data["rows"], data["batch"], arithmetic_task().tokenizer.eos_id
  example = data["task"].examples("train")[0]
  want = list(arithmetic_task().tokenizer.encode(example["rejected"])) + [eos]
  everything = data["task"].examples("train") + data["task"].examples("eval")
  assert rows.rejected_len == max(len(r["rejected"]) for r in everything) + 1   # with <eos>
  n, padding = len(want), rows.rejected_len - len(want)
  assert list(np.asarray(batch["rejected_tokens"][0][:n])) == want
  assert np.asarray(batch["rejected_mask"][0]).tolist() == [True] * n + [False] * padding
  np.testing.assert_allclose(batch["win_rate_chosen"][0], example["win_rate_chosen"], rtol=1e-6)


@pytest.mark.parametrize("loss, beta", [("dpo", 0.1), ("ipo", 0.5), ("spin_hinge", 0.1),
                                        ("sppo", 0.01)])
def test_step_loss_equals_the_objective_on_hand_computed_logprobs(data, loss, beta):
  graphdef, params = tiny_model()
  ref_params = perturbed(params, 0.05, seed=1)
  pipeline = make_pipeline(loss, beta)
  batch = data["batch"]
  _, metrics = jax.jit(pipeline.step)(make_state(pipeline, params, ref_params), batch,
                                      jax.random.key(0))
  chosen, rejected = hand_pair_logprobs(graphdef, params, batch)
  ref_chosen, ref_rejected = hand_pair_logprobs(graphdef, ref_params, batch)
  logprobs = tuple(jnp.asarray(x) for x in (chosen, rejected, ref_chosen, ref_rejected))
  want = HAND_LOSSES[loss](logprobs, (batch["win_rate_chosen"], batch["win_rate_rejected"]), beta)
  np.testing.assert_allclose(metrics["train/loss"], want, rtol=1e-5)
  np.testing.assert_allclose(metrics["train/chosen_logp"], chosen.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["train/rejected_logp"], rejected.mean(), rtol=1e-5)
  margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
  np.testing.assert_allclose(metrics["train/reward_margin"], margin.mean(), rtol=1e-4, atol=1e-6)
  assert metrics["train/reward_accuracy"] == pytest.approx(np.mean(margin > 0))


def test_at_step_zero_dpo_loss_is_log2_and_the_margin_zero(data):
  _, params = tiny_model()
  pipeline = make_pipeline("dpo")
  state = make_state(pipeline, params)   # the reference is the starting policy
  _, metrics = jax.jit(pipeline.step)(state, data["batch"], jax.random.key(0))
  assert float(metrics["train/loss"]) == pytest.approx(math.log(2), rel=1e-6)
  assert float(metrics["train/reward_margin"]) == pytest.approx(0.0, abs=1e-6)


def test_step_compiles_once_logs_every_figure_and_keeps_the_reference(data):
  _, params = tiny_model()
  pipeline = make_pipeline("dpo")
  state = make_state(pipeline, params)
  step = jax.jit(pipeline.step)
  rng = np.random.default_rng(0)
  for i in range(3):
    batch = batch_of(data["rows"], data["task"], order=rng.permutation(8))
    state, metrics = step(state, batch, jax.random.key(i))
    assert set(metrics) == METRIC_KEYS
    assert all(np.shape(v) == () and np.isfinite(v) for v in jax.device_get(metrics).values())
  assert step._cache_size() == 1, "the step recompiled"
  assert_trees_equal(jax.device_get(state.extra["ref_params"]), jax.device_get(params))


def test_a_few_dpo_steps_learn_to_prefer_the_chosen_answers(data):
  _, params = tiny_model()
  pipeline = make_pipeline("dpo", beta=0.5, optimizer=optax.adam(3e-3))
  state = make_state(pipeline, params)
  step = jax.jit(pipeline.step)
  accuracies, margins = [], []
  for i in range(12):
    state, metrics = step(state, data["batch"], jax.random.key(i))
    accuracies.append(float(metrics["train/reward_accuracy"]))
    margins.append(float(metrics["train/reward_margin"]))
  assert accuracies[0] == 0.0 and accuracies[-1] == 1.0, accuracies
  assert margins[-1] > margins[1] > 0, margins
  # evaluate's per-pair log-prob margin moved by exactly the implicit reward margin / beta.
  evaluate = jax.jit(pipeline.evaluate)
  before = evaluate(params, data["batch"], jax.random.key(0))
  after = evaluate(state.params, data["batch"], jax.random.key(0))
  _, now = step(state, data["batch"], jax.random.key(99))
  moved = jnp.mean(after["logp_margin"] - before["logp_margin"])
  np.testing.assert_allclose(moved, now["train/reward_margin"] / 0.5, rtol=1e-4)
  assert float(jnp.mean(after["pair_accuracy"])) == 1.0


def test_data_errors_name_the_file_line_and_field(tmp_path):
  train = pair_records(4, 0)
  del train[2]["rejected"]
  train[3]["rejected"] = ["not", "text"]
  evals = pair_records(2, 1)
  evals[1]["win_rate_rejected"] = 1.5
  task = jsonl_task(tmp_path, train, evals)
  with pytest.raises(ValueError) as error:
    pair_encoder(task)
  message = str(error.value)
  assert f"{tmp_path / 'train.jsonl'}:3: field 'rejected'" in message
  assert "no such field" in message and f"{tmp_path / 'train.jsonl'}:4" in message
  assert "eval.jsonl" not in message   # win rates are read only with win_rates=True
  with pytest.raises(ValueError, match=r"eval\.jsonl:2: field 'win_rate_rejected' must be a "
                                       r"number in \[0, 1\]"):
    pair_encoder(task, win_rates=True)
  with pytest.raises(ValueError, match=r"train\.jsonl:1: the rejected answer is \d+ tokens, more "
                                       r"than config\.data\.max_rejected_len=1"):
    pair_encoder(jsonl_task(tmp_path, pair_records(2, 0), pair_records(1, 1)),
                 max_rejected_len=1)


def test_a_config_without_the_pairs_is_told_what_to_set(data):
  _, params = tiny_model()
  pipeline = make_pipeline("sppo")
  batch = {k: v for k, v in data["batch"].items() if not k.startswith("win_rate")}
  with pytest.raises(KeyError, match="config.data.win_rates=True"):
    pipeline.step(make_state(pipeline, params), batch, jax.random.key(0))


# ---- the trainer -------------------------------------------------------------------------------

def _config(tmp_path, **overrides):
  rng = np.random.default_rng(0)
  records = []
  for _ in range(40):
    a, b = (int(x) for x in rng.integers(10, 50, size=2))
    records.append({"prompt": f"What is {a} plus {b}?", "answer": str(a + b),
                    "rejected": str(a + b + 1)})
  return single_device_config("preference_jsonl", **{
      "eval.num_examples": 8,
      "task.train_path": write_jsonl(tmp_path / "train.jsonl", records[:32]),
      "task.eval_path": write_jsonl(tmp_path / "eval.jsonl", records[32:]), **overrides})


def test_trainer_runs_the_config_and_resumes_exactly(tmp_path, caplog):
  from selfimprove import train as train_lib
  config = _config(tmp_path)
  full = str(tmp_path / "full")
  result = train_lib.train(config, full)
  rows = read_metrics(full)
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [2, 4, 6, 8]
  assert all(key in train_rows[-1] for key in METRIC_KEYS - {"perf/tokens"})
  assert [r["step"] for r in rows if "eval/pair_accuracy" in r] == [0, 4, 8]
  assert 0.0 <= result["eval/pair_accuracy"] <= 1.0 and np.isfinite(result["eval/logp_margin"])
  step, state = final_state(full)
  assert step == 8 and set(state["extra"]) == {"ref_params"}

  # A run killed after its step-4 checkpoint: copy what the full run had written by then.
  resumed = str(tmp_path / "resumed")
  copy_run_until(full, resumed, 4)
  with caplog.at_level("INFO"):
    train_lib.train(config, resumed)
  assert "Resuming from checkpoint at step 4" in caplog.text
  resumed_rows = [r for r in read_metrics(resumed) if "train/loss" in r]
  assert [(r["step"], r["train/loss"]) for r in resumed_rows] == [
      (r["step"], r["train/loss"]) for r in train_rows]
  _, resumed_state = final_state(resumed)
  assert_trees_equal(state["params"], resumed_state["params"])
  assert_trees_equal(state["extra"], resumed_state["extra"])
