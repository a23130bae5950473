"""SIGTERM (TPU-VM / cloud preemption) as a flag the training loop checks, agreed across processes."""

from __future__ import annotations

import signal

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


_requested = False   # process-wide: a SIGTERM before the loop (or between stages) counts too


def requested() -> bool:
  """Whether this process has received SIGTERM (while a `Preemption` handler was installed)."""
  return _requested


class Preemption:
  """Turns SIGTERM into a flag the loop checks after each compiled call.

  Install it around the whole launch (launch/train.py does) and again around the
  loop: a SIGTERM during set-up, compilation or between a warm start and its main
  stage is then remembered, and the run checkpoints and exits 0 at the next chance.
  """

  def __init__(self):
    self._previous = None

  @property
  def requested(self) -> bool:
    return _requested

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no signal handling
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    global _requested
    logging.warning("SIGTERM received: finishing the current step, then checkpointing.")
    _requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def any_process_requested(self) -> bool:
    return any_process(self.requested)
