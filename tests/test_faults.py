"""Nothing lost under faults and bad input, driving real launch/train.py processes.

One test per failure a hostile but realistic user hit: an exception mid-run, bad data, a
relaunch with other settings, SIGTERM in either stage of a two-stage run, a corrupt newest
checkpoint, metrics.jsonl removed, and the errors that must be one line.
"""

import hashlib
import json
import os
import shutil
import signal
import time

import pytest

from tests.train_helpers import ROOT, assert_trees_equal, final_params, launch, read_metrics

JSONL_CONFIG = os.path.join(ROOT, "configs", "sft_jsonl.py")
SCORE_CONFIG = os.path.join(ROOT, "configs", "score_arithmetic.py")
_calls = {"n": 0}


def fail_after_some_calls(completion: str, example: dict) -> float:
  """A user's verifier that breaks mid-run (after the first evaluations went fine)."""
  _calls["n"] += 1
  if _calls["n"] > 40:
    raise RuntimeError("the grading service went away")
  return 0.0


def _tree_digest(folder):
  digest = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(folder)):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      digest.update(os.path.relpath(path, folder).encode())
      with open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


def _word_problems(tmp_path, lines=None):
  train, evals = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
  rows = lines or [json.dumps({"prompt": f"What is {a} plus 1?", "answer": a + 1})
                   for a in range(40)]
  train.write_text("\n".join(rows) + "\n")
  evals.write_text(json.dumps({"prompt": "What is 2 plus 1?", "answer": "3"}) + "\n")
  return [f"--config.task.train_path={train}", f"--config.task.eval_path={evals}"]


def test_an_exception_mid_run_exits_in_bounded_time_and_keeps_finished_checkpoints(tmp_path):
  flags = _word_problems(tmp_path) + [
      "--config.task.verifier=tests.test_faults:fail_after_some_calls",
      "--config.train.num_steps=60", "--config.train.checkpoint_every=4",
      "--config.train.eval_every=4", "--config.eval.num_examples=1"]
  workdir = str(tmp_path / "run")
  for attempt in range(3):   # relaunching again and again never hangs either
    start = time.time()
    result = launch(workdir, *flags, config=JSONL_CONFIG)   # subprocess timeout: 600 s
    assert result.returncode == 1, result.stderr[-3000:]
    assert time.time() - start < 120
    assert "fail_after_some_calls raised RuntimeError" in result.stderr.splitlines()[-1]
    checkpoints = os.listdir(os.path.join(workdir, "checkpoints"))
    assert not [d for d in checkpoints if "tmp" in d], checkpoints   # nothing half-written
    assert final_params(workdir)[0] > 0


def test_every_data_problem_is_reported_at_once_with_file_and_line_before_any_step(tmp_path):
  good = json.dumps({"prompt": "What is 1 plus 1?", "answer": "2"})
  lines = [good, "", json.dumps({"prompt": "Wh\u00e4t?", "answer": "2"}), "{not json",
           json.dumps({"prompt": ["a list"], "answer": "2"}), good,
           json.dumps({"question": "no prompt field", "answer": "1"})]
  flags = _word_problems(tmp_path, lines) + [
      "--config.tokenizer.kind=char", "--config.tokenizer.alphabet=Whatis 0123456789plu?",
      "--config.data.max_prompt_len=19"]
  (tmp_path / "eval.jsonl").write_bytes(b'{"prompt": "What is 1 plus 1?", "answer": "\xff"}\n')
  result = launch(str(tmp_path / "run"), *flags, config=JSONL_CONFIG)
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
  error = result.stderr[result.stderr.index("Data error:"):]
  train, evals = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
  for expected in (f"{train}:4: not valid JSON", f"{train}:7: missing field 'prompt'",
                   f"{evals}:1: not UTF-8 text"):
    assert expected in error, error
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
  # With the file-level problems fixed, the line-level ones come next, all together too.
  lines[3] = good
  lines[6] = good
  flags = _word_problems(tmp_path, lines) + flags[2:]
  result = launch(str(tmp_path / "run"), *flags, config=JSONL_CONFIG)
  assert result.returncode == 2, result.stderr[-3000:]
  error = result.stderr[result.stderr.index("Data error:"):]
  assert f"{train}:5: field 'prompt' must be a string" in error, error
  result = launch(str(tmp_path / "run"), *(_word_problems(tmp_path, [good, "", lines[2], good,
                                                                     json.dumps({"prompt": "What is 1 plus 1? " * 2, "answer": "2"})]) + flags[2:]),
                  config=JSONL_CONFIG)
  error = result.stderr[result.stderr.index("Data error:"):]
  assert result.returncode == 2 and "2 problems in the data" in error, error
  assert f"{train}:3: prompt: Character '\u00e4'" in error
  assert f"{train}:5: the prompt is 37 tokens, more than config.data.max_prompt_len=19" in error


