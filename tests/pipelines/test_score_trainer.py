"""SCoRe under the real trainer (configs/score_arithmetic.py:test): eval/<figure> logging, ref
params in the checkpoint, exact resume."""

import os
import re

import jax
import numpy as np
import pytest

from selfimprove import train as train_lib
from tests.train_helpers import assert_trees_equal, copy_run_until, final_state, read_metrics, single_device_config

STAGE1_STEPS = 2
EVAL_FIGURES = ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "edit_distance", "changed")


def _config(**overrides):
  config = single_device_config("score_arithmetic", **{"eval.num_examples": 16, **overrides})
  assert config.score.stage1_steps == STAGE1_STEPS
  return config


def test_resume_mid_stage2_matches_an_uninterrupted_run(tmp_path, caplog):
  full = str(tmp_path / "full")
  result = train_lib.train(_config(), full)
  rows = read_metrics(full)
  train_rows = [r for r in rows if "train/stage" in r]
  assert [(r["step"], r["train/stage"]) for r in train_rows] == [(2, 1.0), (4, 2.0), (6, 2.0),
                                                                  (8, 2.0)]
  for name in EVAL_FIGURES:
    assert [r["step"] for r in rows if f"eval/{name}" in r] == [0, 4, 8]   # 0: eval_at_start
    assert np.isfinite(result[f"eval/{name}"])
  assert result["eval/delta"] == pytest.approx(result["eval/acc_t2"] - result["eval/acc_t1"])
  step, state = final_state(full)
  assert step == 8 and set(state["extra"]) == {"ref_params"}
  # The reference policy in the checkpoint is the initial policy, not the trained one.
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), state["params"], state["extra"]["ref_params"])
  assert all(jax.tree.leaves(moved))

  # A run killed after its step-4 checkpoint (inside Stage II): its workdir holds exactly
  # what the full run had written by then, so copy that instead of training it again.
  resumed = str(tmp_path / "resumed")
  copy_run_until(full, resumed, 4)
  with caplog.at_level("INFO"):
    train_lib.train(_config(), resumed)
  assert "Resuming from checkpoint at step 4" in caplog.text
  resumed_rows = [r for r in read_metrics(resumed) if "train/stage" in r]
  assert [r["step"] for r in resumed_rows] == [2, 4, 6, 8]
  for a, b in zip(train_rows, resumed_rows):
    assert a["train/stage"] == b["train/stage"]
    assert a["train/loss"] == b["train/loss"], (a["step"], a["train/loss"], b["train/loss"])
  _, resumed_state = final_state(resumed)
  assert_trees_equal(state["params"], resumed_state["params"])
  assert_trees_equal(state["extra"], resumed_state["extra"])


def test_one_command_trains_the_warm_start_then_score(tmp_path, capsys):
  """configs/score_arithmetic.py's warm_start section runs first; SCoRe starts from its params,
  evaluates them at step 0 and prints the before/after table."""
  workdir = str(tmp_path)
  config = _config(**{"train.num_steps": 4, "train.eval_every": 4, "train.checkpoint_every": 4})
  assert config.warm_start.data.correction_demos > 0
  assert config.warm_start.data.correction_instruction == config.score.correction_instruction
  result = train_lib.train_with_warm_start(config, workdir)
  warm_rows = read_metrics(os.path.join(workdir, "warm_start"))
  assert warm_rows[-1]["step"] == config.warm_start.train.num_steps
  assert os.path.exists(os.path.join(workdir, "warm_start", "params", "model_config.json"))
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows if "eval/acc_t1" in r] == [0, 4]
  with open(os.path.join(workdir, "config.json")) as f:
    assert f'"init_from": "{os.path.join(workdir, "warm_start", "params")}"' in f.read()
  # The reference policy (= the starting policy) is the warm start's exported model.
  from selfimprove.models.orbax_params import load_orbax_params
  _, _, warm_params = load_orbax_params(os.path.join(workdir, "warm_start", "params"))
  _, state = final_state(workdir)
  assert_trees_equal(jax.tree.map(np.asarray, nnx_pure(warm_params)), state["extra"]["ref_params"])
  assert os.path.getsize(os.path.join(workdir, "eval_curves.png")) > 1000
  table = capsys.readouterr().out
  for name in EVAL_FIGURES[:5]:
    assert re.search(rf"eval/{name} +-?[0-9.]+ +-?[0-9.]+ +[-+][0-9.]+", table), name
  assert np.isfinite(result["eval/delta"])

  # Relaunching a finished run trains neither stage again.
  mtime = os.path.getmtime(os.path.join(workdir, "warm_start", "metrics.jsonl"))
  train_lib.train_with_warm_start(config, workdir)
  assert os.path.getmtime(os.path.join(workdir, "warm_start", "metrics.jsonl")) == mtime
  assert [r["step"] for r in read_metrics(workdir) if "eval/acc_t1" in r] == [0, 4]


def nnx_pure(state):
  from flax import nnx
  return nnx.to_pure_dict(state)


def test_warm_start_on_another_task_is_refused(tmp_path):
  from selfimprove.config_checks import ConfigError
  config = _config(**{"task.split_seed": 1})
  with pytest.raises(ConfigError, match=r"config.warm_start.task .* differs from config.task"):
    train_lib.train_with_warm_start(config, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, "warm_start"))


def test_warm_start_demos_must_use_the_score_instruction(tmp_path):
  from selfimprove.config_checks import ConfigError
  config = _config().unlock()
  config.warm_start.data.correction_instruction = "+"
  with pytest.raises(ConfigError, match=r"correction_instruction='\+' differs"):
    train_lib.train_with_warm_start(config, str(tmp_path))


@pytest.mark.parametrize("mode", ["offline_star_baseline", "pair_sft_baseline"])
def test_offline_baselines_train_and_resume_exactly(tmp_path, mode):
  """The paper's SFT baselines under the trainer: eval figures logged, and a resumed run takes
  exactly the uninterrupted run's steps (their data is a fixed function of seed and problem)."""
  overrides = {"score.mode": mode, "train.num_steps": 4, "train.eval_every": 4}
  full = str(tmp_path / "full")
  result = train_lib.train(_config(**overrides), full)
  rows = [r for r in read_metrics(full) if "train/kept_fraction" in r]
  assert [r["step"] for r in rows] == [2, 4]
  assert all(0 <= r["train/kept_fraction"] <= 1 for r in rows)
  for name in EVAL_FIGURES:
    assert np.isfinite(result[f"eval/{name}"])
  resumed = str(tmp_path / "resumed")
  train_lib.train(_config(**{**overrides, "train.num_steps": 2}), resumed)
  train_lib.train(_config(**overrides), resumed)
  resumed_rows = [r for r in read_metrics(resumed) if "train/kept_fraction" in r]
  assert [(r["train/loss"], r["train/kept_fraction"]) for r in resumed_rows] == [
      (r["train/loss"], r["train/kept_fraction"]) for r in rows]
  _, state = final_state(full)
  _, resumed_state = final_state(resumed)
  assert_trees_equal(state["params"], resumed_state["params"])
