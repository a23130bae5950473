"""Sweeps: many `launch/train.py` runs described by one config file, run, resumed and compared.

A sweep file `configs/sweeps/<name>.py` has `get_config()` returning a ConfigDict with

* `base`: the run config every trial starts from, "configs/<experiment>.py:<preset>";
* the trials, from any of these (combined as a cartesian product when several are given):
  `trials`, a list of trials, each a dict of overrides ({"score.mode": "score", "seed": 0};
  keys with dots, or nested dicts) or a list of "--config.x=y" strings; `grid`, nested dicts
  mirroring the run config whose leaves are lists of values (every combination);
  `random = dict(num_trials=N, seed=S, space=...)`, N distinct draws from a seeded numpy
  generator, where each leaf of `space` is a list of choices, {"uniform": [lo, hi]} or
  {"log_uniform": [lo, hi]} (floats rounded to 4 significant digits);
* optionally `fixed` (overrides for every trial), `name_keys` (the override keys that make up
  trial names; default: every key whose value differs between trials) and `metric` (the eval
  metric plotted by default).

Each trial runs `launch/train.py --config=BASE --workdir=DIR/<trial> --config.k=v ...` in its
own process, its output appended to DIR/<trial>.log. A trial whose DIR/<trial>/params exists is
finished and skipped; any other is (re)launched in the same workdir, where train.py resumes from
its newest checkpoint. Results: DIR/results.csv and DIR/results.md (every trial's overrides and
last eval/* values, and mean +- sample std over seeds: over trials equal but for keys named
`seed` or ending in `.seed`), DIR/comparison.png (one metric over steps, a line per trial) and
TensorBoard HParams under DIR/hparams/<trial> (`tensorboard --logdir DIR`), written by
selfimprove/sweep_results.py.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import itertools
import math
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

SWEEP_FIELDS = ("base", "trials", "grid", "random", "fixed", "name_keys", "metric")
DISTRIBUTIONS = ("uniform", "log_uniform")
EXECUTORS = ("local", "slurm")
DEFAULT_METRIC = "eval/accuracy"
TAIL_LINES = 20
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


class SweepError(ValueError):
  """A sweep file that cannot be run; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class Trial:
  name: str                              # DIR/<name>: deterministic, filesystem-safe, unique
  overrides: tuple[tuple[str, Any], ...]   # (dotted config key, value), in sweep order

  def flags(self) -> list[str]:
    return [f"--config.{key}={format_value(value)}" for key, value in self.overrides]


@dataclasses.dataclass(frozen=True)
class Sweep:
  path: str              # the sweep file
  base: str              # absolute "path/to/config.py[:preset]"
  trials: tuple[Trial, ...]
  metric: str            # the eval metric plotted by default


def format_value(value: Any) -> str:
  """A value as train.py's `--config.x=` flags parse it (floats exactly, via repr)."""
  return repr(value) if isinstance(value, float) else str(value)


def finished(trial_dir: str) -> bool:
  """The run wrote its final parameters (a relaunch would do nothing); as bench/runs.py."""
  return os.path.exists(os.path.join(trial_dir, "params", "model_config.json"))


def is_seed_key(key: str) -> bool:
  return key == "seed" or key.endswith(".seed")


# ---------------------------------------------------------------- expansion and naming

def _flatten(tree: Any, where: str, prefix: str = "") -> dict[str, Any]:
  """Nested dicts of overrides -> {"dotted.key": leaf}; keys are checked to be field paths."""
  if not isinstance(tree, dict):
    raise SweepError(f"{where}: expected a dict of config overrides, got {tree!r}.")
  flat = {}
  for key, value in tree.items():
    key = str(key).removeprefix("--config.").removeprefix("config.")
    full = f"{prefix}{key}"
    if not _KEY.match(full):
      raise SweepError(f"{where}: {full!r} is not a config field path like 'optimizer.lr'.")
    if isinstance(value, dict) and not (set(value) & set(DISTRIBUTIONS)):
      flat.update(_flatten(value, where, full + "."))
    else:
      flat[full] = value
  return flat


def _parse_flag(flag: Any, where: str) -> tuple[str, str]:
  match = re.fullmatch(r"--config\.([^=\s]+)=(.*)", flag) if isinstance(flag, str) else None
  if not match or not _KEY.match(match.group(1)):
    raise SweepError(f"{where}: {flag!r} is not an override of the form '--config.x=y'.")
  return match.group(1), match.group(2)


