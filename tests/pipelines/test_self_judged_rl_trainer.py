"""configs/self_judged_rl_arithmetic.py under the real trainer: SFT -> judge training -> RL with
the self-judge as the only reward in one command, each stage resumable; run flags."""

import json
import os

import numpy as np
import pytest

from selfimprove import train as train_lib
from selfimprove.config_checks import validate_config
from selfimprove.pipelines import judge_training, rl
from tests.train_helpers import (assert_trees_equal, copy_run_until, final_state, preset_config,
                                 read_metrics)

STAGES = ("", "warm_start.", "warm_start.warm_start.")


def _config(**overrides):
  """The test preset on one device, synchronous checkpoints, in every stage."""
  one_device = {f"{stage}{name}": value for stage in STAGES for name, value in
                (("mesh.num_devices", 1), ("mesh.data", 1), ("train.async_checkpoints", False),
                 ("eval.num_examples", 16))}
  return preset_config("self_judged_rl_arithmetic", **{**one_device, **overrides})


@pytest.mark.parametrize("preset", ["tiny", "test"])
def test_presets_pass_the_start_up_checks(preset):
  from configs.self_judged_rl_arithmetic import get_config
  config = get_config(preset)
  for stage in (config, config.warm_start, config.warm_start.warm_start):
    validate_config(stage)
  assert (config.pipeline, config.warm_start.pipeline, config.warm_start.warm_start.pipeline) == (
      "rl", "judge_training", "sft")
  settings = rl.RLConfig(**config.rl.to_dict())
  assert [spec.source for spec in settings.rewards] == ["self_judge"]     # no verifier reward
  judge = judge_training.JudgeTrainingConfig(**config.warm_start.judge_training.to_dict())
  reward_judge = dict(settings.rewards[0].options)
  # The judge that RL rewards with is the one judge training trained.
  assert (judge.template, judge.yes, judge.no) == (
      reward_judge["template"], (reward_judge["yes"],), (reward_judge["no"],))


@pytest.fixture(scope="module")
def three_stages(tmp_path_factory):
  """The test preset's one command, run once: its workdir."""
  workdir = str(tmp_path_factory.mktemp("self_judged") / "run")
  return workdir, train_lib.train_with_warm_start(_config(), workdir)


def test_one_command_runs_three_stages_and_a_relaunch_redoes_none(three_stages):
  workdir, result = three_stages
  train_lib.train_with_warm_start(_config(), workdir)     # everything finished: nothing runs
  sft_dir, judge_dir = os.path.join(workdir, "warm_start", "warm_start"), os.path.join(
      workdir, "warm_start")
  for stage_dir in (sft_dir, judge_dir, workdir):
    assert os.path.exists(os.path.join(stage_dir, "params", "model_config.json")), stage_dir
  judge_rows = read_metrics(judge_dir)
  judge_train = [r for r in judge_rows if "train/judge_loss" in r]
  assert judge_train and all(np.isfinite(r[k]) for r in judge_train for k in (
      "train/judge_loss", "train/task_loss", "train/judge_accuracy", "train/sample_accuracy"))
  # Before (step 0) and after: the judge's AUROC and the task accuracy.
  assert [r["step"] for r in judge_rows if "eval/accuracy" in r] == [0, 4, 8]
  assert all("eval/judge_auroc" in r for r in judge_rows if "eval/accuracy" in r)
  rl_train = [r for r in read_metrics(workdir) if "train/reward" in r]
  assert rl_train and all("train/verified_accuracy" in r and "train/reward/self_judge" in r and
                          "train/reward/verifier" not in r for r in rl_train)
  assert 0 <= result["eval/accuracy"] <= 1 and "eval/judge_score" in result
  # The RL stage started from judge training's export, which started from SFT's.
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["init_from"] == os.path.join(judge_dir, "params")
  with open(os.path.join(judge_dir, "config.json")) as f:
    assert json.load(f)["init_from"] == os.path.join(sft_dir, "params")
  for stage_dir in (sft_dir, judge_dir):    # logged once: the relaunch trained neither again
    steps = [r["step"] for r in read_metrics(stage_dir) if "train/loss" in r]
    assert len(steps) == len(set(steps)), stage_dir


def test_judge_training_resumes_exactly(three_stages, tmp_path):
  judge_dir = os.path.join(three_stages[0], "warm_start")
  with open(os.path.join(judge_dir, "config.json")) as f:
    init_from = json.load(f)["init_from"]
  config = _config(**{f"warm_start.{k}": v for k, v in (("init_from", init_from),)}).warm_start
  resumed = str(tmp_path / "resumed")
  copy_run_until(judge_dir, resumed, 4)
  train_lib.train(config, resumed)
  names = ("train/loss", "train/judge_loss", "train/task_loss", "train/judge_accuracy")
  rows = lambda d: [{k: r[k] for k in names} for r in read_metrics(d) if "train/judge_loss" in r]
  assert rows(resumed) == rows(judge_dir)
  _, a = final_state(judge_dir)
  _, b = final_state(resumed)
  assert_trees_equal(a["params"], b["params"])
  assert_trees_equal(a["opt_state"], b["opt_state"])


class _Flagging:
  def __init__(self, flags):
    self.flags = flags

  def run_flags(self, records):
    assert records and records[0]["step"] == 0
    return self.flags


def test_run_flags_are_written_and_cleared(tmp_path):
  workdir = str(tmp_path)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 0, "eval/accuracy": 0.5}) + "\n")
  path = os.path.join(workdir, "flags.json")
  assert train_lib.run_flags(object(), workdir) == {}           # a pipeline without flags
  flags = {"reward_hacking": "reward hacking: ..."}
  assert train_lib.run_flags(_Flagging(flags), workdir) == flags
  with open(path) as f:
    assert json.load(f) == flags
  assert train_lib.run_flags(_Flagging({}), workdir) == {} and not os.path.exists(path)
