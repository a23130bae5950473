"""A damaged newest checkpoint falls back to the newest older one that restores, with its exact values.

Orbax 0.12 writes each step as `<step>/{state,data}`; the arrays a restore reads live in the
OCDBT store `<step>/state/manifest.ocdbt` + `<step>/state/d/<hash>` (the per-process stores in
`<step>/state/ocdbt.process_0/` are merged into it at save time and are not read back).
"""

import glob
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from selfimprove.checkpoint import CheckpointError, Checkpointer, abstract_like
from selfimprove.train_state import TrainState
from tests.train_helpers import assert_trees_equal

# When one array of a restore fails, Orbax's event loop closes while tensorstore still completes
# the other reads; their callbacks then print "RuntimeError: Event loop is closed" (harmless).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")


def _mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), ("data",))


def _state(value: int) -> TrainState:
  """A small TrainState whose every leaf depends on `value`; `w` is sharded over the 8 devices."""
  mesh = _mesh()
  w = jax.device_put(jnp.arange(24, dtype=jnp.float32).reshape(8, 3) + value,
                     NamedSharding(mesh, P("data")))
  return TrainState(step=jnp.int32(value), params={"w": w, "b": jnp.full((3,), value, jnp.bfloat16)},
                    opt_state={"mu": jnp.full((8, 3), 2.0 * value)},
                    rng=jnp.array([value, value + 1], jnp.uint32), extra={},
                    skipped_updates=jnp.int32(value % 3), consecutive_skips=jnp.int32(0))


def _abstract() -> TrainState:
  state = _state(0)
  return abstract_like(state, jax.tree.map(lambda x: x.sharding, state))


def _save_steps_2_and_4(directory: str) -> Checkpointer:
  checkpointer = Checkpointer(directory, keep=2)
  for step in (2, 4):
    checkpointer.save(step, _state(step), {"iterator": {"position": step}})
  checkpointer.wait()
  assert checkpointer.all_steps() == [2, 4]
  return checkpointer


def _truncate_array_data(step_dir: str) -> None:
  files = glob.glob(os.path.join(step_dir, "state", "d", "*"))
  assert files, f"no OCDBT data file under {step_dir}/state/d: {os.listdir(step_dir)}"
  size = os.path.getsize(files[0])
  with open(files[0], "r+b") as f:
    f.truncate(size // 2)


def _delete_manifest(step_dir: str) -> None:
  os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


def _delete_state_dir(step_dir: str) -> None:
  shutil.rmtree(os.path.join(step_dir, "state"))


CORRUPTIONS = {"truncated_array_data": _truncate_array_data,
               "deleted_state_file": _delete_manifest,
               "deleted_state_dir": _delete_state_dir}


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS))
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, caplog, corrupt):
  directory = str(tmp_path / "checkpoints")
  _save_steps_2_and_4(directory).close()
  CORRUPTIONS[corrupt](os.path.join(directory, "4"))

  checkpointer = Checkpointer(directory, keep=2)   # a relaunch
  with caplog.at_level(logging.WARNING):
    step, state, data_state = checkpointer.restore_newest(_abstract())
  assert step == 2
  assert data_state == {"iterator": {"position": 2}}
  assert_trees_equal(jax.tree.map(np.asarray, state), jax.tree.map(np.asarray, _state(2)))
  assert state.params["w"].sharding == _abstract().params["w"].sharding
  skipped = [m for m in _warnings(caplog) if "could not be restored" in m]
  assert len(skipped) == 1 and os.path.join(directory, "4") in skipped[0], _warnings(caplog)
  assert "\n" not in skipped[0]

  # The damaged step is kept but moved out of Orbax's sight, so the resumed run can save it again.
  assert sorted(os.listdir(directory)) == ["2", "4.corrupt"]
  assert checkpointer.all_steps() == [2]
  checkpointer.save(4, _state(40), {"iterator": {"position": 40}})
  checkpointer.wait()
  assert checkpointer.all_steps() == [2, 4]
  checkpointer.close()
  relaunched = Checkpointer(directory, keep=2)
  step, state, data_state = relaunched.restore_newest(_abstract())
  assert (step, data_state) == (4, {"iterator": {"position": 40}})
  assert_trees_equal(jax.tree.map(np.asarray, state), jax.tree.map(np.asarray, _state(40)))
  relaunched.close()


def test_fallback_in_the_process_that_saved_restores_the_older_values(tmp_path, caplog):
  """The saving manager has step 4 cached; the fallback must still read step 2 from disk."""
  directory = str(tmp_path / "checkpoints")
  checkpointer = _save_steps_2_and_4(directory)
  step, state, _ = checkpointer.restore_newest(_abstract())   # reads (and caches) step 4 first
  assert step == 4 and int(state.step) == 4
  _truncate_array_data(os.path.join(directory, "4"))
  with caplog.at_level(logging.WARNING):
    step, state, data_state = checkpointer.restore_newest(_abstract())
  assert (step, data_state) == (2, {"iterator": {"position": 2}})
  assert_trees_equal(jax.tree.map(np.asarray, state), jax.tree.map(np.asarray, _state(2)))
  assert any(os.path.join(directory, "4") in m for m in _warnings(caplog))
  checkpointer.close()


def test_an_intact_newest_checkpoint_is_restored_without_warnings(tmp_path, caplog):
  directory = str(tmp_path / "checkpoints")
  checkpointer = _save_steps_2_and_4(directory)
  with caplog.at_level(logging.WARNING):
    step, state, data_state = checkpointer.restore_newest(_abstract())
  assert (step, data_state) == (4, {"iterator": {"position": 4}})
  assert_trees_equal(jax.tree.map(np.asarray, state), jax.tree.map(np.asarray, _state(4)))
  assert not [m for m in _warnings(caplog) if "could not be restored" in m]
  assert sorted(os.listdir(directory)) == ["2", "4"]
  checkpointer.close()


def test_every_checkpoint_damaged_raises_an_error_naming_the_directory_and_each_step(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _save_steps_2_and_4(directory).close()
  _truncate_array_data(os.path.join(directory, "4"))
  _delete_state_dir(os.path.join(directory, "2"))
  checkpointer = Checkpointer(directory, keep=2)
  with pytest.raises(CheckpointError) as raised:
    checkpointer.restore_newest(_abstract())
  message = str(raised.value)
  assert f"No checkpoint in {directory} could be restored" in message
  lines = message.splitlines()
  step_4 = [line for line in lines if line.strip().startswith("step 4 ")]
  step_2 = [line for line in lines if line.strip().startswith("step 2 ")]
  assert len(step_4) == 1 and "OUT_OF_RANGE" in step_4[0], message
  assert len(step_2) == 1 and "state" in step_2[0], message
  assert message.index("step 4 ") < message.index("step 2 ")   # newest first
  assert len(lines) == 4, message   # heading, one line per step, what to do
  assert "tensorstore_spec" not in message and len(step_4[0]) < 2 * len(directory) + 400
  assert f"move {directory} aside" in message
  assert sorted(os.listdir(directory)) == ["2", "4"]   # nothing moved or deleted
  checkpointer.close()


def test_no_checkpoints_gives_none(tmp_path):
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"), keep=2)
  assert checkpointer.restore_newest(_abstract()) is None
  checkpointer.close()


def test_close_twice_is_safe_and_use_after_close_names_the_directory(tmp_path):
  directory = str(tmp_path / "checkpoints")
  checkpointer = _save_steps_2_and_4(directory)
  checkpointer.close()
  checkpointer.close()
  with pytest.raises(RuntimeError, match=f"checkpointer of {directory} was used after close"):
    checkpointer.latest_step()