def _list_trials(entries: Any, where: str) -> list[dict[str, Any]]:
  if not isinstance(entries, (list, tuple)) or not entries:
    raise SweepError(f"{where}: expected a non-empty list of trials.")
  trials = []
  for i, entry in enumerate(entries):
    if isinstance(entry, (list, tuple)):
      trials.append(dict(_parse_flag(flag, f"{where}[{i}]") for flag in entry))
    else:
      trials.append(_flatten(entry, f"{where}[{i}]"))
  return trials


def _grid_trials(grid: Any, where: str) -> list[dict[str, Any]]:
  axes = _flatten(grid, where)
  for key, values in axes.items():
    if not isinstance(values, (list, tuple)) or not values:
      raise SweepError(f"{where}.{key}: expected a non-empty list of values, got {values!r}.")
  return [dict(zip(axes, combination)) for combination in itertools.product(*axes.values())]


def _draw(key: str, leaf: Any, rng: np.random.Generator, where: str) -> Any:
  if isinstance(leaf, (list, tuple)) and leaf:
    return leaf[int(rng.integers(len(leaf)))]
  if isinstance(leaf, dict) and len(leaf) == 1 and next(iter(leaf)) in DISTRIBUTIONS:
    (kind, bounds), = leaf.items()
    if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2 and bounds[0] < bounds[1]):
      raise SweepError(f"{where}.space.{key}.{kind}: expected [low, high] with low < high.")
    low, high = (math.log(b) for b in bounds) if kind == "log_uniform" else bounds
    value = rng.uniform(low, high)
    return float(f"{math.exp(value) if kind == 'log_uniform' else value:.4g}")
  raise SweepError(f"{where}.space.{key}: expected a list of choices, {{'uniform': [lo, hi]}} "
                   f"or {{'log_uniform': [lo, hi]}}, got {leaf!r}.")


def _random_trials(spec: Any, where: str) -> list[dict[str, Any]]:
  """`num_trials` distinct draws from `space`, the same for the same `seed`."""
  if not isinstance(spec, dict) or set(spec) - {"num_trials", "seed", "space"} or \
      not isinstance(spec.get("num_trials"), int) or spec["num_trials"] < 1:
    raise SweepError(f"{where}: expected dict(num_trials=N >= 1, seed=S, space={{...}}), "
                     f"got {spec!r}.")
  space = _flatten(spec.get("space", {}), f"{where}.space")
  if not space:
    raise SweepError(f"{where}.space: empty; name the fields to sample.")
  rng = np.random.default_rng(spec.get("seed", 0))
  trials, seen = [], set()
  for _ in range(100 * spec["num_trials"]):    # redraw duplicates, within reason
    trial = {key: _draw(key, leaf, rng, where) for key, leaf in sorted(space.items())}
    if repr(trial) not in seen:
      seen.add(repr(trial))
      trials.append(trial)
      if len(trials) == spec["num_trials"]:
        return trials
  raise SweepError(f"{where}: the space has fewer than num_trials={spec['num_trials']} "
                   f"distinct trials ({len(trials)} found).")


def expand(spec: dict[str, Any], source: str) -> list[dict[str, Any]]:
  """A sweep file's fields -> every trial's overrides {"dotted.key": value}, in order."""
  components = []
  if spec.get("trials") is not None:
    components.append(_list_trials(spec["trials"], f"{source}: trials"))
  if spec.get("grid") is not None:
    components.append(_grid_trials(spec["grid"], f"{source}: grid"))
  if spec.get("random") is not None:
    components.append(_random_trials(spec["random"], f"{source}: random"))
  if not components:
    raise SweepError(f"{source}: no trials; set `trials` (a list), `grid` or `random`.")
  fixed = _flatten(spec.get("fixed") or {}, f"{source}: fixed")
  trials = []
  for parts in itertools.product(*components):
    trial: dict[str, Any] = {}
    for part in parts + (fixed,):
      clash = set(trial) & set(part)
      if clash:
        raise SweepError(f"{source}: {sorted(clash)} set twice (by two of trials, grid, random, "
                         f"fixed); set each field in one place.")
      trial.update(part)
    trials.append(trial)
  return trials


