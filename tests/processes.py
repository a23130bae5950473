"""Running several local processes for multi-process (jax.distributed) tests."""

import socket
import subprocess


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_all(commands: list[list[str]], env: dict, timeout: float = 600) -> list[subprocess.Popen]:
  """Starts every command at once, waits for all; returns the processes with `.output` set."""
  procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for c in commands]
  for proc in procs:
    try:
      proc.output = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
  return procs
