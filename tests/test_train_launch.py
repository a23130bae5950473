"""launch/train.py as a real process: exact resume after SIGKILL, SIGTERM preemption, config errors."""

import os
import signal
import time

from selfimprove.host_memory import environment_with_huge_pages
from tests.train_helpers import assert_trees_equal, final_params, launch, read_metrics

def _wait_for_checkpoint(proc, workdir, timeout=300):
  """Waits (from outside the process) until a finalised checkpoint exists; returns its step."""
  start = time.time()
  while time.time() - start < timeout:
    assert proc.poll() is None, "the run ended before it was killed:\n" + proc.stdout.read()[-3000:]
    steps = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
             if d.isdigit()] if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
    if steps:   # Orbax renames a checkpoint to its bare step number only once it is complete
      return max(steps)
    time.sleep(0.05)
  proc.kill()
  raise AssertionError("no checkpoint within the timeout")


def test_sigkill_after_checkpoint_then_relaunch_is_bitwise_identical(tmp_path):
  flags = ["--config.train.num_steps=60", "--config.train.checkpoint_every=4",
           "--config.train.eval_every=60", "--config.train.log_every=4"]
  uninterrupted = launch(str(tmp_path / "straight"), *flags)
  assert uninterrupted.returncode == 0, uninterrupted.stdout + uninterrupted.stderr

  workdir = str(tmp_path / "killed")
  proc = launch(workdir, *flags, wait=False)
  _wait_for_checkpoint(proc, workdir)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  killed_at = final_params(workdir)[0]
  assert 0 < killed_at < 60

  resumed = launch(workdir, *flags)   # the same command again
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f"Resuming from checkpoint at step {killed_at}" in resumed.stderr
  step, params = final_params(workdir)
  straight_step, straight_params = final_params(str(tmp_path / "straight"))
  assert step == straight_step == 60
  assert_trees_equal(params, straight_params)
  # The resumed run's logged losses equal the uninterrupted run's, with no duplicates.
  resumed_rows = read_metrics(workdir)
  straight_rows = read_metrics(str(tmp_path / "straight"))
  assert [r["step"] for r in resumed_rows] == [r["step"] for r in straight_rows]
  assert [r["train/loss"] for r in resumed_rows] == [r["train/loss"] for r in straight_rows]


def test_sigterm_checkpoints_exits_zero_and_relaunch_continues(tmp_path):
  workdir = str(tmp_path)
  proc = launch(workdir, "--config.train.num_steps=100000", "--config.train.eval_every=100000",
                "--config.train.checkpoint_every=100000", wait=False)
  metrics = os.path.join(workdir, "metrics.jsonl")
  start = time.time()
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() - start < 300, "no metrics within 5 minutes"
    time.sleep(0.2)
  if environment_with_huge_pages(os.environ) is not None:   # Linux, glibc, THP on: it re-exec'd
    with open(f"/proc/{proc.pid}/environ", "rb") as f:   # (same pid, so SIGTERM still reaches it)
      environment = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    assert environment[b"GLIBC_TUNABLES"].endswith(b"glibc.malloc.hugetlb=1")
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, output[-3000:]
  stopped_at, _ = final_params(workdir)
  assert 0 < stopped_at < 100000
  assert stopped_at % 2 == 0   # steps_per_call=2: the call in flight was finished
  assert read_metrics(workdir)[-1]["step"] <= stopped_at

  resumed = launch(workdir, f"--config.train.num_steps={stopped_at + 4}")
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f"Resuming from checkpoint at step {stopped_at}" in resumed.stderr
  assert final_params(workdir)[0] == stopped_at + 4


def test_unknown_field_and_wrong_type_fail_fast_naming_the_field(tmp_path):
  unknown = launch(str(tmp_path), "--config.optimizer.learning_rat=0.1")
  assert unknown.returncode == 2
  assert "learning_rat" in unknown.stderr and 'Did you mean "learning_rate"' in unknown.stderr
  assert "Traceback" not in unknown.stderr
  wrong_type = launch(str(tmp_path), "--config.train.num_steps=ten")
  assert wrong_type.returncode != 0
  assert "--config.train.num_steps=ten" in wrong_type.stderr
  # 8 devices (XLA_FLAGS kept): a global batch of 6 cannot be split 8 ways.
  indivisible = launch(str(tmp_path), "--config.train.global_batch_size=6", single_device=False)
  assert indivisible.returncode == 2
  assert "config.train.global_batch_size=6 must be divisible by the data-parallel size 8" in indivisible.stderr
  assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints"))
