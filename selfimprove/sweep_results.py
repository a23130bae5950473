"""A sweep's results: DIR/results.csv and results.md (each trial's overrides and last eval/*
values, mean +- sample std over seeds), DIR/comparison.png and TensorBoard HParams under
DIR/hparams/<trial> (see selfimprove/sweep.py for the sweep itself)."""

from __future__ import annotations

import csv
import math
import os
import shutil
from typing import Any

import numpy as np

from selfimprove.sweep import Sweep, finished, format_value, is_seed_key


def final_metrics(trial_dir: str) -> tuple[int | None, dict[str, float | None], list[dict]]:
  """(last logged step, the last value of each eval/* key, all records) of a trial's
  metrics.jsonl; (None, {}, []) when it has none yet."""
  from selfimprove.metrics import read_metrics   # imports jax: only once results are wanted
  try:
    records = read_metrics(trial_dir)
  except FileNotFoundError:
    return None, {}, []
  last = {}
  for record in records:
    last.update({k: v for k, v in record.items() if k.startswith("eval/")})
  return (records[-1]["step"] if records else None), last, records


def _cell(value: Any) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return ""
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def _mean_std(values: list[float]) -> str:
  array = np.asarray(values, float)
  spread = f" ± {array.std(ddof=1):.4g}" if len(array) > 1 else ""
  return f"{array.mean():.4g}{spread}"


def summarize(sweep: Sweep, workdir: str, codes: dict[str, int] | None = None
              ) -> tuple[list[dict], dict[str, list[dict]]]:
  """One row per trial (trial, status, overrides, step, eval/*), and each trial's records."""
  codes = codes or {}
  rows, records = [], {}
  for trial in sweep.trials:
    trial_dir = os.path.join(workdir, trial.name)
    step, metrics, records[trial.name] = final_metrics(trial_dir)
    status = ("finished" if finished(trial_dir) else
              f"failed (exit {codes[trial.name]})" if codes.get(trial.name, 0) != 0 else
              "unfinished" if os.path.isdir(trial_dir) else "not run")
    rows.append({"trial": trial.name, "status": status, **dict(trial.overrides), "step": step,
                 **metrics})
  return rows, records


def write_tables(rows: list[dict], sweep: Sweep, workdir: str) -> str:
  """DIR/results.csv and DIR/results.md; returns the markdown."""
  keys = list(dict.fromkeys(k for t in sweep.trials for k, _ in t.overrides))
  metrics = sorted({k for row in rows for k in row if k.startswith("eval/")})
  columns = ["trial", "status", *keys, "step", *metrics]
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows({c: "" if row.get(c) is None else row.get(c) for c in columns}
                     for row in rows)
  lines = [f"Sweep {sweep.path} on {sweep.base}: last value of each eval metric.", "",
           "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
  seed_keys = [k for k in keys if is_seed_key(k) and len({repr(r.get(k)) for r in rows}) > 1]
  if seed_keys:
    groups: dict[str, list[dict]] = {}
    for row in rows:
      label = ",".join(f"{k}={format_value(row[k])}" for k in keys
                       if k not in seed_keys and k in row) or "(base)"
      groups.setdefault(label, []).append(row)
    lines += ["", f"Mean ± sample std over {', '.join(seed_keys)} (finished trials):", "",
              "| group | seeds | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 2)]
    for label, members in groups.items():
      done = [r for r in members if r["status"] == "finished"]
      cells = [_mean_std(vals) if (vals := [r[m] for r in done if r.get(m) is not None]) else ""
               for m in metrics]
      lines.append(f"| {label} | {len(done)} | " + " | ".join(cells) + " |")
  table = "\n".join(lines) + "\n"
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table)
  return table


def plot_comparison(records: dict[str, list[dict]], metric: str, path: str) -> bool:
  """`metric` against step, one line per trial that logged it; False (no file) if none did."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(7, 4.5))
  FigureCanvasAgg(figure)
  axis = figure.subplots()
  drawn = False
  for name, rows in records.items():
    points = [(r["step"], r[metric]) for r in rows if r.get(metric) is not None]
    if points:
      axis.plot(*zip(*points), marker="o", markersize=3, label=name)
      drawn = True
  if not drawn:
    return False
  axis.set_xlabel("training step")
  axis.set_ylabel(metric)
  axis.grid(alpha=0.3)
  axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  return True


def write_hparams(rows: list[dict], sweep: Sweep, workdir: str) -> None:
  """TensorBoard HParams, one session per trial with metrics, in DIR/hparams/<trial>."""
  from tensorboardX import SummaryWriter
  from tensorboardX.summary import hparams

  for trial, row in zip(sweep.trials, rows):
    metrics = {k: float(v) for k, v in row.items()
               if k.startswith("eval/") and v is not None and math.isfinite(v)}
    if not metrics:
      continue
    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
              for k, v in trial.overrides}
    directory = os.path.join(workdir, "hparams", trial.name)
    shutil.rmtree(directory, ignore_errors=True)   # a rerun replaces the trial's session
    with SummaryWriter(logdir=directory) as writer:
      for summary in hparams(values, metrics):
        writer.file_writer.add_summary(summary)
      for key, value in metrics.items():
        writer.add_scalar(key, value, row["step"])


def write_results(sweep: Sweep, workdir: str, metric: str | None = None,
                  codes: dict[str, int] | None = None) -> str:
  """All result files of the sweep in `workdir`; returns the markdown table."""
  os.makedirs(workdir, exist_ok=True)
  rows, records = summarize(sweep, workdir, codes)
  table = write_tables(rows, sweep, workdir)
  metric = metric or sweep.metric
  if not plot_comparison(records, metric, os.path.join(workdir, "comparison.png")):
    print(f"No trial logged {metric}: no comparison.png (choose one with --metric).")
  write_hparams(rows, sweep, workdir)
  return table
