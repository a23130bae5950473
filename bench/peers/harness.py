"""Runs benchmark workers, each in its own process, alternating ours and a peer.

A worker is a script in this folder that builds one row's work, makes one warm-up call
(compilation, first-touch allocations) and `--calls` timed calls, and prints one JSON line:
{"warmup_seconds": [...], "call_seconds": [...], ...}. `alternate` starts the two sides'
workers in turn, A B then B A, for `rounds` rounds (so neither side always runs first),
waits `pause` seconds between processes, and pools each side's timed calls; the median of
the pool is the figure, the warm-up calls are reported apart.

Ours runs under this interpreter (the project's virtualenv); the PyTorch peers run under
their own (`--peer_python`, by default /tmp/torch_venv/bin/python), so neither library's
thread pools or pins touch the other's.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEERS = os.path.join(ROOT, "bench", "peers")
DEFAULT_PEER_PYTHON = "/tmp/torch_venv/bin/python"


def load() -> dict[str, float]:
  """The 1/5/15-minute load averages and the wall-clock time (UTC)."""
  one, five, fifteen = os.getloadavg()
  return dict(load_1m=one, load_5m=five, load_15m=fifteen,
              utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def run_worker(python: str, script: str, args: list[str], timeout: float = 1800) -> dict[str, Any]:
  """Runs bench/peers/SCRIPT ARGS under PYTHON; returns its last stdout line as JSON."""
  command = [python, os.path.join(PEERS, script), *args]
  shown = " ".join([python, os.path.relpath(command[1], ROOT), *args])
  print(f"  + {shown}", file=sys.stderr, flush=True)
  proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
  if proc.returncode:
    raise RuntimeError(f"worker failed (exit {proc.returncode}): {shown}\n{proc.stderr[-3000:]}")
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if not lines:
    raise RuntimeError(f"worker printed no JSON line: {shown}\n{proc.stdout[-2000:]}")
  result = json.loads(lines[-1])
  result["command"] = shown
  return result


def alternate(sides: dict[str, tuple[str, str, list[str]]], rounds: int, pause: float = 1.0
              ) -> dict[str, dict[str, Any]]:
  """Runs each side's worker `rounds` times, alternating A B, B A, ...; pools the calls.

  Args:
    sides: name -> (python, script, args), in the order of the first round.
    rounds: processes per side.
    pause: seconds of rest before each process (lets the other library's spinning
      threads go idle and the load settle).

  Returns:
    name -> {"median_seconds", "call_seconds" (pooled), "warmup_seconds" (one per
    process), "runs" (each process's JSON, without bulky fields), "load" (before/after)}.
  """
  names = list(sides)
  runs: dict[str, list[dict]] = {name: [] for name in names}
  before = load()
  for r in range(rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      time.sleep(pause)
      python, script, args = sides[name]
      runs[name].append(run_worker(python, script, args))
  after = load()
  summary = {}
  for name in names:
    calls = [t for run in runs[name] for t in run["call_seconds"]]
    summary[name] = dict(
        median_seconds=statistics.median(calls), min_seconds=min(calls), max_seconds=max(calls),
        call_seconds=calls, warmup_seconds=[run["warmup_seconds"][0] for run in runs[name]],
        runs=runs[name], load_before=before, load_after=after)
  return summary


def matmul_peak(peer_python: str | None, size: int, calls: int) -> dict[str, Any]:
  """The f32 matmul rate (GFLOP/s) of jax, and of torch if `peer_python`, each in its own
  process. The jax figure is the peak that every floor in this run divides by."""
  peak = {"jax": run_worker(sys.executable, "matmul_peak.py",
                            ["--lib=jax", f"--size={size}", f"--calls={calls}"])}
  if peer_python:
    peak["torch"] = run_worker(peer_python, "matmul_peak.py",
                               ["--lib=torch", f"--size={size}", f"--calls={calls}"])
  return peak


def machine() -> dict[str, Any]:
  """Where the run happened: CPU model, cores, interpreter and library versions are added by
  the workers' own JSON."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return dict(cpu=cpu, cores=os.cpu_count(), platform=platform.platform(), **load())


def write_json(path: str, result: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(os.path.join(ROOT, path)), exist_ok=True)
  with open(os.path.join(ROOT, path), "w") as f:
    json.dump(result, f, indent=1)
  print(f"\nwrote {path}")


def print_table(header: list[str], rows: list[list[str]]) -> None:
  """A GitHub-markdown table (pastes straight into bench/README.md)."""
  print("| " + " | ".join(header) + " |")
  print("|" + "|".join("---" for _ in header) + "|")
  for row in rows:
    print("| " + " | ".join(row) + " |")
