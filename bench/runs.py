"""Launching and finding the runs of the seed-comparison benchmarks (`*_seeds.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

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


def mean_std_cell(values) -> str:
  """A table cell: "mean +- sample std (v1 / v2 / ...)" of the seeds' values (3 decimals), or
  the values alone when one is missing (None / NaN)."""
  values = np.asarray([np.nan if v is None else v for v in values], float)
  if np.isnan(values).any():
    return " / ".join("-" if np.isnan(v) else f"{v:.3f}" for v in values)
  std = values.std(ddof=1) if len(values) > 1 else 0.0
  return f"{values.mean():.3f} +- {std:.3f} ({' / '.join(f'{v:.3f}' for v in values)})"


def write_report(workdir: str, table: str, results: dict) -> None:
  """Prints the table and writes it to workdir/table.md, the figures to workdir/table.json."""
  print(table)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(table)
  with open(os.path.join(workdir, "table.json"), "w") as f:
    json.dump(results, f, indent=1)
