"""Training metrics: a JSONL + TensorBoard writer, a console progress bar, plots and a summary.

`workdir/metrics.jsonl` holds one JSON object per logged step, `{"step": 100,
"train/loss": 0.5, ...}`, and is the source of truth for plots and summaries;
`workdir/tb/` holds the same scalars as TensorBoard event files (written with
tensorboardX, so TensorFlow is not needed). Only JAX process 0 writes or prints.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import IO, Any, Mapping, Sequence

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"


def _json_value(key: str, value: Any) -> float | str | None:
  """A metric value as JSON: numbers (numpy/jax scalars too) -> float, non-finite -> None."""
  if isinstance(value, str):
    return value
  array = np.asarray(value)
  if array.dtype.kind not in "biuf":
    raise TypeError(f"Metric {key!r} has value {value!r} of type {type(value).__name__}; "
                    f"expected a number or a string.")
  if array.size != 1:
    raise ValueError(f"Metric {key!r} must be a scalar, got an array of shape {array.shape}.")
  number = float(array.reshape(()))
  return number if math.isfinite(number) else None


def _drop_steps_after(path: str, resume_step: int) -> None:
  """Rewrites a metrics file keeping only records with step <= resume_step (atomically)."""
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue    # a line cut short when the previous run was killed
    if isinstance(record, dict) and isinstance(record.get("step"), int) and \
        record["step"] <= resume_step:
      kept.append(line if line.endswith("\n") else line + "\n")
  temporary = path + ".tmp"
  with open(temporary, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(temporary, path)


class MetricsWriter:
  """Appends metrics to `workdir/metrics.jsonl` and TensorBoard files in `workdir/tb/`.

  On resume, pass the restored step as `resume_step`: records of later steps
  (written after that checkpoint by the interrupted run) are dropped from the
  JSONL file and purged from TensorBoard, so the resumed curve has no
  duplicates. Pass 0 on a fresh start to clear stale records from an earlier
  run in the same workdir. On JAX processes other than 0 every method is a no-op.
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None, tensorboard: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, METRICS_FILE)
    self._file: IO[str] | None = None
    self._tensorboard = None
    if jax.process_index() != 0:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None and os.path.exists(self.path):
      _drop_steps_after(self.path, resume_step)
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter    # imported here: only process 0 needs it
      self._tensorboard = SummaryWriter(
          logdir=os.path.join(workdir, TENSORBOARD_DIR),
          purge_step=None if resume_step is None else resume_step + 1)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes `{"step": step, **metrics}` as one JSON line (flushed) and as TensorBoard scalars.

    Values may be Python, numpy or jax scalars (converted to float) or strings
    (TensorBoard text); NaN/inf become null in JSON and stay NaN/inf in TensorBoard.
    """
    if self._file is None:
      return
    if "step" in metrics:
      raise ValueError("MetricsWriter.write: 'step' is reserved; pass it as the step argument.")
    record = {"step": int(step)}
    record.update({key: _json_value(key, value) for key, value in metrics.items()})
    self._file.write(json.dumps(record, allow_nan=False) + "\n")
    self._file.flush()
    if self._tensorboard is not None:
      for key, value in metrics.items():
        if isinstance(value, str):
          self._tensorboard.add_text(key, value, int(step))
        else:
          self._tensorboard.add_scalar(key, float(np.asarray(value).reshape(())), int(step))
      self._tensorboard.flush()

  def close(self) -> None:
    """Flushes and closes the files (safe to call twice)."""
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar:
  """Console progress: step/total, steps/s, ETA and chosen metrics.

  On a terminal the line is redrawn in place (\\r) at most every 0.5 s; when the
  stream is not a terminal (log files, cluster jobs) it prints a plain line at
  most every 10 s. Steps/s is measured from the first `update` on, so the
  first step's compilation does not distort the rate or the ETA.
  """

  def __init__(self, total_steps: int, initial_step: int = 0,
               keys: Sequence[str] = ("train/loss",), *, stream: IO[str] | None = None,
               min_interval_s: float | None = None):
    self.total_steps = total_steps
    self.keys = tuple(keys)
    self._stream = sys.stdout if stream is None else stream
    self._is_tty = bool(getattr(self._stream, "isatty", lambda: False)())
    self._min_interval_s = (min_interval_s if min_interval_s is not None
                            else 0.5 if self._is_tty else 10.0)
    self._active = jax.process_index() == 0
    self._step = initial_step
    self._values: dict[str, float] = {}
    self._first: tuple[int, float] | None = None   # (step, time) of the first update
    self._last_render = -math.inf
    self._rendered_step: int | None = None
    self._last_width = 0

  def update(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Records the latest step and metrics; redraws if enough time has passed or at the end."""
    now = time.monotonic()
    if self._first is None:
      self._first = (step, now)
    self._step = step
    for key in self.keys:
      if key in metrics and not isinstance(metrics[key], str):
        self._values[key] = float(np.asarray(metrics[key]).reshape(()))
    if now - self._last_render >= self._min_interval_s or step >= self.total_steps:
      self._render(now)

  def line(self, now: float | None = None) -> str:
    """The current progress text (without \\r or newline)."""
    now = time.monotonic() if now is None else now
    parts = [f"step {self._step}/{self.total_steps}"]
    if self._first is not None and now > self._first[1] and self._step > self._first[0]:
      rate = (self._step - self._first[0]) / (now - self._first[1])
      remaining = max(self.total_steps - self._step, 0) / rate
      parts += [f"{rate:.2f} steps/s", f"ETA {_format_duration(remaining)}"]
    else:
      parts += ["- steps/s", "ETA -"]
    parts += [f"{key} {self._values[key]:.4g}" for key in self.keys if key in self._values]
    return " | ".join(parts)

  def _render(self, now: float) -> None:
    self._last_render = now
    self._rendered_step = self._step
    if not self._active:
      return
    text = self.line(now)
    if self._is_tty:
      # Pad with spaces so a shorter line fully covers the previous one.
      self._stream.write("\r" + text + " " * max(self._last_width - len(text), 0))
      self._last_width = len(text)
    else:
      self._stream.write(text + "\n")
    self._stream.flush()

  def close(self) -> None:
    """Draws the final state (unless already shown) and ends the line."""
    if self._rendered_step != self._step:
      self._render(time.monotonic())
    if self._active and self._is_tty:
      self._stream.write("\n")
      self._stream.flush()


