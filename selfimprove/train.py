"""The trainer: the only code in the loop that touches the outside world.

`train` reads top to bottom in five sections: build the run (selfimprove/run.py),
initialise or restore the state, compile the guarded step, the loop (metrics,
evaluation, checkpoints, preemption, the stop rule), finish (export, plots). It
never knows an algorithm's loss: that is the pipeline's `step`.

    python launch/train.py --config=configs/sft_arithmetic.py:tiny --workdir=/tmp/sft
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from selfimprove import metrics as metrics_lib
from selfimprove import run_identity, run_setup, sharding
from selfimprove.checkpoint import Checkpointer, abstract_like
from selfimprove.config_checks import ConfigError, validate_config
from selfimprove.evaluation import device_batch, evaluate
from selfimprove.models.orbax_params import (load_orbax_params, read_orbax_metadata,
                                             save_orbax_params)
from selfimprove import preemption
from selfimprove.preemption import Preemption, any_process
from selfimprove.progress import ProgressBar
from selfimprove.run import Run, build_run
from selfimprove.run_tokenizer import save_tokenizer
from selfimprove.train_state import TrainState, step_key
from selfimprove.verifiers import HostVerifierError

STOP_MARKER = "stopped_early.json"


def overlay(params: dict, saved: dict, source: str) -> dict:
  """`params` with every entry of `saved` put in its place (same shapes required)."""
  out = dict(params)
  for key, value in saved.items():
    if key not in params:
      raise ValueError(f"{source}: saved parameter {key!r} does not exist in this run's model.")
    if isinstance(value, dict):
      out[key] = overlay(params[key], value, source)
    elif value.shape != params[key].shape:
      raise ValueError(f"{source}: saved parameter {key!r} has shape {value.shape}, this run's "
                       f"model expects {params[key].shape}.")
    else:
      out[key] = value
  return out


def warn_if_recompiled(jitted: Any, name: str, step: int) -> bool:
  """Logs a warning (and returns True) if `jitted` has compiled more than once."""
  if jitted._cache_size() <= 1:
    return False
  logging.warning("The %s recompiled by step %d: some input changed shape, dtype or sharding. "
                  "Shapes must be static; each recompilation costs a full compile.", name, step)
  return True


def raise_if_verifier_failed(verifier: Any) -> None:
  """Stops the run (on every process) once a host verifier has raised (see verifiers.py)."""
  failure = verifier.failure()
  if any_process(failure is not None):
    raise HostVerifierError(failure or "The host verifier raised on another process; its log "
                                       "names the function and the example.")


# -- 2. initialise or restore -------------------------------------------------------------------

def check_relaunch(run: Run, checkpointer: Checkpointer) -> None:
  """Refuses (ConfigError, one line) a relaunch that changes what defines the saved run."""
  newest = checkpointer.newest_data()
  if newest is None or "run" not in newest[1]:
    return   # a fresh workdir, or a checkpoint from before runs recorded their identity
  step, data_state = newest
  changed = run_identity.differences(data_state["run"], run.identity)
  if changed:
    raise ConfigError(run_identity.refusal(checkpointer.directory, step, changed))


def init_or_restore(run: Run, checkpointer: Checkpointer) -> tuple[TrainState, int, bool]:
  """(state, start step, resumed?).

  Resume order: the newest finalised checkpoint in the workdir that restores wins
  (params, optimizer, RNG key, pipeline extras and the data iterator's position,
  all as saved; a broken newer one is skipped with a warning and moved aside);
  otherwise `init_from`'s parameters over fresh ones from the seed (e.g. fresh
  LoRA adapters on an imported base); otherwise fresh ones.
  """
  config, shardings = run.config, run.state_shardings
  restored = checkpointer.restore_newest(abstract_like(run.abstract_state, shardings))
  if restored is not None:
    start_step, state, data_state = restored
    # Logged as a warning so it shows at the launcher's default (quiet) verbosity.
    logging.warning("Resuming from checkpoint at step %d in %s", start_step, checkpointer.directory)
    run.iterator.set_state(data_state["iterator"])
    return state, start_step, True
  if config.init_from:
    logging.warning("Starting from the model saved in %s", config.init_from)
    _, _, loaded = load_orbax_params(config.init_from, run.mesh, run.rules)
    start_from = lambda saved: run.state_from(overlay(run.fresh_params(), saved, config.init_from))
    return jax.jit(start_from, out_shardings=shardings)(nnx.to_pure_dict(loaded)), 0, False
  return jax.jit(lambda: run.state_from(run.fresh_params()), out_shardings=shardings)(), 0, False


# -- 3. the guarded, compiled step ---------------------------------------------------------------

def compile_steps(run: Run):
  """(steps_fn, eval_fn), jitted once. steps_fn runs `steps_per_call` pipeline steps under one
  `lax.scan`; an update with a non-finite loss or gradient norm is skipped (the state is kept)."""

  def one_step(state: TrainState, batch):
    new_state, step_metrics = run.pipeline.step(state, batch, step_key(state))
    finite = jnp.isfinite(step_metrics["train/loss"]) & jnp.isfinite(step_metrics["train/grad_norm"])
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    kept = kept._replace(
        step=state.step + 1,
        skipped_updates=state.skipped_updates + (~finite).astype(jnp.int32),
        consecutive_skips=jnp.where(finite, 0, state.consecutive_skips + 1))
    return kept, dict(step_metrics, **{"train/skipped_updates": kept.skipped_updates})

  replicated = sharding.replicated(run.mesh)
  steps_fn = jax.jit(lambda state, batches: jax.lax.scan(one_step, state, batches),
                     out_shardings=(run.state_shardings, replicated), donate_argnums=0)
  eval_fn = jax.jit(run.pipeline.evaluate, out_shardings=replicated)
  return steps_fn, eval_fn


# -- 4. the loop ---------------------------------------------------------------------------------

@dataclasses.dataclass
class LoopResult:
  state: TrainState
  step: int
  last_eval: dict[str, float]
  stopped_early: bool
  preempted: bool


def _stop_rule_met(train_config: ml_collections.ConfigDict, call_metrics: dict) -> bool:
  """config.train.stop_metric's mean over the steps of one call reached stop_threshold."""
  name = train_config.get("stop_metric", "")
  if not name:
    return False
  if name not in call_metrics:
    raise ConfigError(f"config.train.stop_metric={name!r} is not a training metric of this "
                      f"pipeline; it logs {sorted(k for k in call_metrics if k != 'perf/tokens')}.")
  return bool(np.mean(call_metrics[name]) >= train_config.stop_threshold)


