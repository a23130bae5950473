"""Sweeps: expansion and naming, a real sweep of launch/train.py trials (results, a failing trial,
resume), the submitit path with its local executor, --dry_run, and errors naming file and field."""

import csv
import glob
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from selfimprove import sweep as sweep_lib
from selfimprove import sweep_results
from selfimprove.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "launch", "sweep.py")
TRAIN = os.path.join(ROOT, "launch", "train.py")


def _sweep_file(directory, body: str, name: str = "sweep.py") -> str:
  """A sweep file whose get_config() builds `config` with the given statements."""
  path = os.path.join(str(directory), name)
  with open(path, "w") as f:
    f.write("import ml_collections\n\ndef get_config():\n"
            "  config = ml_collections.ConfigDict()\n"
            "  config.base = 'configs/sft_arithmetic.py:test'\n"
            + "".join(f"  {line}\n" for line in body.strip().splitlines())
            + "  return config\n")
  return path


def _cli(*flags: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)   # one CPU device per trial: faster than 8 fake ones
  return subprocess.run([sys.executable, SWEEP, *flags], env=env, capture_output=True,
                        text=True, timeout=600, cwd=ROOT)


def _names(trials):
  return [t.name for t in sweep_lib.name_trials(trials, "s.py")]


# ---------------------------------------------------------------- expansion and naming

def test_list_trials_from_dotted_keys_nested_dicts_and_flags():
  trials = sweep_lib.expand({"trials": [
      {"score.alpha": 1.0, "seed": 0},
      {"score": {"alpha": 10.0}, "seed": 1},
      ["--config.score.alpha=3", "--config.seed=2"]]}, "s.py")
  assert trials == [{"score.alpha": 1.0, "seed": 0}, {"score.alpha": 10.0, "seed": 1},
                    {"score.alpha": "3", "seed": "2"}]
  assert _names(trials) == ["alpha=1.0,seed=0", "alpha=10.0,seed=1", "alpha=3,seed=2"]


def test_grid_is_the_cartesian_product_and_multiplies_a_list_of_arms():
  grid = {"score": {"alpha": [1.0, 10.0], "beta2": [0.1, 0.3]}, "seed": [0, 1, 2]}
  trials = sweep_lib.expand({"grid": grid, "fixed": {"train": {"num_steps": 4}}}, "s.py")
  assert trials == [{"score.alpha": a, "score.beta2": b, "seed": s, "train.num_steps": 4}
                    for a in (1.0, 10.0) for b in (0.1, 0.3) for s in (0, 1, 2)]
  assert _names(trials)[:2] == ["alpha=1.0,beta2=0.1,seed=0", "alpha=1.0,beta2=0.1,seed=1"]
  arms = sweep_lib.expand({"trials": [{"score.mode": "a"}, {"score.mode": "b"}],
                           "grid": {"seed": [0, 1]}}, "s.py")
  assert _names(arms) == ["mode=a,seed=0", "mode=a,seed=1", "mode=b,seed=0", "mode=b,seed=1"]


def test_random_sample_is_seeded_distinct_and_within_bounds():
  def sample(seed, num_trials=6):
    space = {"optimizer": {"learning_rate": {"log_uniform": [1e-4, 1e-2]},
                           "b2": {"uniform": [0.9, 0.999]}}, "seed": [0, 1, 2]}
    return sweep_lib.expand({"random": dict(num_trials=num_trials, seed=seed, space=space)}, "s.py")
  first = sample(0)
  assert first == sample(0)
  assert first != sample(1)
  assert len({json.dumps(t, sort_keys=True) for t in first}) == 6
  for trial in first:
    assert 1e-4 <= trial["optimizer.learning_rate"] <= 1e-2
    assert 0.9 <= trial["optimizer.b2"] <= 0.999
    assert trial["optimizer.learning_rate"] == float(f"{trial['optimizer.learning_rate']:.4g}")
    assert trial["seed"] in (0, 1, 2)
  assert _names(first) == _names(sample(0))
  with pytest.raises(sweep_lib.SweepError, match=r"s.py: random: the space has fewer than "
                     r"num_trials=4 distinct trials \(3 found\)"):
    sweep_lib.expand({"random": dict(num_trials=4, seed=0, space={"seed": [0, 1, 2]})}, "s.py")