def read_metrics(workdir: str) -> list[dict]:
  """All records of `workdir/metrics.jsonl`, in file order.

  A malformed last line (cut short by a killed run) is skipped; a malformed
  line elsewhere raises a ValueError naming the file and line.
  """
  path = os.path.join(workdir, METRICS_FILE)
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  records = []
  for line_number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if line_number == len(lines):
        break
      raise ValueError(f"{path}:{line_number}: not valid JSON ({e.msg}).") from None
    if not isinstance(record, dict) or "step" not in record:
      raise ValueError(f"{path}:{line_number}: expected a JSON object with a 'step' field.")
    records.append(record)
  return records


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric_keys(records: Sequence[dict]) -> list[str]:
  """Keys (other than step) with at least one finite number; all-null keys have nothing to plot."""
  return sorted({k for r in records for k, v in r.items() if k != "step" and _is_number(v)})


def _series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
  """(steps, values) where `key` was logged with a finite number."""
  pairs = [(r["step"], r[key]) for r in records if _is_number(r.get(key))]
  return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def plot_metrics(workdir: str, keys: Sequence[str] | None = None,
                 filename: str = "curves.png") -> str:
  """Plots metrics against step, one subplot per key, to `workdir/filename`; returns the path.

  Default keys: every numeric metric in metrics.jsonl. Uses matplotlib's Agg
  canvas directly (no pyplot), so no display is needed and no global backend
  is changed.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  records = read_metrics(workdir)
  available = _numeric_keys(records)
  keys = available if keys is None else list(keys)
  if not keys:
    raise ValueError(f"plot_metrics: {os.path.join(workdir, METRICS_FILE)} has no numeric metrics.")
  for key in keys:
    if key not in available:
      raise ValueError(f"plot_metrics: no numeric metric {key!r} in {workdir}; "
                       f"available: {available}.")
  columns = min(3, len(keys))
  rows = math.ceil(len(keys) / columns)
  figure = Figure(figsize=(4.5 * columns, 3.2 * rows), layout="constrained")
  FigureCanvasAgg(figure)
  for index, key in enumerate(keys):
    axes = figure.add_subplot(rows, columns, index + 1)
    steps, values = _series(records, key)
    axes.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
    axes.set_title(key)
    axes.set_xlabel("step")
    axes.grid(alpha=0.3)
  path = os.path.join(workdir, filename)
  figure.savefig(path, dpi=100)
  return path


def _lower_is_better(key: str) -> bool:
  return any(word in key for word in ("loss", "error", "perplexity", "kl"))


def summarize(workdir: str) -> str:
  """A few lines: total steps, last train/loss, final and best value of each eval/ metric.

  "Best" is the minimum for metrics named like a loss/error/perplexity/kl and
  the maximum otherwise (accuracy, reward, ...).
  """
  records = read_metrics(workdir)
  if not records:
    return f"No metrics logged in {workdir}."
  lines = [f"Run summary ({workdir}): {max(r['step'] for r in records)} steps"]
  steps, losses = _series(records, "train/loss")
  if losses:
    lines.append(f"  train/loss: last {losses[-1]:.4g} (step {steps[-1]})")
  eval_keys = [k for k in _numeric_keys(records) if k.startswith("eval/")]
  for key in eval_keys:
    steps, values = _series(records, key)
    best = int(np.argmin(values) if _lower_is_better(key) else np.argmax(values))
    lines.append(f"  {key}: final {values[-1]:.4g} (step {steps[-1]}), "
                 f"best {values[best]:.4g} (step {steps[best]})")
  series = {key: _series(records, key) for key in eval_keys}
  if series and all(steps[0] == 0 and steps[-1] > 0 for steps, _ in series.values()):
    # The run evaluated its starting model (train.eval_at_start): before/after table.
    last = max(steps[-1] for steps, _ in series.values())
    width = max(len(key) for key in series)
    lines.append(f"  {'':{width}}  {'before':>8}  {'after':>8}  {'change':>8}   (step 0 -> {last})")
    for key, (_, values) in series.items():
      lines.append(f"  {key:{width}}  {values[0]:8.4f}  {values[-1]:8.4f}  "
                   f"{values[-1] - values[0]:+8.4f}")
  return "\n".join(lines)