def test_a_relaunch_with_other_settings_is_refused_and_touches_nothing(tmp_path):
  workdir = str(tmp_path)
  first = launch(workdir, "--config.train.num_steps=4")
  assert first.returncode == 0, first.stderr[-3000:]
  before = {name: _tree_digest(os.path.join(workdir, name)) for name in ("checkpoints", "params")}
  config_json = (tmp_path / "config.json").read_bytes()
  for flag, field in (("--config.model.num_layers=3", "model.num_layers: 2 -> 3"),
                      ("--config.optimizer.learning_rate=0.1", "optimizer.learning_rate: 0.001 -> 0.1"),
                      ("--config.task.max_digits=3", "task.max_digits: 2 -> 3"),
                      ("--config.seed=1", "seed: 0 -> 1")):
    refused = launch(workdir, "--config.train.num_steps=8", flag)
    assert refused.returncode == 2, (flag, refused.stderr[-2000:])
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("Config error:") and field in last and "--workdir" in last, last
    assert "Traceback" not in refused.stderr
  assert {n: _tree_digest(os.path.join(workdir, n)) for n in before} == before
  assert (tmp_path / "config.json").read_bytes() == config_json
  assert not (tmp_path / "config.2.json").exists()
  # What may change does: more steps and other intervals continue the run, and are recorded.
  more = launch(workdir, "--config.train.num_steps=8", "--config.train.log_every=4",
                "--config.model.scan_layers=true")
  assert more.returncode == 0, more.stderr[-3000:]
  assert "Resuming from checkpoint at step 4" in more.stderr and final_params(workdir)[0] == 8
  assert json.loads((tmp_path / "config.2.json").read_text())["train"]["num_steps"] == 8
  assert (tmp_path / "config.json").read_bytes() == config_json


@pytest.mark.parametrize("stage", ["warm_start", "main"])
def test_sigterm_in_either_stage_of_a_two_stage_run_exits_0_and_the_relaunch_finishes(tmp_path,
                                                                                       stage):
  workdir = str(tmp_path)
  flags = ["--config.warm_start.train.num_steps=400", "--config.warm_start.train.eval_every=400",
           "--config.warm_start.train.checkpoint_every=400", "--config.train.num_steps=400",
           "--config.train.eval_every=400", "--config.train.checkpoint_every=400"]
  proc = launch(workdir, *flags, wait=False, config=SCORE_CONFIG)
  watched = os.path.join(workdir, "warm_start" if stage == "warm_start" else "", "metrics.jsonl")
  start = time.time()
  while not (os.path.exists(watched) and os.path.getsize(watched) > 0):
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert time.time() - start < 300
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, output[-3000:]
  stage_dir = os.path.join(workdir, "warm_start") if stage == "warm_start" else workdir
  stopped_at = final_params(stage_dir)[0]
  assert 0 < stopped_at < 400
  if stage == "warm_start":
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))   # SCoRe has not started
  short = [f.replace("=400", "=8") if "num_steps" in f else f for f in flags]
  short = [f.replace("num_steps=8", f"num_steps={max(8, stopped_at + 2)}")
           if f.startswith("--config.warm_start.train.num_steps") else f for f in short]
  resumed = launch(workdir, *short, config=SCORE_CONFIG)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resuming from checkpoint at step {stopped_at}" in resumed.stderr
  assert final_params(workdir)[0] >= 8


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one_bit_for_bit(tmp_path):
  flags = ["--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=2",
           "--config.optimizer.schedule_steps=8"]
  straight = launch(str(tmp_path / "straight"), *flags)
  assert straight.returncode == 0
  workdir = str(tmp_path / "broken")
  first = launch(workdir, *flags, "--config.train.num_steps=4")
  assert first.returncode == 0, first.stderr[-3000:]
  state_dir = os.path.join(workdir, "checkpoints", "4", "state")
  shutil.rmtree(state_dir)
  resumed = launch(workdir, *flags)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resuming from checkpoint at step 2" in resumed.stderr
  assert "checkpoint" in resumed.stderr and "4" in resumed.stderr   # the skipped one is named
  step, params = final_params(workdir)
  assert step == 8
  assert_trees_equal(params, final_params(str(tmp_path / "straight"))[1])
  assert [r["train/loss"] for r in read_metrics(workdir)] == \
      [r["train/loss"] for r in read_metrics(str(tmp_path / "straight"))]
  # When no checkpoint restores, the run stops with one clear error and moves nothing.
  for step in ("6", "8"):
    shutil.rmtree(os.path.join(workdir, "checkpoints", step, "state"))
  broken = launch(workdir, *flags, "--config.train.num_steps=10")
  assert broken.returncode == 1 and "Traceback" not in broken.stderr, broken.stderr[-3000:]
  assert f"Error: No checkpoint in {workdir}/checkpoints could be restored" in broken.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[:2] == ["4.corrupt", "6"]


