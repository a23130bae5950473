"""Runs a sweep: `python launch/sweep.py --sweep=configs/sweeps/<name>.py --workdir=DIR`.

Every trial of the sweep file (selfimprove/sweep.py says how to write one) runs as its own
`launch/train.py --config=BASE --workdir=DIR/<trial> --config.x=y ...` process, its output in
DIR/<trial>.log, through an executor: `local` (--parallel at a time on this machine) or `slurm`
(one submitit job array; --slurm_cluster=local runs the same path on this machine). --dry_run
prints one shell command per trial for any other scheduler and runs nothing. Relaunching the
same command resumes: finished trials are skipped, unfinished ones resume from their
checkpoints. Then DIR/results.csv, DIR/results.md, DIR/comparison.png and TensorBoard HParams
(`tensorboard --logdir DIR`) are written. Exits 1 if any trial failed or is unfinished.
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from selfimprove import sweep as sweep_lib  # noqa: E402
from selfimprove import sweep_results  # noqa: E402

TRAIN = os.path.join(ROOT, "launch", "train.py")

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file, configs/sweeps/<name>.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: DIR/<trial> per trial.")
_EXECUTOR = flags.DEFINE_string("executor", "local", "local or slurm (through submitit).")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Trials at a time (local), or the job array's "
                                 "parallelism (slurm).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print one command per trial; run nothing.")
_RESULTS_ONLY = flags.DEFINE_bool("results_only", False, "Run nothing; write the results of the "
                                  "trials in DIR (e.g. after running the --dry_run commands).")
_METRIC = flags.DEFINE_string("metric", None, "Eval metric of comparison.png (default: the sweep "
                              f"file's `metric`, else {sweep_lib.DEFAULT_METRIC}).")
_SLURM_CLUSTER = flags.DEFINE_string("slurm_cluster", "slurm", "submitit cluster for "
                                     "--executor=slurm; 'local' runs the jobs on this machine.")
_PARTITION = flags.DEFINE_string("slurm_partition", None, "SLURM partition.")
_TIMEOUT_MIN = flags.DEFINE_integer("timeout_min", 24 * 60, "SLURM time limit per trial, minutes.")
_GPUS = flags.DEFINE_integer("gpus_per_node", None, "SLURM GPUs per trial.")
_CPUS = flags.DEFINE_integer("cpus_per_task", None, "SLURM CPUs per trial.")
_MEM_GB = flags.DEFINE_integer("mem_gb", None, "SLURM memory per trial, GB.")
flags.mark_flags_as_required(["sweep", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; overrides belong in the sweep file.")
  try:
    sweep = sweep_lib.load_sweep(_SWEEP.value, ROOT)
    if _EXECUTOR.value not in sweep_lib.EXECUTORS:
      raise sweep_lib.SweepError(
          f"--executor={_EXECUTOR.value}: unknown executor; use one of "
          f"{', '.join(sweep_lib.EXECUTORS)}, or --dry_run for another scheduler.")
  except sweep_lib.SweepError as error:
    print(f"Sweep error: {error}", file=sys.stderr)
    sys.exit(2)
  workdir = os.path.abspath(_WORKDIR.value)
  if _DRY_RUN.value:
    for trial in sweep.trials:
      command = sweep_lib.trial_command(sweep, trial, workdir, TRAIN)
      print(f"cd {shlex.quote(ROOT)} && {shlex.join(command)} "
            f">> {shlex.quote(os.path.join(workdir, trial.name + '.log'))} 2>&1")
    return
  codes = {}
  if not _RESULTS_ONLY.value:
    slurm = sweep_lib.SlurmOptions(
        cluster=_SLURM_CLUSTER.value, partition=_PARTITION.value, timeout_min=_TIMEOUT_MIN.value,
        gpus_per_node=_GPUS.value, cpus_per_task=_CPUS.value, mem_gb=_MEM_GB.value)
    codes = sweep_lib.run_sweep(sweep, workdir, TRAIN, _EXECUTOR.value, _PARALLEL.value, slurm)
  print(sweep_results.write_results(sweep, workdir, _METRIC.value, codes))
  failed = [name for name, code in codes.items() if code != 0]
  unfinished = [t.name for t in sweep.trials
                if not sweep_lib.finished(os.path.join(workdir, t.name))]
  if failed:
    print(f"{len(failed)} trial(s) failed: {', '.join(failed)} (logs: {workdir}/<trial>.log).",
          file=sys.stderr)
  if unfinished:
    print(f"{len(unfinished)} of {len(sweep.trials)} trial(s) unfinished; relaunch the same "
          f"command to resume them.", file=sys.stderr)
    sys.exit(1)
  print(f"All {len(sweep.trials)} trials finished: {workdir}/results.md")


if __name__ == "__main__":
  app.run(main)
