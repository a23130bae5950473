"""Two local processes with jax.distributed (gloo): sharded init, per-process batches, forward and sampling."""

import os
import socket
import subprocess
import sys


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_process_mesh_matches_single_process_reference():
  worker = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, worker, str(i), str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = []
  for proc in procs:
    try:
      outputs.append(proc.communicate(timeout=300)[0])
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
  for i, (proc, output) in enumerate(zip(procs, outputs)):
    assert proc.returncode == 0, f"process {i} failed:\n{output[-4000:]}"
    assert f"process {i}: OK" in output