def _short_names(keys: Sequence[str]) -> dict[str, str]:
  """Each dotted key's shortest suffix that no other key ends with ('score.alpha' -> 'alpha')."""
  names = {}
  for key in keys:
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
      suffix = ".".join(parts[-n:])
      if not any(o != key and (o == suffix or o.endswith("." + suffix)) for o in keys):
        break
    names[key] = suffix
  return names


def name_trials(trials: list[dict[str, Any]], source: str,
                name_keys: Sequence[str] | None = None) -> list[Trial]:
  """Names "alpha=10.0,seed=1" from the name keys (default: keys whose value varies)."""
  keys = list(dict.fromkeys(k for trial in trials for k in trial))
  if name_keys is None:
    name_keys = [k for k in keys if len({repr(t.get(k, "<unset>")) for t in trials}) > 1] or keys
  else:
    name_keys = [str(k).removeprefix("--config.").removeprefix("config.") for k in name_keys]
    unknown = [k for k in name_keys if k not in keys]
    if unknown:
      raise SweepError(f"{source}: name_keys {unknown} are not overridden by any trial "
                       f"(overridden: {keys}).")
  short = _short_names(name_keys)
  named, seen = [], {}
  for i, trial in enumerate(trials):
    parts = [f"{short[k]}={_UNSAFE.sub('_', format_value(trial[k]))}" for k in name_keys
             if k in trial]
    name = ",".join(parts)[:200] or "base"
    if name in seen:
      raise SweepError(f"{source}: trials {seen[name]} and {i} are both named {name!r}; make "
                       f"their overrides differ or list the keys that do in `name_keys`.")
    seen[name] = i
    named.append(Trial(name, tuple(trial.items())))
  return named


def _resolve_base(base: Any, source: str, root: str) -> str:
  if not isinstance(base, str) or not base:
    raise SweepError(f"{source}: base: expected 'configs/<experiment>.py[:preset]', got {base!r}.")
  path, colon, preset = base.partition(":")
  for candidate in (path, os.path.join(root, path)):
    if os.path.isfile(candidate):
      return os.path.abspath(candidate) + colon + preset
  raise SweepError(f"{source}: base: no config file {path!r} (looked in the current directory "
                   f"and in {root}).")


def load_sweep(path: str, root: str) -> Sweep:
  """Reads a sweep file (`get_config()` -> ConfigDict) and expands it; `root`: the repository
  whose launch/train.py runs the trials (relative base configs are looked up there too)."""
  if not os.path.isfile(path):
    raise SweepError(f"{path}: no such sweep file.")
  module_spec = importlib.util.spec_from_file_location(
      "sweep_" + _UNSAFE.sub("_", os.path.basename(path)[:-3]), path)
  module = importlib.util.module_from_spec(module_spec)
  sys.path.insert(0, root)     # sweep files may import configs.* like run configs do
  try:
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
      raise SweepError(f"{path}: no get_config() function; a sweep file defines get_config() "
                       f"returning a ConfigDict with `base` and `trials`, `grid` or `random`.")
    config = module.get_config()
  except SweepError:
    raise
  except Exception as error:  # noqa: BLE001 - whatever the user's sweep file raises
    hint = (" (ConfigDict keys cannot hold dots: nest dicts, {'train': {'num_steps': 8}})"
            if "dots in field names" in str(error) else "")
    raise SweepError(f"{path}: {type(error).__name__}: {error}{hint}") from error
  finally:
    sys.path.remove(root)
  spec = config.to_dict() if hasattr(config, "to_dict") else config
  if not isinstance(spec, dict):
    raise SweepError(f"{path}: get_config() returned {type(config).__name__}; expected a "
                     f"ConfigDict.")
  unknown = sorted(set(spec) - set(SWEEP_FIELDS))
  if unknown:
    raise SweepError(f"{path}: unknown field(s) {unknown}; a sweep has {list(SWEEP_FIELDS)}.")
  trials = name_trials(expand(spec, path), path, spec.get("name_keys"))
  return Sweep(path, _resolve_base(spec.get("base"), path, root), tuple(trials),
               spec.get("metric") or DEFAULT_METRIC)


# ---------------------------------------------------------------- running

