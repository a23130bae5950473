"""The RL pipeline under the real trainer (configs/rl_arithmetic.py:test): every figure logged,
the reference in the checkpoint, exact resume."""


import jax
import numpy as np
import pytest

from selfimprove import train as train_lib
from selfimprove.config_checks import validate_config
from selfimprove.pipelines import register_pipeline, rl
from tests.train_helpers import assert_trees_equal, copy_run_until, final_state, read_metrics, single_device_config

register_pipeline("rl", rl.build, section="rl")   # until the registry line lands (a no-op after)

TRAIN_FIGURES = ("train/loss", "train/grad_norm", "train/reward", "train/reward_std",
                 "train/kl", "train/clip_fraction", "train/length", "train/reward/verifier",
                 "train/reward/self_judge", "train/reward/length", "train/reward/format")


def _config(**overrides):
  return single_device_config("rl_arithmetic", **{"eval.num_examples": 16, **overrides})


@pytest.mark.parametrize("preset", ["tiny", "test"])
def test_presets_pass_the_start_up_checks(preset):
  from configs.rl_arithmetic import get_config
  config = get_config(preset)
  validate_config(config)
  validate_config(config.warm_start)
  rl.RLConfig(**config.rl.to_dict())


def test_resume_matches_an_uninterrupted_run(tmp_path, caplog):
  config = _config()
  assert config.rl.num_iterations == 2 and config.rl.kl_coef > 0     # the test preset's coverage
  full = str(tmp_path / "full")
  result = train_lib.train(config, full)
  rows = read_metrics(full)
  train_rows = [r for r in rows if "train/reward" in r]
  assert [r["step"] for r in train_rows] == [2, 4, 6, 8]
  for row in train_rows:
    for name in TRAIN_FIGURES:
      assert np.isfinite(row[name]), (row["step"], name)
    assert row["perf/tokens_per_sec"] > 0     # from the step's perf/tokens
  assert any(r["train/clip_fraction"] > 0 for r in train_rows)     # the second update clips
  assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 4, 8]   # 0: eval_at_start
  assert 0 <= result["eval/accuracy"] <= 1
  step, state = final_state(full)
  assert step == 8 and set(state["extra"]) == {"ref_params"}
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), state["params"],
                       state["extra"]["ref_params"])
  assert all(jax.tree.leaves(moved))       # the reference stays the starting policy

  # A run killed after its step-4 checkpoint: its workdir holds what the full run had written.
  resumed = str(tmp_path / "resumed")
  copy_run_until(full, resumed, 4)
  with caplog.at_level("INFO"):
    train_lib.train(config, resumed)
  assert "Resuming from checkpoint at step 4" in caplog.text
  resumed_rows = [r for r in read_metrics(resumed) if "train/reward" in r]
  assert [r["step"] for r in resumed_rows] == [2, 4, 6, 8]
  for a, b in zip(train_rows, resumed_rows):
    assert {k: a[k] for k in TRAIN_FIGURES} == {k: b[k] for k in TRAIN_FIGURES}, a["step"]
  _, resumed_state = final_state(resumed)
  assert_trees_equal(state["params"], resumed_state["params"])
  assert_trees_equal(state["extra"], resumed_state["extra"])
  assert_trees_equal(state["opt_state"], resumed_state["opt_state"])


def test_a_run_on_8_devices_matches_one_device(tmp_path):
  """Prompts sharded over the data axis (one per device, its G samples with it): the same run."""
  short = {"train.num_steps": 4, "train.eval_every": 4, "train.checkpoint_every": 4}
  assert jax.device_count() == 8       # tests/conftest.py's fake CPU devices
  figures = {}
  for name, mesh in (("one", {}), ("eight", {"mesh.num_devices": -1, "mesh.data": -1})):
    train_lib.train(_config(**short, **mesh), str(tmp_path / name))
    figures[name] = [r for r in read_metrics(str(tmp_path / name)) if "train/reward" in r]
  assert [r["step"] for r in figures["eight"]] == [2, 4]
  for a, b in zip(figures["one"], figures["eight"]):
    for name in TRAIN_FIGURES:
      assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-6), (a["step"], name)
