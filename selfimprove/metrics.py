"""Training metrics: a JSONL + TensorBoard writer, a console progress bar, plots and a summary.

`workdir/metrics.jsonl` holds one JSON object per logged step, `{"step": 100,
"train/loss": 0.5, ...}`, and is the source of truth for plots and summaries;
`workdir/tb/` holds the same scalars as TensorBoard event files (written with
tensorboardX, so TensorFlow is not needed). Only JAX process 0 writes or prints.

Faults lose nothing that was written: the writer recreates metrics.jsonl if it
is deleted or rotated mid-run, the resume rewrite goes through a temporary file
(fsync, then an atomic rename; a stale one from a crashed attempt is removed on
relaunch), readers skip a line cut short by a kill or a full disk with a
warning, and plotting or summarising problems are warnings, never a failed run.
"""

from __future__ import annotations

import json
import logging as std_logging
import math
import os
from typing import IO, Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
# The resume rewrite's temporary, beside the metrics file; one left by a crashed attempt
# (e.g. 0 bytes after a full disk) is removed when the next MetricsWriter is constructed.
TEMPORARY_SUFFIX = ".tmp"


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


def _remove_stale_temporary(path: str) -> None:
  """Removes `path + TEMPORARY_SUFFIX` left by an earlier attempt that died mid-rewrite."""
  temporary = path + TEMPORARY_SUFFIX
  try:
    os.remove(temporary)
  except FileNotFoundError:
    return
  logging.warning("Removed %s, a stale temporary left by an earlier attempt "
                  "(%s itself was never modified in place).", temporary, path)


def _fsync_directory(directory: str) -> None:
  """Makes a rename inside `directory` durable (best effort: not every OS/filesystem allows it)."""
  try:
    descriptor = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(descriptor)
  except OSError:
    pass
  finally:
    os.close(descriptor)


