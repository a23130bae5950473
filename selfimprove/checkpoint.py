"""Orbax checkpoints of the whole training state plus the data iterator position.

Saving is asynchronous and atomic: Orbax writes into a temporary directory and
renames it when complete, and `latest_step` only sees finalised steps, so a run
killed mid-save resumes from the previous checkpoint. Restoring takes the
target shardings, so a checkpoint saved on one mesh restores onto another.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from selfimprove.train_state import TrainState


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run under `directory`/<step>/{state,data}."""

  def __init__(self, directory: str, *, keep: int, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: TrainState, data_state: dict[str, Any]) -> None:
    """Starts saving (returns before the write completes when async)."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state._asdict()),
        data=ocp.args.JsonSave(data_state)), force=True)

  def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores step `step` into the shapes, dtypes and shardings of `abstract_state`."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state._asdict()),
        data=ocp.args.JsonRestore()))
    return TrainState(**restored["state"]), restored["data"]

  def wait(self) -> None:
    """Blocks until any in-flight save is finalised."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs with the given shardings, the restore target for Orbax."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