def test_metrics_removed_after_a_run_do_not_fail_the_relaunch(tmp_path):
  workdir = str(tmp_path)
  assert launch(workdir, "--config.train.num_steps=4").returncode == 0
  os.remove(tmp_path / "metrics.jsonl")
  (tmp_path / "metrics.jsonl.tmp").write_text("")   # left by a disk-full rewrite
  again = launch(workdir, "--config.train.num_steps=4")
  assert again.returncode == 0, again.stderr[-3000:]
  assert not (tmp_path / "metrics.jsonl.tmp").exists()


@pytest.mark.parametrize("flags, message", [
    (["--config=configs/missing.py"], "--config=configs/missing.py: no such config file"),
    (["--config=configs/sft_arithmetic.py:huge"], "unknown preset 'huge'"),
    (["--config.optimizer.learning_rate=-1"], "config.optimizer.learning_rate must be > 0"),
    (["--config.optimizer.decay=cosin"], "config.optimizer.decay must be one of"),
    (["--config.model.num_heads=3"], "config.model: TransformerConfig.num_heads (3)"),
    (["--config.tokenizer.kind=bpe"], "config.tokenizer: kind='bpe'"),
])
def test_user_mistakes_are_one_line_with_exit_code_2(tmp_path, flags, message):
  if flags[0].startswith("--config="):
    from tests.train_helpers import TRAIN
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, TRAIN, *flags, f"--workdir={tmp_path}"], cwd=ROOT,
                            env=dict(env, PYTHONPATH=ROOT), capture_output=True, text=True,
                            timeout=300)
  else:
    result = launch(str(tmp_path), *flags)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert message in lines[-1] and lines[-1].startswith("Config error:"), lines[-1]
  assert "Traceback" not in result.stderr


def test_a_workdir_that_is_a_file_and_a_too_small_init_from_vocabulary_name_themselves(tmp_path):
  a_file = tmp_path / "not_a_dir"
  a_file.write_text("x")
  result = launch(str(a_file))
  assert result.returncode == 2 and f"--workdir='{a_file}' is a file" in result.stderr
  first = str(tmp_path / "small")
  assert launch(first, "--config.train.num_steps=2", "--config.train.eval_every=2",
                "--config.train.checkpoint_every=2").returncode == 0
  wide = launch(str(tmp_path / "wide"), f"--config.init_from={first}/params",
                "--config.tokenizer.kind=byte")
  assert wide.returncode == 2
  last = wide.stderr.strip().splitlines()[-1]
  assert f"config.init_from='{first}/params'" in last and "vocab_size=32" in last, last


@pytest.mark.parametrize("errno_, text", [(13, "Permission denied"), (28, "No space left on device")])
def test_a_workdir_that_cannot_be_written_is_named_in_one_line(tmp_path, monkeypatch, errno_, text):
  """Read-only or full (simulated: as root, chmod does not stop writes on this machine)."""
  from selfimprove import train as train_lib
  from selfimprove.config_checks import ConfigError
  from tests.train_helpers import make_test_config

  def refuse(*args, **kwargs):
    raise OSError(errno_, text)

  monkeypatch.setattr(train_lib.os, "makedirs", refuse)
  with pytest.raises(ConfigError, match=rf"--workdir='{tmp_path}/run' cannot be written: {text}\."):
    train_lib.train(make_test_config(), str(tmp_path / "run"))
