"""launch/train.py as two jax.distributed processes (gloo, one CPU device each) on one workdir."""

import os
import sys

import jax
import numpy as np

from flax import nnx

from selfimprove.models.orbax_params import load_orbax_params
from tests.processes import free_port, run_all
from tests.train_helpers import CONFIG, ROOT, TRAIN, final_params, launch, read_metrics


def test_two_process_training_matches_one_process_on_the_same_mesh(tmp_path):
  workdir = str(tmp_path / "two")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PYTHONPATH=ROOT, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  port = free_port()
  procs = run_all([[sys.executable, TRAIN, f"--config={CONFIG}:test", f"--workdir={workdir}",
                    "--distributed", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                    f"--process_id={i}"] for i in range(2)], env)
  for i, proc in enumerate(procs):
    assert proc.returncode == 0, f"process {i} failed:\n{proc.output[-4000:]}"

  # The same global batches on a 2-device mesh in one process.
  single = str(tmp_path / "one")
  env_two_devices = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = launch(single, env=env_two_devices, single_device=False)
  assert result.returncode == 0, result.stderr[-3000:]

  # The exported DIR/params (restored onto this process's device, whatever wrote it).
  params = nnx.to_pure_dict(load_orbax_params(os.path.join(workdir, "params"))[2])
  single_params = nnx.to_pure_dict(load_orbax_params(os.path.join(single, "params"))[2])
  assert final_params(single)[0] == 8
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, single_params)
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == [2, 4, 6, 8]           # written once, by process 0
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
  assert [r["eval/accuracy"] for r in rows if "eval/accuracy" in r] == \
      [r["eval/accuracy"] for r in read_metrics(single) if "eval/accuracy" in r]
