"""The trainer in-process: steps_per_call, metrics files, mesh changes on resume, NaN handling, JSONL."""

import json
import os

import jax
import numpy as np
import pytest

from selfimprove import train as train_lib
from selfimprove.config_checks import ConfigError, validate_config
from tests.train_helpers import assert_trees_equal, final_params, read_metrics, make_test_config


def test_steps_per_call_gives_the_same_parameters_as_single_calls(tmp_path):
  train_lib.train(make_test_config(**{"train.steps_per_call": 1}), str(tmp_path / "one"))
  train_lib.train(make_test_config(**{"train.steps_per_call": 4, "train.eval_every": 8,
                                 "train.log_every": 4}), str(tmp_path / "four"))
  step_one, params_one = final_params(str(tmp_path / "one"))
  step_four, params_four = final_params(str(tmp_path / "four"))
  assert step_one == step_four == 8
  assert_trees_equal(params_one, params_four)


def test_metrics_tensorboard_plot_and_config_are_written(tmp_path):
  workdir = str(tmp_path)
  result = train_lib.train(make_test_config(**{"train.keep_checkpoints": 1}), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["8"]   # keep last K=1
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == [2, 4, 6, 8]
  for row in rows:
    for key in ("train/loss", "train/learning_rate", "train/grad_norm", "perf/tokens_per_sec",
                "perf/steps_per_sec", "train/skipped_updates"):
      assert key in row and np.isfinite(row[key]), (key, row)
  assert [r["step"] for r in rows if "eval/accuracy" in r] == [4, 8]
  assert 0.0 <= result["eval/accuracy"] <= 1.0
  assert any(name.startswith("events") for name in os.listdir(os.path.join(workdir, "tb")))
  assert os.path.getsize(os.path.join(workdir, "curves.png")) > 0
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["train"]["num_steps"] == 8


def test_resume_on_a_different_mesh(tmp_path):
  """Saved on 1 device, restored on a (data=2, fsdp=2, tensor=2) mesh of 8 devices."""
  one_device = {"mesh.num_devices": 1, "mesh.data": 1}
  train_lib.train(make_test_config(**one_device), str(tmp_path / "full"))
  _, expected = final_params(str(tmp_path / "full"))

  workdir = str(tmp_path / "moved")
  # The first leg stops at step 4 with the full run's learning-rate schedule.
  train_lib.train(make_test_config(**one_device, **{"train.num_steps": 4, "optimizer.schedule_steps": 8}),
                  workdir)
  train_lib.train(make_test_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2,
                                     "optimizer.schedule_steps": 8}), workdir)
  step, resumed = final_params(workdir)
  assert step == 8
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), resumed, expected)


def test_init_from_starts_from_a_saved_model(tmp_path):
  first = str(tmp_path / "first")
  train_lib.train(make_test_config(), first)
  _, trained = final_params(first)
  assert os.path.exists(os.path.join(first, "params", "model_config.json"))
  # A learning rate of 1e-30 leaves float32 parameters bit-for-bit unchanged: the second run's
  # final parameters are exactly what it started from.
  second = str(tmp_path / "second")
  train_lib.train(make_test_config(**{"init_from": os.path.join(first, "params"),
                                      "optimizer.learning_rate": 1e-30, "train.num_steps": 2,
                                      "train.eval_every": 2, "train.checkpoint_every": 2}), second)
  _, started_from = final_params(second)
  assert_trees_equal(started_from, trained)
  with pytest.raises(ConfigError, match="config.init_from='/nonexistent'"):
    validate_config(make_test_config(init_from="/nonexistent"))


def test_non_finite_updates_are_skipped_and_stop_the_run(tmp_path):
  config = make_test_config(**{"optimizer.learning_rate": 1e30, "optimizer.grad_clip_norm": 0.0,
                          "train.max_consecutive_skips": 3, "train.num_steps": 40,
                          "train.checkpoint_every": 2})
  with pytest.raises(FloatingPointError, match=r"consecutive steps up to step \d+ had a non-finite") as error:
    train_lib.train(config, str(tmp_path))
  consecutive = int(str(error.value).split()[0])
  assert consecutive >= 3   # checked after each call of steps_per_call=2 steps
  rows = read_metrics(str(tmp_path))
  assert rows[-1]["train/skipped_updates"] >= 1
  step, params = final_params(str(tmp_path))
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params)), "checkpoint must hold finite params"
  # Before any checkpoint, the message says so (not "step None").
  config = make_test_config(**{"optimizer.learning_rate": 1e30, "optimizer.grad_clip_norm": 0.0,
                               "train.max_consecutive_skips": 2, "train.num_steps": 40,
                               "train.checkpoint_every": 40, "train.eval_every": 40})
  with pytest.raises(FloatingPointError, match="No checkpoint had been saved yet"):
    train_lib.train(config, str(tmp_path / "early"))


