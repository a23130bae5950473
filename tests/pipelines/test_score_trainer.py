"""SCoRe under the real trainer (configs/score_arithmetic.py:test): eval/<figure> logging, ref
params in the checkpoint, exact resume."""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from selfimprove import train as train_lib
from tests.train_helpers import assert_trees_equal, read_metrics

STAGE1_STEPS = 2
EVAL_FIGURES = ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "edit_distance", "changed")


def _config(**overrides):
  from configs.score_arithmetic import get_config
  config = get_config("test").unlock()
  assert config.score.stage1_steps == STAGE1_STEPS
  overrides = {"mesh.num_devices": 1, "mesh.data": 1, "train.async_checkpoints": False,
               "eval.num_examples": 16, **overrides}
  for name, value in overrides.items():
    section, field = name.split(".")
    config[section][field] = value
  return config.lock()


def _final_state(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "data"))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return step, jax.tree.map(np.asarray, restored["state"])


def test_resume_mid_stage2_matches_an_uninterrupted_run(tmp_path, caplog):
  full = str(tmp_path / "full")
  result = train_lib.train(_config(), full)
  rows = read_metrics(full)
  train_rows = [r for r in rows if "train/stage" in r]
  assert [(r["step"], r["train/stage"]) for r in train_rows] == [(2, 1.0), (4, 2.0), (6, 2.0),
                                                                  (8, 2.0)]
  for name in EVAL_FIGURES:
    assert [r["step"] for r in rows if f"eval/{name}" in r] == [4, 8]
    assert np.isfinite(result[f"eval/{name}"])
  assert result["eval/delta"] == pytest.approx(result["eval/acc_t2"] - result["eval/acc_t1"])
  step, state = _final_state(full)
  assert step == 8 and set(state["extra"]) == {"ref_params"}
  # The reference policy in the checkpoint is the initial policy, not the trained one.
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), state["params"], state["extra"]["ref_params"])
  assert all(jax.tree.leaves(moved))

  # A run killed after its step-4 checkpoint (inside Stage II): its workdir holds exactly
  # what the full run had written by then, so copy that instead of training it again.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(os.path.join(full, "checkpoints", "4"), os.path.join(resumed, "checkpoints", "4"))
  shutil.copy(os.path.join(full, "metrics.jsonl"), resumed)
  with caplog.at_level("INFO"):
    train_lib.train(_config(), resumed)
  assert "Resuming from checkpoint at step 4" in caplog.text
  resumed_rows = [r for r in read_metrics(resumed) if "train/stage" in r]
  assert [r["step"] for r in resumed_rows] == [2, 4, 6, 8]
  for a, b in zip(train_rows, resumed_rows):
    assert a["train/stage"] == b["train/stage"]
    assert a["train/loss"] == b["train/loss"], (a["step"], a["train/loss"], b["train/loss"])
  _, resumed_state = _final_state(resumed)
  assert_trees_equal(state["params"], resumed_state["params"])
  assert_trees_equal(state["extra"], resumed_state["extra"])