def train_loop(run: Run, state: TrainState, start_step: int, resumed: bool,
               checkpointer: Checkpointer, workdir: str) -> LoopResult:
  """Steps until num_steps, the stop rule or preemption; logs, evaluates and checkpoints."""
  config, train_config = run.config, run.config.train
  steps_fn, eval_fn = compile_steps(run)
  eval_rng = jax.random.key(config.seed + 1)
  run_eval = lambda params: evaluate(eval_fn, run.pipeline, params, run.eval_batches, run.mesh,
                                     run.rules, eval_rng)
  num_steps, steps_per_call = train_config.num_steps, train_config.steps_per_call
  # A fresh start (-1) clears every record an earlier, uncheckpointed attempt left, step 0 included.
  writer = metrics_lib.MetricsWriter(workdir, resume_step=start_step if resumed else -1)
  shown = getattr(run.pipeline, "eval_summary_names", run.pipeline.eval_metric_names)
  progress = ProgressBar(num_steps, initial_step=start_step,
                         keys=("train/loss",) + tuple(f"eval/{n}" for n in shown))
  stop_marker = os.path.join(workdir, STOP_MARKER)
  # A run that met its stop rule is finished: relaunching it only re-exports and summarises.
  stopped_early = resumed and os.path.exists(stop_marker)
  if not resumed and os.path.exists(stop_marker) and jax.process_index() == 0:
    os.remove(stop_marker)   # left by an earlier attempt at this workdir
  last_eval: dict[str, float] = {}
  step, warned_recompile, preempted = start_step, False, False
  interval_start, interval_tokens, interval_steps = time.perf_counter(), 0.0, 0
  with jax.set_mesh(run.mesh), Preemption() as sigterm:
    if not resumed and train_config.get("eval_at_start", False):
      # The starting model's figures (step 0), e.g. the warm start before SCoRe.
      last_eval = run_eval(state.params)
      raise_if_verifier_failed(run.verifier)
      writer.write(0, dict(last_eval))
    while step < num_steps and not stopped_early:
      batches = _stack_batches([next(run.iterator) for _ in range(steps_per_call)])
      state, call_metrics = steps_fn(state, device_batch(batches, run.mesh, run.rules, 1))
      step += steps_per_call
      call_metrics = jax.device_get(call_metrics)
      raise_if_verifier_failed(run.verifier)
      warned_recompile = warned_recompile or warn_if_recompiled(steps_fn, "training step", step)
      interval_tokens += float(np.sum(call_metrics["perf/tokens"]))
      interval_steps += steps_per_call
      consecutive = int(jax.device_get(state.consecutive_skips))
      if consecutive >= train_config.max_consecutive_skips:
        last = checkpointer.latest_step()
        kept = (f"The last checkpoint (step {last}) in {checkpointer.directory} is intact."
                if last is not None else "No checkpoint had been saved yet.")
        raise FloatingPointError(
            f"{consecutive} consecutive steps up to step {step} had a non-finite loss or gradient "
            f"norm; their updates were skipped. Stopping (config.train.max_consecutive_skips="
            f"{train_config.max_consecutive_skips}). {kept}")

      stopped_early = _stop_rule_met(train_config, call_metrics)
      final = step == num_steps or stopped_early
      evaluate_now = step % train_config.eval_every == 0 or final
      if evaluate_now:
        last_eval = run_eval(state.params)
        raise_if_verifier_failed(run.verifier)
      if step % train_config.log_every == 0 or final:
        elapsed = time.perf_counter() - interval_start
        rates = {"perf/steps_per_sec": interval_steps / elapsed,
                 "perf/tokens_per_sec": interval_tokens / elapsed}
        _write_call_rows(writer, run, call_metrics, step, rates,
                         last_eval if evaluate_now else {})
        interval_start, interval_tokens, interval_steps = time.perf_counter(), 0.0, 0
      elif evaluate_now:
        writer.write(step, dict(last_eval))
      progress.update(step, {k: float(v[-1]) for k, v in call_metrics.items()} | last_eval)

      preempted = sigterm.any_process_requested()
      if step % train_config.checkpoint_every == 0 or final or preempted:
        checkpointer.save(step, state, {"iterator": run.iterator.get_state(), "run": run.identity})
      if preempted:
        logging.warning("Preempted: checkpoint at step %d saved; exiting.", step)
        break
      if stopped_early:
        checkpointer.wait()
        if jax.process_index() == 0:
          with open(stop_marker, "w") as f:
            json.dump({"step": step, "metric": train_config.stop_metric,
                       "threshold": train_config.stop_threshold}, f)
        logging.warning("Stopping at step %d of %d: %s reached %s (config.train.stop_metric).",
                        step, num_steps, train_config.stop_metric, train_config.stop_threshold)
  progress.close()
  writer.close()
  return LoopResult(state, step, last_eval, stopped_early, preempted)


