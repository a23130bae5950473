"""Shared helpers for trainer tests: configs, subprocess launches, reading final params."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "launch", "train.py")
CONFIG = os.path.join(ROOT, "configs", "sft_arithmetic.py")


def make_test_config(**overrides):
  """The `test` preset of configs/sft_arithmetic.py with dotted-name overrides."""
  return preset_config("sft_arithmetic", **overrides)


def preset_config(module, preset="test", **overrides):
  """configs/<module>.py's preset with dotted-name overrides ({"train.num_steps": 4})."""
  import importlib
  config = importlib.import_module(f"configs.{module}").get_config(preset).unlock()
  for name, value in overrides.items():
    section, _, field = name.rpartition(".")
    target = config
    for part in section.split(".") if section else []:
      target = target[part]
    target[field] = value
  return config.lock()


def single_device_config(module, **overrides):
  """preset_config on one device with synchronous checkpoints: in-process trainer tests."""
  return preset_config(module, **{"mesh.num_devices": 1, "mesh.data": 1,
                                  "train.async_checkpoints": False, **overrides})


def copy_run_until(source, target, step):
  """`target` as a run killed right after `source`'s step-`step` checkpoint would have left it."""
  shutil.copytree(os.path.join(source, "checkpoints", str(step)),
                  os.path.join(target, "checkpoints", str(step)))
  shutil.copy(os.path.join(source, "metrics.jsonl"), target)


def launch(workdir, *flags, env=None, wait=True, single_device=True, config=CONFIG):
  """Runs launch/train.py on the `test` preset of `config` in a subprocess."""
  env = dict(os.environ if env is None else env)
  env.pop("XLA_FLAGS", None) if single_device else None
  env["PYTHONPATH"] = ROOT
  command = [sys.executable, TRAIN, f"--config={config}:test", f"--workdir={workdir}", *flags]
  if not wait:
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def final_state(workdir):
  """(step, the whole train state) of the newest checkpoint in workdir, as numpy arrays."""
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "data"))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return step, jax.tree.map(np.asarray, restored["state"])


def final_params(workdir):
  """Parameters of the newest checkpoint in workdir, as numpy arrays."""
  step, state = final_state(workdir)
  return step, state["params"]


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def assert_trees_equal(a, b):
  flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