def test_names_are_short_unique_filesystem_safe_and_follow_name_keys():
  trials = [{"seed": 0, "warm_start.seed": 0, "init_from": "/runs/a b/params"},
            {"seed": 1, "warm_start.seed": 1, "init_from": "/runs/a b/params"}]
  assert _names(trials) == ["seed=0,warm_start.seed=0", "seed=1,warm_start.seed=1"]
  named = sweep_lib.name_trials(trials, "s.py", name_keys=["seed", "init_from"])
  assert [t.name for t in named] == ["seed=0,init_from=_runs_a_b_params",
                                     "seed=1,init_from=_runs_a_b_params"]
  assert named[0].flags() == ["--config.seed=0", "--config.warm_start.seed=0",
                              "--config.init_from=/runs/a b/params"]
  assert _names([{"seed": 5}]) == ["seed=5"]   # one trial: all its keys


def test_score_seeds_sweep_has_the_benchmark_arms_times_seeds():
  sweep = sweep_lib.load_sweep(os.path.join(ROOT, "configs", "sweeps", "score_seeds.py"), ROOT)
  assert sweep.base == os.path.join(ROOT, "configs", "score_arithmetic.py") + ":tiny"
  modes = ("score", "multiturn_rl_baseline", "offline_star_baseline", "online_star_baseline",
           "pair_sft_baseline", "score_without_stage1", "score_without_shaping")
  assert [t.name for t in sweep.trials] == [f"mode={m},seed={s}" for m in modes for s in range(3)]
  assert sweep.trials[4].flags() == ["--config.score.mode=multiturn_rl_baseline",
                                     "--config.seed=1", "--config.warm_start.seed=1"]


@pytest.mark.parametrize("name", ["score_seeds", "sft_lr_test"])
def test_sweep_files_override_existing_fields_of_their_base_config(name):
  import importlib
  sweep = sweep_lib.load_sweep(os.path.join(ROOT, "configs", "sweeps", f"{name}.py"), ROOT)
  module, preset = os.path.basename(sweep.base).split(".py:")
  for trial in sweep.trials:
    config = importlib.import_module(f"configs.{module}").get_config(preset).unlock()
    for key, value in trial.overrides:
      *sections, field = key.split(".")
      target = config
      for section in sections:
        target = target[section]
      assert field in target, (trial.name, key)
      target[field] = value   # type-safe: a wrong type raises


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("body, message", [
    ("config.trials = [{'seed': 0}, ['seed=1']]",
     r"sweep.py: trials\[1\]: 'seed=1' is not an override of the form '--config.x=y'"),
    ("config.trials = [['--config.seed']]", r"trials\[0\]: '--config.seed' is not an override"),
    ("config.trials = [{'seed': 0}, {'seed': 0}]",
     r"sweep.py: trials 0 and 1 are both named 'seed=0'"),
    ("config.grid = {'seed': 3}", r"sweep.py: grid.seed: expected a non-empty list of values"),
    ("config.trial = [{'seed': 0}]", r"sweep.py: unknown field\(s\) \['trial'\]"),
    ("config.base = 'configs/nope.py:test'\nconfig.grid = {'seed': [0]}",
     r"sweep.py: base: no config file 'configs/nope.py'"),
    ("config.fixed = {'train.num_steps': 8}", r"sweep.py: ValueError: .*dots.*nest dicts"),
])
def test_sweep_file_errors_name_the_file_and_field(tmp_path, body, message):
  with pytest.raises(sweep_lib.SweepError, match=message):
    sweep_lib.load_sweep(_sweep_file(tmp_path, body), ROOT)


def test_missing_get_config_and_unknown_executor(tmp_path):
  path = os.path.join(str(tmp_path), "empty.py")
  open(path, "w").write("X = 1\n")
  with pytest.raises(sweep_lib.SweepError, match=r"empty.py: no get_config\(\) function"):
    sweep_lib.load_sweep(path, ROOT)
  sweep = sweep_lib.load_sweep(_sweep_file(tmp_path, "config.grid = {'seed': [0]}"), ROOT)
  with pytest.raises(sweep_lib.SweepError, match=r"sweep.py: unknown executor 'pbs'"):
    sweep_lib.run_sweep(sweep, str(tmp_path / "w"), TRAIN, executor="pbs")
  result = _cli(f"--sweep={sweep.path}", f"--workdir={tmp_path / 'w'}", "--executor=pbs")
  assert result.returncode == 2
  assert "Sweep error: --executor=pbs: unknown executor; use one of local, slurm" in result.stderr
  assert not os.path.exists(tmp_path / "w")


def test_dry_run_prints_one_command_per_trial(tmp_path):
  workdir = str(tmp_path / "dry")
  result = _cli("--sweep=configs/sweeps/sft_lr_test.py", f"--workdir={workdir}", "--dry_run")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  names = ["learning_rate=0.001,seed=0", "learning_rate=0.001,seed=1",
           "learning_rate=0.003,seed=0", "learning_rate=0.003,seed=1"]
  assert len(lines) == 4
  for line, name in zip(lines, names):
    assert f"launch/train.py --config={ROOT}/configs/sft_arithmetic.py:test" in line
    assert f"--workdir={workdir}/{name} " in line and f">> {workdir}/{name}.log 2>&1" in line
    assert "--config.train.num_steps=8" in line
  assert not os.path.exists(workdir)


