"""Launching and finding the runs of the seed-comparison benchmarks (`*_seeds.py`)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(config: str, workdir: str, *overrides: str, log_path: str | None = None) -> None:
  """`launch/train.py --config=CONFIG --workdir=WORKDIR OVERRIDES...`, printed first; its output
  goes to log_path (appended) if given, else to this process's output."""
  command = [sys.executable, os.path.join(ROOT, "launch", "train.py"), f"--config={config}",
             f"--workdir={workdir}", *overrides]
  print("+", " ".join(command[1:]), flush=True)
  if log_path is None:
    subprocess.run(command, check=True, cwd=ROOT)
    return
  with open(log_path, "a") as log:
    subprocess.run(command, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def finished(workdir: str) -> bool:
  """A run wrote its final parameters (a relaunch would do nothing)."""
  return os.path.exists(os.path.join(workdir, "params", "model_config.json"))
