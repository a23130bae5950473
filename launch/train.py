"""Trains a model: `python launch/train.py --config=configs/<experiment>.py[:preset] --workdir=DIR`.

Override any config field with `--config.section.field=value`. Relaunching the
same command resumes from the newest checkpoint in DIR (exactly: parameters,
optimizer, RNG stream and data position). SIGTERM checkpoints and exits 0.
A config with a `warm_start` section (a whole run config, e.g. SFT before
SCoRe) trains that first in DIR/warm_start and starts from its parameters.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, plots).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-process run: call jax.distributed.initialize(), which detects "
    "TPU pods, SLURM and similar clusters by itself; elsewhere also pass the three flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
# Multi-host failure handling: the coordinator (process 0) declares a process dead once it has sent
# no heartbeat for this long, and every surviving process then stops with an error instead of
# waiting forever in a collective. Heartbeats come from a background thread, so only a frozen
# process, a lost host or a network outage this long trips it, not a slow step or checkpoint.
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 60, "With --distributed: a process silent this long is declared "
    "dead and the others stop with an error (jax.distributed heartbeat_timeout_seconds).",
    lower_bound=1)
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout_seconds", 300, "With --distributed: how long each process waits for "
    "all the others to connect at start-up before giving up.", lower_bound=1)
_SHUTDOWN_TIMEOUT = flags.DEFINE_integer(
    "shutdown_timeout_seconds", 120, "With --distributed: how long a finished process waits at "
    "exit for the others (process 0 writes plots and the summary last); also bounds how long the "
    "others wait when one process stops on an exception of its own.", lower_bound=1)
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config-file and config-field mistakes in one line, not a traceback."""
  try:
    remaining = flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    # ml_collections reports an unknown field as KeyError/AttributeError("'name'\nDid you mean ...").
    message = str(error).strip("'\"").replace("\\n", " ").replace("\\'", "'").replace('\\"', '"')
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    _config_error(f"unknown field in {' '.join(bad) or 'the config'}: {message}")
  except flags.Error as error:
    message = str(error)
    if "Traceback" in message:   # the config file's own exception: its last line says what
      lines = [line.strip() for line in message.splitlines() if line.strip()]
      given = [a for a in argv[1:] if a.startswith("--config=")]
      message = f"{given[-1] if given else '--config'}: {lines[-1]}"
    _config_error(message)
  try:
    # Load the config file now: a missing file or a bad preset is a config error. (A file that
    # cannot be read comes back as a placeholder that raises on first use.)
    _CONFIG.value.to_dict()
  except Exception as error:  # noqa: BLE001 - whatever the user's config file raises
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = lines[-1] if lines else type(error).__name__
    if "Errno 2" in detail:
      detail = "no such config file."
    _config_error(f"--config={flags.FLAGS['config'].serialize().partition('=')[2] or '?'}: "
                  f"{detail}")
  return remaining


def _config_error(message: str) -> None:
  print(f"Config error: {message}", file=sys.stderr)
  sys.exit(2)


# What a collective or the coordination service says when another process of the run has gone
# (killed, preempted, its host lost): gloo on CPU, NCCL on GPU, the distributed runtime itself.
_LOST_PEER_MARKERS = ("Gloo ", "NCCL", "Connection reset by peer", "Connection closed by peer",
                      "heartbeat", "coordination service", "Socket closed")


def lost_a_peer(error: BaseException) -> bool:
  """Whether `error` (raised in a multi-process run) means another process of the run is gone."""
  return any(marker in str(error) for marker in _LOST_PEER_MARKERS)


def exit_after_lost_peer(error: BaseException) -> None:
  """Says in one paragraph that another process died and how to resume, then exits 1 at once.

  `os._exit` rather than `sys.exit`: jax's exit handler would otherwise wait at the distributed
  shutdown barrier for the dead process (--shutdown_timeout_seconds), then abort with SIGABRT and
  pages of C++ logs that bury this message. The checkpointer has already been closed by then.
  """
  import jax
  first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
  if len(first_line) > 200:
    first_line = first_line[:197] + "..."
  checkpoints = os.path.join(_WORKDIR.value, "checkpoints")
  # Finalised steps only: Orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames at the end.
  steps = sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit()) if os.path.isdir(
      checkpoints) else []
  newest = (f"the newest finalised checkpoint, step {steps[-1]} in {checkpoints}" if steps else
            f"the newest finalised checkpoint under {_WORKDIR.value}, if any")
  print(f"Error: process {jax.process_index()} of {jax.process_count()} lost contact with the "
        f"other processes of this run ({type(error).__name__}: {first_line}). Another process most "
        f"likely died or was preempted: see its log. Relaunch all {jax.process_count()} processes "
        f"with the same command to resume from {newest}.", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)


def main(argv):
  del argv
  import jax  # after flag parsing, so a bad flag never waits for backend start-up
  from selfimprove.checkpoint import CheckpointError
  from selfimprove.config_checks import ConfigError, DataError
  from selfimprove.preemption import Preemption
  from selfimprove.train import train_with_warm_start
  from selfimprove.verifiers import HostVerifierError

  if not flags.FLAGS["verbosity"].present:
    # Orbax logs every save step at INFO; keep the console to the progress bar and warnings.
    logging.set_verbosity(logging.WARNING)
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
                               initialization_timeout=_INIT_TIMEOUT.value,
                               heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value,
                               shutdown_timeout_seconds=_SHUTDOWN_TIMEOUT.value)
  try:
    with Preemption():   # SIGTERM at any point: checkpoint (if anything trained) and exit 0
      result = train_with_warm_start(_CONFIG.value, _WORKDIR.value)
  except ConfigError as error:
    kind = "Data" if isinstance(error, DataError) else "Config"
    print(f"{kind} error: {error}", file=sys.stderr)
    sys.exit(2)
  except HostVerifierError as error:   # the user's verifier raised: a fault, not a config mistake
    print(f"Host verifier error: {error}", file=sys.stderr)
    sys.exit(1)
  except (OSError, FloatingPointError, CheckpointError) as error:   # faults: disk full, divergence
    if jax.process_count() > 1 and lost_a_peer(error):
      exit_after_lost_peer(error)
    print(f"Error: {error}", file=sys.stderr)
    sys.exit(1)
  except Exception as error:  # noqa: BLE001 - only a collective that lost its peer is handled here
    if jax.process_count() > 1 and lost_a_peer(error):
      exit_after_lost_peer(error)
    raise
  print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
  from selfimprove.host_memory import reexec_with_huge_pages
  reexec_with_huge_pages()   # once, before any work: XLA's per-call host buffers on huge pages
  app.run(main, flags_parser=parse_flags)
