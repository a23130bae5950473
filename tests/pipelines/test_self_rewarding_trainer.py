"""configs/self_rewarding_arithmetic.py under the real trainer: SFT -> judge training -> three
rounds of Self-Rewarding in one command; a run killed mid-round or between rounds resumes
exactly."""

import json
import os

import pytest

from selfimprove import train as train_lib
from selfimprove.config_checks import validate_config
from selfimprove.pipelines import self_rewarding
from tests.train_helpers import (assert_trees_equal, copy_run_until, final_state, preset_config,
                                 read_metrics)

STAGES = ("", "warm_start.", "warm_start.warm_start.")
FIGURES = ("train/loss", "train/reward_margin", "train/score_gap", "train/pair_fraction",
           "train/chosen_verified", "train/round")


def _config(**overrides):
  one_device = {f"{stage}{name}": value for stage in STAGES for name, value in
                (("mesh.num_devices", 1), ("mesh.data", 1), ("train.async_checkpoints", False),
                 ("eval.num_examples", 16))}
  return preset_config("self_rewarding_arithmetic",
                       **{**one_device, "train.keep_checkpoints": 10, **overrides})


@pytest.mark.parametrize("preset", ["tiny", "test"])
def test_presets_pass_the_start_up_checks(preset):
  from configs.self_rewarding_arithmetic import get_config
  config = get_config(preset)
  for stage in (config, config.warm_start, config.warm_start.warm_start):
    validate_config(stage)
  settings = self_rewarding.SelfRewardingConfig(**config.self_rewarding.to_dict())
  assert config.train.num_steps == 3 * settings.steps_per_round       # three rounds
  assert config.train.eval_every == settings.steps_per_round          # an evaluation per round
  for method in ("temporal", "spin", "sppo"):
    scorer = {"spin": "none", "sppo": "verifier"}.get(method, "p_true")
    self_rewarding.SelfRewardingConfig(**{**config.self_rewarding.to_dict(), "method": method,
                                          "scorer": scorer})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("self_rewarding") / "run")
  train_lib.train_with_warm_start(_config(), workdir)
  return workdir


def test_three_rounds_log_their_figures(full_run):
  rows = read_metrics(full_run)
  train_rows = [r for r in rows if "train/score_gap" in r]
  assert [r["train/round"] for r in train_rows] == [0, 0, 1, 1, 2, 2]
  assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 4, 8, 12]
  assert all("eval/judge_auroc" in r for r in rows if "eval/accuracy" in r)


@pytest.mark.parametrize("killed_at", [6, 8])      # mid-round 1; between rounds 1 and 2
def test_a_killed_run_resumes_exactly(full_run, tmp_path, killed_at):
  with open(os.path.join(full_run, "config.json")) as f:
    init_from = json.load(f)["init_from"]
  resumed = str(tmp_path / "resumed")
  copy_run_until(full_run, resumed, killed_at)
  train_lib.train(_config(init_from=init_from), resumed)
  pick = lambda d: [{k: r.get(k) for k in FIGURES} for r in read_metrics(d)
                    if "train/score_gap" in r]
  assert pick(resumed) == pick(full_run)
  _, a = final_state(full_run)
  _, b = final_state(resumed)
  for part in ("params", "opt_state", "extra"):
    assert_trees_equal(a[part], b[part])
