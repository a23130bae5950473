"""STP under the real trainer (configs/stp_linear_equations.py:test): the one-command warm start
on the warm-start set, the metrics, the pools in the checkpoint, a relaunch bit for bit."""

import os
import shutil
import signal

import pytest

from selfimprove import run_setup
from selfimprove import train as train_lib
from selfimprove.config_checks import ConfigError
from tests.train_helpers import assert_trees_equal, final_state, launch, read_metrics, single_device_config


def _config(**overrides):
  return single_device_config("stp_linear_equations", **{**overrides})


def _without_timing(row):
  return {k: v for k, v in row.items() if not k.startswith("perf/")}


def test_warm_start_trains_on_the_warm_start_set_only():
  config = _config()
  warm = config.warm_start
  task = run_setup.build_task(warm)
  tokenizer, _ = run_setup.build_run_tokenizer(warm, task, run_setup.build_model_config(warm))
  data = run_setup.build_data(warm, task, tokenizer)
  prompts = {example["prompt"] for _, example in data.train}
  train_statements = {example["statement"] + "|" for example in task.examples("train")}
  assert not prompts & train_statements          # no training statement is shown with a proof
  roles = [example["role"] for _, example in data.train]
  assert roles.count("prover") == roles.count("conjecturer") == len(task.seed_examples())
  with pytest.raises(ConfigError, match="train_examples must be"):
    bad = warm.unlock()
    bad.data.train_examples = "seeds"
    run_setup.build_data(bad, task, tokenizer)


def test_one_command_then_resume_bit_for_bit(tmp_path, capsys):
  full = str(tmp_path / "full")
  result = train_lib.train_with_warm_start(_config(), full)
  assert os.path.isdir(os.path.join(full, "warm_start", "params"))
  rows = read_metrics(full)
  train_rows = [_without_timing(r) for r in rows if "train/proved_fraction" in r]
  assert [r["step"] for r in train_rows] == [2, 4]
  for key in ("train/generated_proofs", "conjecture/well_formed", "conjecture/new",
              "conjecture/barely_provable", "conjecture/distinct", "conjecture/pool_size"):
    assert key in train_rows[0], key
  assert [r["step"] for r in rows if "eval/pass_at_1" in r] == [0, 4]
  assert 0.0 <= result["eval/pass_at_1"] <= result["eval/pass_at_k"] <= 1.0
  step, state = final_state(full)
  assert step == 4
  assert {"proved", "best_pass_rate", "proof", "novelty", "replay", "accepted"} <= set(
      state["extra"])
  assert int(state["extra"]["generated_proofs"]) == train_rows[-1]["train/generated_proofs"]

  # A run killed after its step-2 checkpoint (the same workdir, step 4's checkpoint gone)
  # resumes to the same state and metrics.
  shutil.rmtree(os.path.join(full, "checkpoints", "4"))
  train_lib.train_with_warm_start(_config(), full)
  resumed_rows = [_without_timing(r) for r in read_metrics(full) if "train/proved_fraction" in r]
  assert resumed_rows == train_rows
  _, resumed_state = final_state(full)
  assert_trees_equal(state["params"], resumed_state["params"])
  assert_trees_equal(state["extra"], resumed_state["extra"])


def test_relaunch_refuses_another_mode(tmp_path):
  workdir = str(tmp_path)
  train_lib.train_with_warm_start(_config(**{"train.num_steps": 2}), workdir)
  with pytest.raises(Exception, match="stp"):
    train_lib.train_with_warm_start(_config(**{"stp.mode": "expert_iteration"}), workdir)


def test_sigkill_mid_self_play_then_relaunch_is_bitwise_identical(tmp_path):
  """launch/train.py killed (SIGKILL) after an STP checkpoint: the same command again ends with
  the parameters, statistics, novelty and replay tables of an uninterrupted run."""
  from tests.test_train_launch import _wait_for_checkpoint
  config = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs",
                        "stp_linear_equations.py")
  flags = ["--config.train.num_steps=16", "--config.train.checkpoint_every=2",
           "--config.train.eval_every=16", "--config.train.log_every=2",
           "--config.train.async_checkpoints=False"]
  straight_dir, killed_dir = str(tmp_path / "straight"), str(tmp_path / "killed")
  straight = launch(straight_dir, *flags, config=config)
  assert straight.returncode == 0, straight.stdout + straight.stderr
  proc = launch(killed_dir, *flags, config=config, wait=False)
  _wait_for_checkpoint(proc, killed_dir)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  killed_at = final_state(killed_dir)[0]
  assert 0 < killed_at < 16
  resumed = launch(killed_dir, *flags, config=config)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f"Resuming from checkpoint at step {killed_at}" in resumed.stderr
  (step, state), (straight_step, straight_state) = final_state(killed_dir), final_state(straight_dir)
  assert step == straight_step == 16
  assert_trees_equal(state["params"], straight_state["params"])
  assert_trees_equal(state["extra"], straight_state["extra"])
  rows = [_without_timing(r) for r in read_metrics(killed_dir)]
  assert rows == [_without_timing(r) for r in read_metrics(straight_dir)]
