"""Two local processes with jax.distributed (gloo): sharded init, per-process batches, forward and sampling."""

import os
import sys

from tests.processes import free_port, run_all


def test_two_process_mesh_matches_single_process_reference():
  worker = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
  port = free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = run_all([[sys.executable, worker, str(i), str(port)] for i in range(2)], env, timeout=300)
  for i, proc in enumerate(procs):
    assert proc.returncode == 0, f"process {i} failed:\n{proc.output[-4000:]}"
    assert f"process {i}: OK" in proc.output
