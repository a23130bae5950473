"""The `gcloud` commands that run one training command on every host of a TPU VM slice.

Pure functions: they render argument lists (run them with `subprocess`, print them with
`shlex.join`) and touch nothing. `launch/tpu_vm.py` is the command-line front end.

A multi-host slice runs the same program on every host (multi-controller JAX): each host runs
`launch/train.py ... --distributed`, and `jax.distributed.initialize()` finds the coordinator,
the number of processes and its own process id from the TPU VM's metadata. Set-up, once per
slice: pack this checkout (tracked files, with uncommitted edits to them) with `git archive`,
copy it to every host, unpack it into ~/selfimprove and `pip install '.[tpu]'` there. The
run's --workdir must be storage every host shares (checkpoints are written by all of them).
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Sequence

REMOTE_DIR = "~/selfimprove"           # on every host; `~` left for the remote shell to expand
REMOTE_TARBALL = "selfimprove.tar.gz"  # in the remote home directory
EXTRA = "tpu"                          # setup.py's extra with jax[tpu]

# Flags that must differ between hosts or that the TPU VM's metadata supplies: one command line
# given to every host must not fix them.
_PER_HOST_FLAGS = ("--process_id", "--coordinator_address", "--num_processes")


class LaunchError(ValueError):
  """A launch request that cannot be rendered; the message names the flag and what to do."""


@dataclasses.dataclass(frozen=True)
class TpuVm:
  """Which TPU VM (slice) to reach: its name, zone and, optionally, project."""
  name: str
  zone: str
  project: str = ""

  def __post_init__(self):
    for flag, value, hint in (("--tpu", self.name, "the TPU VM's name, as in `gcloud compute "
                               "tpus tpu-vm list --zone=ZONE`"),
                              ("--zone", self.zone, "the TPU VM's zone, e.g. us-central2-b")):
      if not value or not value.strip():
        raise LaunchError(f"{flag} is required: {hint}.")
    for flag, value in (("--tpu", self.name), ("--zone", self.zone), ("--project", self.project)):
      if any(c.isspace() for c in value):
        raise LaunchError(f"{flag}={value!r} contains whitespace; gcloud names never do.")

  def gcloud_flags(self) -> list[str]:
    return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])


def distributed_train_command(train_command: Sequence[str]) -> list[str]:
  """`train_command` with `--distributed` appended (once: kept as is if already there)."""
  command = list(train_command)
  if not command or not any(arg.strip() for arg in command):
    raise LaunchError("No training command: put it after `--`, e.g. `launch/tpu_vm.py --tpu=NAME "
                      "--zone=ZONE -- python3 launch/train.py --config=... --workdir=...`.")
  for arg in command:
    if arg in ("--nodistributed", "--distributed=false", "--distributed=False"):
      raise LaunchError(f"The training command says {arg}, but a TPU slice runs one process per "
                        f"host with --distributed; remove it.")
    if arg.split("=", 1)[0] in _PER_HOST_FLAGS:
      raise LaunchError(f"The training command sets {arg}: on a TPU VM jax.distributed finds the "
                        f"coordinator, process count and each host's id itself, and one command "
                        f"line for all hosts cannot give each its own; remove it.")
  if not any(arg in ("--distributed", "--distributed=true", "--distributed=True")
             for arg in command):
    command.append("--distributed")
  return command


def _ssh(vm: TpuVm, remote_command: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", vm.name, *vm.gcloud_flags(),
          "--worker=all", "--command", remote_command]


def setup_commands(vm: TpuVm, repo_root: str, revision: str, local_tarball: str,
                   python: str = "python3") -> list[list[str]]:
  """Pack `revision` of the checkout at `repo_root`, copy it to every host, install it there.

  `revision`: a commit (e.g. `git stash create`'s, which holds uncommitted edits to tracked
  files) or HEAD. Re-running unpacks over the hosts' copy and reinstalls.
  """
  if not revision.strip():
    raise LaunchError("No git revision to pack (expected a commit id or HEAD).")
  # Unpacked over the previous copy, never `rm -rf`: a relative --workdir lives inside it.
  install = " && ".join([
      f"mkdir -p {REMOTE_DIR}",
      f"tar -xzf ~/{REMOTE_TARBALL} -C {REMOTE_DIR}", f"cd {REMOTE_DIR}",
      f'{shlex.quote(python)} -m pip install -q ".[{EXTRA}]"'])   # "": the remote shell globs []
  return [
      ["git", "-C", repo_root, "archive", "--format=tar.gz", f"--output={local_tarball}", revision],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", local_tarball, f"{vm.name}:{REMOTE_TARBALL}",
       *vm.gcloud_flags(), "--worker=all"],
      _ssh(vm, install),
  ]


def run_command(vm: TpuVm, train_command: Sequence[str]) -> list[str]:
  """Starts `train_command --distributed` in the installed copy on every host at once."""
  return _ssh(vm, f"cd {REMOTE_DIR} && {shlex.join(distributed_train_command(train_command))}")


def render(commands: Sequence[Sequence[str]]) -> str:
  """One shell line per command, quoted so that pasting it runs the same argument list."""
  return "\n".join(shlex.join(command) for command in commands)
