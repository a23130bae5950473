"""Runs one training command on every host of a TPU VM slice through `gcloud`.

    python launch/tpu_vm.py --tpu=NAME --zone=ZONE [--project=P] -- \\
        python3 launch/train.py --config=configs/sft_arithmetic.py:tiny --workdir=/mnt/shared/sft

First installs this checkout on every host (tracked files, with uncommitted edits to them:
`git archive` of `git stash create`'s commit, copied with `tpu-vm scp`, `pip install '.[tpu]'`),
then starts the command after `--` on every host at once with `--distributed` appended
(`jax.distributed.initialize()` finds the coordinator and each host's process id by itself).
`--dry_run` prints the commands instead; `--setup_only` stops after the install; `--skip_setup`
only starts the run (e.g. relaunching after a preemption, which resumes from the checkpoints).
The commands themselves come from `selfimprove/launch_tpu.py`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from selfimprove.launch_tpu import (LaunchError, TpuVm, render, run_command,  # noqa: E402
                                    setup_commands)

_TPU = flags.DEFINE_string("tpu", None, "The TPU VM's name (gcloud compute tpus tpu-vm list).")
_ZONE = flags.DEFINE_string("zone", None, "The TPU VM's zone, e.g. us-central2-b.")
_PROJECT = flags.DEFINE_string("project", "", "Google Cloud project (default: gcloud's own).")
_PYTHON = flags.DEFINE_string("python", "python3", "The hosts' Python (3.11 or newer) for pip.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands, one per line; run nothing.")
_SETUP_ONLY = flags.DEFINE_bool("setup_only", False, "Install on every host; start no run.")
_SKIP_SETUP = flags.DEFINE_bool("skip_setup", False, "Start the run only (already installed).")


def source_revision(repo_root: str) -> str:
  """A commit with the checkout's uncommitted edits to tracked files (`git stash create`;
  refs and the work tree are untouched), or HEAD when there are none."""
  try:
    created = subprocess.run(["git", "-C", repo_root, "stash", "create"], capture_output=True,
                             text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError) as error:
    raise LaunchError(f"{repo_root} is not a git checkout that `git` can read ({error}); "
                      f"launch/tpu_vm.py ships the code with `git archive`.") from None
  return created or "HEAD"


def commands(train_command: list[str]) -> list[list[str]]:
  if _SETUP_ONLY.value and _SKIP_SETUP.value:
    raise LaunchError("--setup_only and --skip_setup together leave nothing to do; pick one.")
  vm = TpuVm(_TPU.value or "", _ZONE.value or "", _PROJECT.value)
  planned = []
  if not _SKIP_SETUP.value:
    tarball = os.path.join(tempfile.gettempdir(), f"selfimprove-{vm.name}.tar.gz")
    planned += setup_commands(vm, ROOT, source_revision(ROOT), tarball, _PYTHON.value)
  if not _SETUP_ONLY.value:
    planned.append(run_command(vm, train_command))
  return planned


def main(argv: list[str]) -> None:
  train_command = argv[1:]   # everything after `--`
  try:
    if _SETUP_ONLY.value and train_command:
      raise LaunchError("--setup_only starts no run; drop the command after `--`.")
    planned = commands(train_command)
  except LaunchError as error:
    print(f"Error: {error}", file=sys.stderr)
    sys.exit(2)
  if _DRY_RUN.value:
    print(render(planned))
    return
  for command in planned:
    print(f"+ {shlex.join(command)}", flush=True)
    try:
      returncode = subprocess.run(command).returncode
    except FileNotFoundError:
      print(f"Error: {command[0]!r} is not installed or not on PATH.", file=sys.stderr)
      sys.exit(1)
    if returncode:
      print(f"Error: exit code {returncode} from: {shlex.join(command)}", file=sys.stderr)
      sys.exit(returncode)


if __name__ == "__main__":
  app.run(main)