# ---------------------------------------------------------------- results from metrics files

def test_results_tables_hold_each_trials_last_eval_values_and_seed_mean_std(tmp_path):
  sweep = sweep_lib.load_sweep(_sweep_file(
      tmp_path, "config.grid = {'optimizer': {'learning_rate': [0.1]}, 'seed': [0, 1]}\n"
                "config.trials = [['--config.model.num_layers=1'], ['--config.model.num_layers=2']]"),
      ROOT)
  workdir = str(tmp_path / "runs")
  finals = {0: 0.75, 1: 0.25}
  for trial in sweep.trials:
    seed = dict(trial.overrides)["seed"]
    os.makedirs(os.path.join(workdir, trial.name, "params"))
    with open(os.path.join(workdir, trial.name, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"step": 4, "eval/accuracy": 0.1, "eval/loss": 2.0}) + "\n")
      f.write(json.dumps({"step": 6, "train/loss": 1.0}) + "\n")
      f.write(json.dumps({"step": 8, "eval/accuracy": finals[seed]}) + "\n")
    if "num_layers=1" in trial.name:   # finished; the num_layers=2 trials are not
      open(os.path.join(workdir, trial.name, "params", "model_config.json"), "w").write("{}")
  table = sweep_results.write_results(sweep, workdir)
  with open(os.path.join(workdir, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["trial"] for r in rows] == [t.name for t in sweep.trials]
  assert rows[0] == {"trial": "num_layers=1,seed=0", "status": "finished", "model.num_layers": "1",
                     "optimizer.learning_rate": "0.1", "seed": "0", "step": "8",
                     "eval/accuracy": "0.75", "eval/loss": "2.0"}
  assert [r["status"] for r in rows] == ["finished"] * 2 + ["unfinished"] * 2
  assert [float(r["eval/accuracy"]) for r in rows] == [0.75, 0.25, 0.75, 0.25]
  std = np.std([0.75, 0.25], ddof=1)
  assert f"| model.num_layers=1,optimizer.learning_rate=0.1 | 2 | 0.5 ± {std:.4g} | 2 ± 0 |" in table
  assert "| model.num_layers=2,optimizer.learning_rate=0.1 | 0 |  |  |" in table
  assert open(os.path.join(workdir, "results.md")).read() == table
  assert os.path.getsize(os.path.join(workdir, "comparison.png")) > 0
  session = _hparams_session(os.path.join(workdir, "hparams", "num_layers=1,seed=1"))
  assert session["hparams"] == {"model.num_layers": "1", "optimizer.learning_rate": 0.1,
                                "seed": 1.0}
  assert session["scalars"] == {"eval/accuracy": (8, 0.25), "eval/loss": (8, 2.0)}


def _hparams_session(directory):
  """The hparams and scalars of the TensorBoard event files in `directory` (TFRecord framing:
  length, its CRC, the Event proto, its CRC)."""
  from tensorboardX.proto import event_pb2, plugin_hparams_pb2
  hparams, scalars = {}, {}
  for path in glob.glob(os.path.join(directory, "events.*")):
    data, offset = open(path, "rb").read(), 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "hparams":
          plugin = plugin_hparams_pb2.HParamsPluginData.FromString(
              value.metadata.plugin_data.content)
          for key, v in plugin.session_start_info.hparams.items():
            hparams[key] = v.number_value if v.HasField("number_value") else v.string_value
        elif value.HasField("simple_value"):
          scalars[value.tag] = (event.step, value.simple_value)
  return {"hparams": hparams, "scalars": scalars}


# ---------------------------------------------------------------- a real sweep, then a relaunch

GOOD = ["seed=0", "seed=1"]
BAD = "seed=2,num_steps=ten"


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
  """Two trials of configs/sft_arithmetic.py:test and one that train.py rejects, 2 at a time;
  then seed=1 is made unfinished (final params and step-8 checkpoint removed, as if killed after
  its step-4 checkpoint) and the same command is run again."""
  directory = tmp_path_factory.mktemp("sweep")
  path = _sweep_file(directory, "config.trials = [{'seed': 0}, {'seed': 1}, "
                                "['--config.seed=2', '--config.train.num_steps=ten']]")
  workdir = str(directory / "runs")
  flags = (f"--sweep={path}", f"--workdir={workdir}", "--parallel=2")
  first = _cli(*flags)
  files = {name: open(os.path.join(workdir, name)).read() for name in ("results.csv", "results.md")}
  metrics = {name: read_metrics(os.path.join(workdir, name)) for name in GOOD}
  logs = {name: open(os.path.join(workdir, name + ".log")).read() for name in GOOD}
  shutil.rmtree(os.path.join(workdir, "seed=1", "params"))
  shutil.rmtree(os.path.join(workdir, "seed=1", "checkpoints", "8"))
  second = _cli(*flags)
  return dict(workdir=workdir, first=first, second=second, files=files, metrics=metrics,
              logs=logs)


def test_sweep_results_have_every_trial_with_values_from_its_metrics(real_sweep):
  first = real_sweep["first"]
  assert first.returncode == 1, first.stdout + first.stderr
  rows = list(csv.DictReader(real_sweep["files"]["results.csv"].splitlines()))
  assert [(r["trial"], r["status"], r["seed"]) for r in rows] == [
      ("seed=0", "finished", "0"), ("seed=1", "finished", "1"), (BAD, "failed (exit 2)", "2")]
  for row in rows[:2]:
    evals = [r for r in real_sweep["metrics"][row["trial"]] if "eval/accuracy" in r]
    assert int(row["step"]) == 8 and float(row["eval/accuracy"]) == evals[-1]["eval/accuracy"]
  assert rows[2]["train.num_steps"] == "ten" and rows[2]["eval/accuracy"] == ""
  values = [real_sweep["metrics"][n][-1]["eval/accuracy"] for n in GOOD]
  mean_std = f"{np.mean(values):.4g} ± {np.std(values, ddof=1):.4g}"
  assert f"| (base) | 2 | {mean_std} |" in real_sweep["files"]["results.md"]
  for name in GOOD:
    assert glob.glob(os.path.join(real_sweep["workdir"], "hparams", name, "events.*"))
  assert os.path.getsize(os.path.join(real_sweep["workdir"], "comparison.png")) > 0


def test_failed_trial_is_reported_with_its_log_tail_and_the_others_finish(real_sweep):
  first = real_sweep["first"]
  assert f"{BAD}: FAILED (exit 2); last lines of {real_sweep['workdir']}/{BAD}.log" in first.stdout
  assert "Config error: flag --config.train.num_steps=ten" in first.stdout   # the log's tail
  assert f"1 trial(s) failed: {BAD}" in first.stderr
  for name in GOOD:
    assert f"{name}: done" in first.stdout
    assert real_sweep["logs"][name].count("=== ") == 1


def test_relaunch_skips_finished_trials_and_resumes_the_unfinished_one(real_sweep):
  second, workdir = real_sweep["second"], real_sweep["workdir"]
  assert second.returncode == 1   # the bad trial fails again
  assert "seed=0: finished, skipped" in second.stdout
  assert f"--workdir={workdir}/seed=0 " not in second.stdout
  assert open(os.path.join(workdir, "seed=0.log")).read() == real_sweep["logs"]["seed=0"]
  resumed_log = open(os.path.join(workdir, "seed=1.log")).read()
  assert resumed_log.startswith(real_sweep["logs"]["seed=1"]) and resumed_log.count("=== ") == 2
  assert "Resuming from checkpoint at step 4" in resumed_log
  assert sweep_lib.finished(os.path.join(workdir, "seed=1"))
  assert [r["step"] for r in read_metrics(os.path.join(workdir, "seed=1"))] == \
      [r["step"] for r in real_sweep["metrics"]["seed=1"]]
  assert open(os.path.join(workdir, f"{BAD}.log")).read().count("=== ") == 2
  assert "1 of 3 trial(s) unfinished" in second.stderr


# ---------------------------------------------------------------- submitit

def test_submitit_path_with_its_local_executor(tmp_path, monkeypatch):
  pytest.importorskip("submitit")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  sweep = sweep_lib.load_sweep(_sweep_file(
      tmp_path, "config.trials = [{'seed': 3, 'train': {'num_steps': 4}}]"), ROOT)
  workdir = str(tmp_path / "runs")
  codes = sweep_lib.run_sweep(sweep, workdir, TRAIN, executor="slurm",
                              slurm=sweep_lib.SlurmOptions(cluster="local", timeout_min=10))
  assert codes == {"seed=3,num_steps=4": 0}
  assert sweep_lib.finished(os.path.join(workdir, "seed=3,num_steps=4"))
  assert glob.glob(os.path.join(workdir, "submitit", "*_result.pkl"))   # ran as a submitit job
  assert read_metrics(os.path.join(workdir, "seed=3,num_steps=4"))[-1]["step"] == 4