def _write_call_rows(writer: metrics_lib.MetricsWriter, run: Run, call_metrics: dict, step: int,
                     rates: dict[str, float], eval_row: dict[str, float]) -> None:
  """metrics.jsonl rows for the steps of one call that fall on log_every (and its last step)."""
  steps_per_call = run.config.train.steps_per_call
  for i in range(steps_per_call):
    s = step - steps_per_call + i + 1
    if s % run.config.train.log_every and s != step:
      continue
    row = {k: float(v[i]) for k, v in call_metrics.items() if k != "perf/tokens"}
    row["train/learning_rate"] = float(run.schedule(max(s - 1, 0) // run.grad_accum_steps))
    writer.write(s, row | rates | (eval_row if s == step else {}))


def _stack_batches(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """steps_per_call batches -> one dict of [steps_per_call, batch, ...] arrays for the scan."""
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


# -- 5. finish -----------------------------------------------------------------------------------

def finish(run: Run, result: LoopResult, workdir: str) -> dict[str, Any]:
  """Exports the trained model (DIR/params, with its tokenizer) and writes the plots and summary."""
  if result.step >= run.config.train.num_steps or result.stopped_early:
    # The trained model, in the format `init_from` and launch/convert.py read; the source HF
    # config (if any) travels along so that the export reproduces the family and token ids.
    params_dir = os.path.join(workdir, "params")
    metadata = {}
    if run.config.init_from:
      metadata = {k: v for k, v in read_orbax_metadata(run.config.init_from).items()
                  if k != "transformer_config"}
    save_orbax_params(params_dir, run.model_config,
                      nnx.state(nnx.merge(run.graphdef, result.state.params)), metadata=metadata)
    if jax.process_index() == 0:
      save_tokenizer(run.tokenizer, params_dir)
  flags = run_flags(run.pipeline, workdir)
  if jax.process_index() == 0:
    # Plots and the summary only warn when they fail: the trained model is already saved.
    plot_path = metrics_lib.plot_metrics(workdir)
    print(metrics_lib.summarize(workdir))
    for name, message in flags.items():
      print(f"  FLAG {name}: {message}")
    if plot_path:
      print(f"curves: {plot_path}")
    if result.last_eval:
      # The pipeline's eval figures alone, e.g. SCoRe's Acc@t1, Acc@t2 and deltas over training.
      eval_plot = metrics_lib.plot_metrics(workdir, keys=list(result.last_eval),
                                           filename="eval_curves.png")
      if eval_plot:
        print(f"eval curves: {eval_plot}")
  return {"step": result.step, **result.last_eval,
          **({"preempted": True} if result.preempted else {}),
          **({"flags": flags} if flags else {})}


def run_flags(pipeline: Any, workdir: str) -> dict[str, str]:
  """The pipeline's flags on the whole run (`run_flags(records)`, e.g. RL's reward hacking)
  from metrics.jsonl, written to DIR/flags.json when there are any ({} if it has none)."""
  flag = getattr(pipeline, "run_flags", None)
  if flag is None:
    return {}
  try:
    flags = flag(metrics_lib.read_metrics(workdir))
  except (OSError, ValueError) as error:   # a summary, not worth a failed run
    logging.warning("run flags: could not read %s: %s", workdir, error)
    return {}
  path = os.path.join(workdir, "flags.json")
  if jax.process_index() == 0:
    if flags:
      with open(path, "w") as f:
        json.dump(flags, f, indent=1)
    elif os.path.exists(path):   # an earlier finish's flags no longer hold
      os.remove(path)
  return flags


def _prepare_workdir(workdir: str) -> None:
  """Creates the workdir, or says in one line why it cannot be used."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir!r} is a file, not a directory.")
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{jax.process_index()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as error:
    raise ConfigError(f"--workdir={workdir!r} cannot be written: {error.strerror}.") from None


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run described by `config` in `workdir`; returns the final metrics."""
  validate_config(config)
  _prepare_workdir(workdir)
  run = build_run(config)                                                 # 1. build
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
                              async_save=config.train.async_checkpoints)
  try:
    check_relaunch(run, checkpointer)   # before anything is written or restored
    if jax.process_index() == 0:
      run_identity.write_launch_config(workdir, config)   # config.json, then config.<n>.json
    state, start_step, resumed = init_or_restore(run, checkpointer)      # 2. init or restore
    result = train_loop(run, state, start_step, resumed, checkpointer, workdir)   # 3. + 4.
  finally:
    checkpointer.close()   # waits for an in-flight save to finish; its threads never outlive us
  return finish(run, result, workdir)                                     # 5. finish


def train_with_warm_start(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`train`, first training `config.warm_start` (a whole run config) when the config has one.

  The warm-start run lives in workdir/warm_start and the main run starts from
  its exported parameters (`init_from`), e.g. SFT then SCoRe in one command. A warm
  start may have its own (workdir/warm_start/warm_start: SFT, then judge training, then
  self-judged RL).
  Relaunching resumes whichever stage was interrupted; a finished warm start
  (its params exist) is not run again. An explicit `config.init_from` skips it.
  """
  if config.get("warm_start") is None or config.init_from:
    return train(config, workdir)
  if config.warm_start.task.to_dict() != config.task.to_dict():
    raise ConfigError(
        f"config.warm_start.task ({config.warm_start.task.to_dict()}) differs from config.task "
        f"({config.task.to_dict()}): the warm start must train on the same task and held-out split; "
        f"override both (e.g. --config.task.split_seed=1 --config.warm_start.task.split_seed=1).")
  run_setup.check_warm_start(config)
  warm_dir = os.path.join(workdir, "warm_start")
  warm_params = os.path.join(warm_dir, "params")
  if not os.path.exists(os.path.join(warm_params, "model_config.json")):
    logging.warning("Warm start: training %s first", warm_dir)
    warm = train_with_warm_start(config.warm_start, warm_dir)   # it may have its own
    if warm.get("preempted"):   # checkpointed: the same command resumes the warm start
      return warm
  if any_process(preemption.requested()):   # SIGTERM as the warm start ended: main stage later
    return {"step": 0, "preempted": True}
  config = ml_collections.ConfigDict(config.to_dict())   # an unlocked copy
  config.init_from = warm_params
  return train(config, workdir)