def _drop_steps_after(path: str, resume_step: int) -> None:
  """Rewrites a metrics file keeping only records with step <= resume_step.

  The kept lines go to `path + TEMPORARY_SUFFIX`, which is fsynced and then
  renamed over `path` (atomic): a crash or a full disk at any point leaves
  either the old file or the new one, never a truncated mix. If writing the
  temporary fails, it is removed and the original file is left untouched.
  """
  with open(path, encoding="utf-8", errors="replace") as f:
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
  temporary = path + TEMPORARY_SUFFIX
  try:
    with open(temporary, "w", encoding="utf-8") as f:
      f.writelines(kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except OSError as e:
    try:
      os.remove(temporary)
    except OSError:
      pass
    message = (f"Could not drop the records after step {resume_step} from {path} (writing "
               f"{temporary}: {e.strerror or e}); {path} is unchanged. Free disk space in "
               f"{os.path.dirname(path) or '.'} and relaunch.")
    raise (OSError(e.errno, message) if e.errno is not None else OSError(message)) from e
  _fsync_directory(os.path.dirname(path) or ".")


def _ends_mid_line(path: str) -> bool:
  """Whether `path` exists, is non-empty and does not end with a newline (a cut-short record)."""
  try:
    with open(path, "rb") as f:
      if f.seek(0, os.SEEK_END) == 0:
        return False
      f.seek(-1, os.SEEK_END)
      return f.read(1) != b"\n"
  except FileNotFoundError:
    return False


def _open_for_append(path: str) -> IO[str]:
  """Opens `path` for appending (creating it and its directory), starting on a fresh line.

  If the file ends in a record cut short by a kill or a full disk, a newline is
  written first, so the next record is not glued onto the broken one (readers
  then skip just the broken line).
  """
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  ends_mid_line = _ends_mid_line(path)
  file = open(path, "a", encoding="utf-8")
  if ends_mid_line:
    file.write("\n")
    file.flush()
  return file


class MetricsWriter:
  """Appends metrics to `workdir/metrics.jsonl` and TensorBoard files in `workdir/tb/`.

  On resume, pass the restored step as `resume_step`: records of later steps
  (written after that checkpoint by the interrupted run) are dropped from the
  JSONL file and purged from TensorBoard, so the resumed curve has no
  duplicates. Pass 0 on a fresh start to clear stale records from an earlier
  run in the same workdir. On JAX processes other than 0 every method is a no-op.

  If metrics.jsonl is deleted or renamed while the writer is open (`rm`, log
  rotation), the next `write` notices (the path is gone or is another file)
  and reopens it at the original path, so later records are not lost into an
  unlinked or renamed file.
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None, tensorboard: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, METRICS_FILE)
    self._file: IO[str] | None = None
    self._tensorboard = None
    if jax.process_index() != 0:
      return
    # First of all: a temporary from an attempt that died mid-rewrite is garbage (the rewrite
    # renames it over the metrics file only once it is complete and fsynced).
    _remove_stale_temporary(self.path)
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None and os.path.exists(self.path):
      _drop_steps_after(self.path, resume_step)
    self._file = _open_for_append(self.path)
    if tensorboard:
      from tensorboardX import SummaryWriter    # imported here: only process 0 needs it
      # NaN is a deliberate value here (a figure with no value at that step); tensorboardX
      # would warn once per NaN scalar.
      std_logging.getLogger("tensorboardX.x2num").setLevel(std_logging.ERROR)
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
    self._reopen_if_moved()
    self._file.write(json.dumps(record, allow_nan=False) + "\n")
    self._file.flush()
    if self._tensorboard is not None:
      for key, value in metrics.items():
        if isinstance(value, str):
          self._tensorboard.add_text(key, value, int(step))
        else:
          self._tensorboard.add_scalar(key, float(np.asarray(value).reshape(())), int(step))
      self._tensorboard.flush()

  def _reopen_if_moved(self) -> None:
    """Reopens the metrics file at `self.path` if it was deleted or renamed since it was opened.

    Compares the path's inode/device with the open file's: a missing path (rm)
    or a different file (mv + a new file, log rotation) means the open file no
    longer is `self.path`. A file truncated in place keeps its inode and needs
    nothing: append mode writes at its new end.
    """
    opened = os.fstat(self._file.fileno())
    try:
      on_disk = os.stat(self.path)
    except FileNotFoundError:
      on_disk = None
    if on_disk is not None and (on_disk.st_ino, on_disk.st_dev) == (opened.st_ino, opened.st_dev):
      return
    logging.warning("%s was %s while the run was writing it; recreating it there and appending "
                    "from the next record on.", self.path,
                    "deleted or renamed" if on_disk is None else "replaced by another file")
    try:
      self._file.close()
    except OSError:
      pass      # the old file is no longer ours to care about
    self._file = _open_for_append(self.path)

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


def read_metrics(workdir: str) -> list[dict]:
  """All records of `workdir/metrics.jsonl`, in file order.

  A line that is not valid JSON (cut short by a killed run or a full disk, or
  garbage such as NUL bytes after a crash) is skipped with one warning naming
  the file and line; a valid JSON line that is not an object with a 'step'
  field raises a ValueError naming the file and line. A missing file raises
  FileNotFoundError.
  """
  path = os.path.join(workdir, METRICS_FILE)
  # errors="replace": bytes that are not UTF-8 (a torn write) make that line invalid JSON
  # instead of failing the whole read.
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = f.readlines()
  records = []
  for line_number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      logging.warning("%s:%d: skipping a line that is not valid JSON (%s; a record cut short "
                      "by a killed run or a full disk?).", path, line_number, e.msg)
      continue
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
                 filename: str = "curves.png") -> str | None:
  """Plots metrics against step, one subplot per key, to `workdir/filename`; returns the path.

  Default keys: every numeric metric in metrics.jsonl. Uses matplotlib's Agg
  canvas directly (no pyplot), so no display is needed and no global backend
  is changed.

  A plot is never worth a failed run: if metrics.jsonl is missing, unreadable
  or has nothing to plot, or matplotlib fails (not installed, disk full), this
  logs a warning naming the file and returns None. Requested keys with no
  numeric value are left out with a warning.
  """
  metrics_path = os.path.join(workdir, METRICS_FILE)
  try:
    records = read_metrics(workdir)
  except (OSError, ValueError) as e:
    logging.warning("plot_metrics: no plot, could not read %s: %s", metrics_path, e)
    return None
  available = _numeric_keys(records)
  keys = available if keys is None else list(keys)
  missing = [key for key in keys if key not in available]
  if missing:
    logging.warning("plot_metrics: %s has no numeric values of %s; plotting the rest. "
                    "Available: %s.", metrics_path, missing, available)
    keys = [key for key in keys if key in available]
  if not keys:
    logging.warning("plot_metrics: no plot, %s has no numeric metrics to plot.", metrics_path)
    return None
  path = os.path.join(workdir, filename)
  try:
    _draw(records, keys, path)
  except Exception as e:    # matplotlib's failures have no common type; none may fail the run
    logging.warning("plot_metrics: could not draw %s from %s: %s: %s",
                    path, metrics_path, type(e).__name__, e)
    return None
  return path


def _draw(records: Sequence[dict], keys: Sequence[str], path: str) -> None:
  """Draws one subplot per key (a grid of up to 3 columns) and saves the figure as `path`."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

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
  figure.savefig(path, dpi=100)


def _lower_is_better(key: str) -> bool:
  return any(word in key for word in ("loss", "error", "perplexity", "kl"))


def summarize(workdir: str) -> str:
  """A few lines: total steps, last train/loss, final and best value of each eval/ metric.

  "Best" is the minimum for metrics named like a loss/error/perplexity/kl and
  the maximum otherwise (accuracy, reward, ...).

  Never raises: if metrics.jsonl is missing, unreadable or empty, or the
  summary cannot be built from it, this logs a warning naming the file and
  returns a one-line explanation instead.
  """
  path = os.path.join(workdir, METRICS_FILE)
  try:
    records = read_metrics(workdir)
  except FileNotFoundError:
    logging.warning("summarize: %s does not exist; no summary.", path)
    return f"No summary: {path} does not exist."
  except (OSError, ValueError) as e:
    logging.warning("summarize: could not read %s: %s", path, e)
    return f"No summary: could not read {path} ({e})."
  if not records:
    logging.warning("summarize: %s holds no metrics; no summary.", path)
    return f"No metrics logged in {path}."
  try:
    return _summary_lines(workdir, records)
  except Exception as e:    # e.g. a hand-edited non-integer step: not worth a failed run
    logging.warning("summarize: could not summarize %s: %s: %s", path, type(e).__name__, e)
    return f"No summary: could not summarize {path} ({type(e).__name__}: {e})."


def _summary_lines(workdir: str, records: Sequence[dict]) -> str:
  """The summary text of `summarize` from a non-empty list of records."""
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