def trial_command(sweep: Sweep, trial: Trial, workdir: str, train_script: str) -> list[str]:
  return [sys.executable, train_script, f"--config={sweep.base}",
          f"--workdir={os.path.join(os.path.abspath(workdir), trial.name)}", *trial.flags()]


def run_trial(command: list[str], log_path: str, cwd: str) -> int:
  """Runs one trial's command, its output appended to log_path after a dated header line;
  returns the exit status. Module-level, so that submitit can pickle it for a cluster job."""
  with open(log_path, "a") as log:
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} launch: {shlex.join(command)}\n")
    log.flush()
    return subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT).returncode


def log_tail(log_path: str, lines: int = TAIL_LINES) -> str:
  try:
    with open(log_path, errors="replace") as f:
      return "".join(f.readlines()[-lines:])
  except OSError as error:
    return f"(no log: {error})"


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
  """submitit.AutoExecutor settings; cluster="local" runs the same path with LocalExecutor."""
  cluster: str = "slurm"
  partition: str | None = None
  timeout_min: int = 24 * 60
  gpus_per_node: int | None = None
  cpus_per_task: int | None = None
  mem_gb: int | None = None


def _run_local(jobs: list[tuple], parallel: int, report: Callable) -> dict[str, int]:
  codes = {}
  with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    futures = {pool.submit(run_trial, *args): name for name, args in jobs}
    for future in concurrent.futures.as_completed(futures):
      try:
        codes[futures[future]] = future.result()
      except OSError as error:   # could not write the log or start the process
        print(f"{futures[future]}: could not run: {error}", flush=True)
        codes[futures[future]] = -1
      report(futures[future], codes[futures[future]])
  return codes


def _run_submitit(jobs: list[tuple], workdir: str, parallel: int, options: SlurmOptions,
                  report: Callable) -> dict[str, int]:
  import submitit   # the `sweep` extra
  executor = submitit.AutoExecutor(folder=os.path.join(workdir, "submitit"),
                                   cluster=options.cluster)
  executor.update_parameters(
      name="sweep", timeout_min=options.timeout_min, gpus_per_node=options.gpus_per_node,
      cpus_per_task=options.cpus_per_task, mem_gb=options.mem_gb,
      slurm_partition=options.partition, slurm_array_parallelism=max(1, parallel))
  names = [name for name, _ in jobs]
  submitted = executor.map_array(run_trial, *zip(*(args for _, args in jobs)))
  codes = {}
  for name, job in zip(names, submitted):
    try:
      codes[name] = job.result()
    except Exception as error:  # noqa: BLE001 - the job itself died (killed, timed out, ...)
      print(f"{name}: submitit job {job.job_id} failed: {error}", flush=True)
      codes[name] = -1
    report(name, codes[name])
  return codes


def run_sweep(sweep: Sweep, workdir: str, train_script: str, executor: str = "local",
              parallel: int = 1, slurm: SlurmOptions = SlurmOptions()) -> dict[str, int]:
  """Runs every unfinished trial; returns {trial name: exit status} of those it ran. A failed
  trial is printed with its log's last lines and does not stop the others."""
  if executor not in EXECUTORS:
    raise SweepError(f"{sweep.path}: unknown executor {executor!r}; use one of {EXECUTORS} "
                     f"(or --dry_run to print the commands for another scheduler).")
  os.makedirs(workdir, exist_ok=True)
  cwd = os.path.dirname(os.path.dirname(os.path.abspath(train_script)))
  jobs = []
  for trial in sweep.trials:
    if finished(os.path.join(workdir, trial.name)):
      print(f"{trial.name}: finished, skipped", flush=True)
      continue
    command = trial_command(sweep, trial, workdir, train_script)
    print("+", shlex.join(command[1:]), flush=True)
    jobs.append((trial.name, (command, os.path.join(workdir, f"{trial.name}.log"), cwd)))

  def report(name: str, code: int) -> None:
    log = os.path.join(workdir, f"{name}.log")
    if code == 0:
      print(f"{name}: done", flush=True)
    else:
      print(f"{name}: FAILED (exit {code}); last lines of {log}:\n{log_tail(log)}", flush=True)

  if not jobs:
    return {}
  if executor == "local":
    return _run_local(jobs, parallel, report)
  return _run_submitit(jobs, workdir, parallel, slurm, report)
