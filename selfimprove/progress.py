"""The console progress bar of a training run."""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any, Mapping, Sequence

import jax
import numpy as np


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
