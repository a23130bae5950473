"""Orbax checkpoints of the whole training state plus the data iterator position.

Saving is asynchronous and atomic: Orbax writes into a temporary directory and
renames it when complete, and `latest_step` only sees finalised steps, so a run
killed mid-save resumes from the previous checkpoint. Restoring takes the
target shardings, so a checkpoint saved on one mesh restores onto another.

A finalised checkpoint can still be damaged afterwards (a disk filled up, a file
truncated or deleted by hand). `restore_newest` then falls back to the newest
older checkpoint that restores, and moves the damaged newer ones aside (renamed
`<step>.corrupt`, kept for inspection) so that the resumed run can save those
steps again.

Layout written under `directory` (Orbax 0.12, OCDBT + zarr):

    <step>/_CHECKPOINT_METADATA, commit_success.txt
    <step>/data/metadata                     the data iterator state (JSON)
    <step>/state/manifest.ocdbt              root of the OCDBT key-value store
    <step>/state/d/<hash>                    the array data every restore reads
    <step>/state/ocdbt.process_<i>/...       per-process stores merged into the above
    <step>/state/_METADATA, _sharding, array_metadatas/   tree and sharding metadata
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from selfimprove.preemption import any_process
from selfimprove.train_state import TrainState

CORRUPT_SUFFIX = ".corrupt"
_ERROR_CHARS = 360   # an error longer than this is cut in logs and messages


def _one_line(error: BaseException) -> str:
  """`error` as one short line: type and message without tensorstore's JSON spec, middle cut if long."""
  message = str(error).split(" [tensorstore_spec", 1)[0]
  line = re.sub(r"\s+", " ", f"{type(error).__name__}: {message}").strip()
  if len(line) <= _ERROR_CHARS:
    return line
  # Nested errors ("Error opening ...: Error reading ...: <cause>") put the cause at the end.
  head = _ERROR_CHARS // 3
  return f"{line[:head]} ... {line[-(_ERROR_CHARS - head - 5):]}"


class CheckpointError(RuntimeError):
  """No checkpoint of a run restores; the message lists each step tried and what to do."""


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run under `directory`/<step>/{state,data}."""

  def __init__(self, directory: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._keep = keep
    self._async_save = async_save
    self._manager: ocp.CheckpointManager | None = self._new_manager()

  def _new_manager(self, reader: bool = False) -> ocp.CheckpointManager:
    """A manager over `directory`; a reader (only ever restores) keeps and deletes nothing."""
    if reader:
      options = ocp.CheckpointManagerOptions(max_to_keep=None, create=False,
                                             enable_async_checkpointing=False)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=True,
                                             enable_async_checkpointing=self._async_save)
    return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  @property
  def _open_manager(self) -> ocp.CheckpointManager:
    """The Orbax manager; raises once `close` has been called."""
    if self._manager is None:
      raise RuntimeError(f"The checkpointer of {self.directory} was used after close().")
    return self._manager

  def latest_step(self) -> int | None:
    return self._open_manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._open_manager.all_steps())

  def save(self, step: int, state: TrainState, data_state: dict[str, Any]) -> None:
    """Starts saving (returns before the write completes when async)."""
    self._open_manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state._asdict()),
        data=ocp.args.JsonSave(data_state)), force=True)

  def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores step `step` into the shapes, dtypes and shardings of `abstract_state`."""
    return self._restore_with(self._open_manager, step, abstract_state)

  def newest_data(self) -> tuple[int, dict[str, Any]] | None:
    """(step, data item) of the newest finalised checkpoint whose data item reads; None if none.

    Cheap (JSON only): the trainer reads the run's identity from it before restoring any array.
    """
    reader = self._new_manager(reader=True)
    try:
      for step in sorted(reader.all_steps(), reverse=True):
        try:
          return step, reader.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
        except Exception:  # noqa: BLE001 - a broken step: restore_newest reports it
          continue
      return None
    finally:
      reader.close()

  @staticmethod
  def _restore_with(manager: ocp.CheckpointManager, step: int,
                    abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state._asdict()),
        data=ocp.args.JsonRestore()))
    return TrainState(**restored["state"]), restored["data"]

  def restore_newest(self, abstract_state: TrainState) -> tuple[int, TrainState, dict[str, Any]] | None:
    """(step, state, data state) of the newest finalised checkpoint that restores; None if none exist.

    Steps are tried newest first, each with a fresh Orbax manager, so
    nothing a failed attempt read or cached can leak into the next one. A step
    whose restore raises (on any process) is skipped with a warning; once an
    older step has restored, the skipped newer ones are renamed
    `<step>.corrupt` (kept, but out of Orbax's sight) so the resumed run can
    save those steps again. If every checkpoint fails, nothing is moved and a
    ValueError lists each step's error.
    """
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      return None
    failures: list[tuple[int, str]] = []
    for step in steps:
      step_dir = os.path.join(self.directory, str(step))
      reader = self._new_manager(reader=True)
      error: BaseException | None = None
      try:
        state, data_state = self._restore_with(reader, step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except  (any failure means: try an older step)
        error = e
      finally:
        reader.close()
      # Every process must resume from the same step, so one process's failure skips it for all.
      if any_process(error is not None):
        reason = _one_line(error) if error is not None else "failed to restore on another process"
        logging.warning("Checkpoint %s could not be restored, trying an older one: %s",
                        step_dir, reason)
        failures.append((step, reason))
        continue
      if failures:
        self._move_aside([s for s, _ in failures])
      return step, state, data_state
    tried = "\n".join(f"  step {s} ({os.path.join(self.directory, str(s))}): {reason}"
                      for s, reason in failures)
    raise CheckpointError(
        f"No checkpoint in {self.directory} could be restored; steps tried, newest first:\n{tried}\n"
        f"If the run's config changed (model shapes, optimizer), restore with the config it was "
        f"saved with. To start afresh instead, move {self.directory} aside (rename it; it keeps the "
        f"damaged checkpoints for inspection) and relaunch.")

  def _move_aside(self, steps: list[int]) -> None:
    """Renames each step's directory to `<step>.corrupt` (then `.corrupt.1`, ...) and reopens the manager."""
    self.close()
    if jax.process_index() == 0:
      for step in steps:
        source = os.path.join(self.directory, str(step))
        target, n = source + CORRUPT_SUFFIX, 0
        while os.path.exists(target):
          n += 1
          target = f"{source}{CORRUPT_SUFFIX}.{n}"
        os.rename(source, target)
        logging.warning("Moved the unreadable checkpoint %s aside to %s; the run will save step %d "
                        "again when it gets there.", source, target, step)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("selfimprove_checkpoint_move_aside")
    # A fresh manager: the old one's list of steps still names the moved directories.
    self._manager = self._new_manager()

  def wait(self) -> None:
    """Blocks until any in-flight save is finalised."""
    self._open_manager.wait_until_finished()

  def close(self) -> None:
    """Waits for any in-flight save, then releases Orbax's threads; safe to call more than once."""
    if self._manager is None:
      return
    manager, self._manager = self._manager, None
    try:
      manager.wait_until_finished()
    finally:
      manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs with the given shardings, the restore target for Orbax."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