def test_jsonl_task_trains_with_its_host_verifier_and_malformed_line_names_it(tmp_path):
  from configs.sft_jsonl import get_config
  train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
  train_file.write_text("\n".join(json.dumps({"q": f"What is {a} plus {b}?", "a": str(a + b)})
                                  for a in range(10, 30) for b in range(10, 12)) + "\n")
  eval_file.write_text(json.dumps({"q": "What is 12 plus 13?", "a": 25}) + "\n")
  config = get_config("test").unlock()
  config.task.update(dict(train_path=str(train_file), eval_path=str(eval_file), prompt_field="q",
                          answer_field="a"))
  config.train.num_steps = 4
  result = train_lib.train(config, str(tmp_path / "run"))
  assert read_metrics(str(tmp_path / "run"))[-1]["step"] == 4 and result["eval/accuracy"] == 0.0
  eval_file.write_text(json.dumps({"q": "1+1=", "a": "2"}) + "\n{not json\n")
  with pytest.raises(ValueError, match=r"eval.jsonl:2: not valid JSON"):
    train_lib.train(config, str(tmp_path / "bad"))


@pytest.mark.parametrize("overrides, message", [
    ({"train.global_batch_size": 6}, r"config.train.global_batch_size=6 must be divisible by the data-parallel size 8"),
    ({"train.eval_every": 3}, r"config.train.eval_every=3 must be a multiple of config.train.steps_per_call=2"),
    ({"mesh.data": 3}, r"config.mesh .* does not fit 8 devices"),
    ({"pipeline": "dpo"}, r"config.pipeline='dpo'"),
])
def test_contradictory_settings_name_the_field(overrides, message):
  with pytest.raises(ConfigError, match=message):
    validate_config(make_test_config(**overrides))


def test_recompilation_is_detected():
  jitted = jax.jit(lambda x: x * 2)
  jitted(np.ones(3))
  assert not train_lib.warn_if_recompiled(jitted, "toy", 1)
  jitted(np.ones(4))
  assert train_lib.warn_if_recompiled(jitted, "toy", 2)


def test_lora_trains_only_the_adapters(tmp_path):
  from flax import nnx
  from selfimprove.models import Transformer
  from selfimprove.run_setup import build_model_config

  config = make_test_config(**{"model.lora_rank": 2, "train.num_steps": 2, "train.eval_every": 2,
                               "train.checkpoint_every": 2})
  train_lib.train(config, str(tmp_path))
  _, trained = final_params(str(tmp_path))
  model_config = build_model_config(config)
  # Initialised under jit as the trainer does (eager init can differ in the last bit).
  initial = jax.jit(lambda: nnx.to_pure_dict(nnx.state(Transformer(model_config, rngs=nnx.Rngs(params=0)))))()
  changed = {jax.tree_util.keystr(path): not np.array_equal(a, b) for (path, a), (_, b) in
             zip(jax.tree_util.tree_flatten_with_path(trained)[0],
                 jax.tree_util.tree_flatten_with_path(initial)[0])}
  adapters = {k: v for k, v in changed.items() if "_lora_" in k}
  base = {k: v for k, v in changed.items() if "_lora_" not in k}
  assert adapters and any(adapters.values())   # B starts at zero and moves
  assert base and not any(base.values()), [k for k, v in base.items() if v]


def test_eval_at_start_logs_step_0_once_even_after_a_restart_before_any_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = make_test_config(**{"train.eval_at_start": True, "train.num_steps": 2,
                               "train.eval_every": 2, "train.checkpoint_every": 2})
  train_lib.train(config, workdir)
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 2]
  # An attempt killed before its first checkpoint leaves metrics but no checkpoint: the
  # relaunch starts afresh and must not log a second step-0 (or any stale) row.
  import shutil
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  train_lib.train(config, workdir)
  assert [r["step"] for r in read_metrics(workdir) if "eval/accuracy" in r] == [0, 2]


def test_correction_demo_settings_are_checked_by_field(tmp_path):
  config = make_test_config(**{"data.correction_demos": 0.5, "data.correction_instruction": ""})
  with pytest.raises(ConfigError, match=r"config.data .*instruction must be non-empty"):
    train_lib.train(config, str(tmp_path))


def test_stop_rule_ends_the_run_early_and_a_relaunch_does_not_train_on(tmp_path):
  workdir = str(tmp_path)
  # Exact match >= 0 holds after the first call (2 steps) of the 8-step test run.
  config = make_test_config(**{"train.stop_metric": "train/exact_match", "train.stop_threshold": 0.0,
                               "train.checkpoint_every": 8, "train.eval_every": 8})
  result = train_lib.train(config, workdir)
  assert result["step"] == 2 and "eval/accuracy" in result   # stopped with its final evaluation
  assert final_params(workdir)[0] == 2
  assert os.path.isdir(os.path.join(workdir, "params"))
  rows = read_metrics(workdir)
  assert rows[-1]["step"] == 2 and "eval/accuracy" in rows[-1]
  train_lib.train(config, workdir)     # finished: no more steps, nothing logged twice
  assert final_params(workdir)[0] == 2 and read_metrics(workdir) == rows


def test_stop_rule_on_a_metric_the_pipeline_does_not_log_names_the_field(tmp_path):
  config = make_test_config(**{"train.stop_metric": "train/accuracy", "train.stop_threshold": 0.5})
  with pytest.raises(ConfigError, match=r"config.train.stop_metric='train/accuracy'.*train/exact_match"):
    train_lib.train(config, str(tmp_path))
