"""The trainer: the only code in the loop that touches the outside world.

It builds the mesh, restores or initialises the state, feeds batches, calls the
pipeline's compiled step (`steps_per_call` steps under one `lax.scan`), writes
metrics, evaluates, checkpoints and handles preemption. It never knows an
algorithm's loss: that is the pipeline's `step`.

    python launch/train.py --config=configs/sft_arithmetic.py:tiny --workdir=/tmp/sft
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from selfimprove import data as data_lib
from selfimprove import metrics as metrics_lib
from selfimprove import sharding
from selfimprove.checkpoint import Checkpointer, abstract_like
from selfimprove.config_checks import ConfigError, validate_config
from selfimprove.models import Transformer
from selfimprove.models.orbax_params import load_orbax_params, save_orbax_params
from selfimprove.optim import OptimizerConfig, make_optimizer, make_schedule, train_only
from selfimprove.pipelines.base import Pipeline
from selfimprove.run_setup import (build_model_config, build_pipeline, build_task, load_records,
                                   train_encoder)
from selfimprove.train_state import TrainState, step_key

# Test-only: after finalising the checkpoint of this step, print a marker and
# sleep until killed (lets a test SIGKILL the process at a known point).
_PAUSE_ENV = "SELFIMPROVE_TEST_PAUSE_AFTER_CHECKPOINT"


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each compiled call."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no signal handling
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: finishing the current step, then checkpointing.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def any_process_requested(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.array(self.requested))
    return bool(np.any(flags))


def _state_shardings(abstract_state: TrainState, param_shardings: dict, pipeline: Pipeline,
                     optimizer: optax.GradientTransformation, mesh) -> TrainState:
  replicated = sharding.replicated(mesh)
  # Optimizer state that mirrors the params (Adam moments) is sharded like them; a frozen
  # parameter's slot (optax.MaskedNode, no arrays) stays as it is; the rest is replicated.
  masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
  opt_shardings = optax.tree_map_params(
      optimizer, lambda leaf, s: leaf if masked(leaf) else s, abstract_state.opt_state,
      param_shardings, transform_non_params=lambda _: replicated, is_leaf=masked)
  extra_fn = getattr(pipeline, "extra_shardings", None)
  extra = extra_fn(param_shardings) if extra_fn else jax.tree.map(lambda _: replicated,
                                                                   abstract_state.extra)
  return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                    rng=replicated, extra=extra, skipped_updates=replicated,
                    consecutive_skips=replicated)


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


def _stack_batches(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def _device_batch(batch: dict[str, np.ndarray], mesh, rules, leading_dims: int) -> dict[str, jax.Array]:
  """Global arrays from this process's rows; the batch axis follows `leading_dims` axes."""
  batch_axes = sharding.logical_to_spec(("batch",), rules, mesh.axis_names)[0]

  def put(x):
    spec = PartitionSpec(*([None] * leading_dims), batch_axes, *([None] * (x.ndim - leading_dims - 1)))
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x)

  return jax.tree.map(put, batch)


def evaluate(eval_fn, params, batches, mesh, rules, rng, names) -> dict[str, float]:
  """Means over the real (non-padding) rows of fixed eval batches."""
  totals = {name: 0.0 for name in names}
  count = 0
  process, processes = jax.process_index(), jax.process_count()
  for batch in batches:
    valid = batch["valid"]
    rows = len(valid) // processes
    local = {k: v[process * rows:(process + 1) * rows] for k, v in batch.items() if k != "valid"}
    # eval_fn's outputs are replicated, so every process reads the whole batch's values.
    values = jax.device_get(eval_fn(params, _device_batch(local, mesh, rules, 0), rng))
    for name in names:
      totals[name] += float(np.sum(np.asarray(values[name])[valid]))
    count += int(valid.sum())
  return {f"eval/{name}": totals[name] / max(count, 1) for name in names}


def _stop_rule_met(train_config: ml_collections.ConfigDict, call_metrics: dict) -> bool:
  """config.train.stop_metric's mean over the steps of one call reached stop_threshold."""
  name = train_config.get("stop_metric", "")
  if not name:
    return False
  if name not in call_metrics:
    raise ConfigError(f"config.train.stop_metric={name!r} is not a training metric of this "
                      f"pipeline; it logs {sorted(k for k in call_metrics if k != 'perf/tokens')}.")
  return bool(np.mean(call_metrics[name]) >= train_config.stop_threshold)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the run described by `config` in `workdir`; returns the final metrics."""
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  devices = jax.devices()
  if config.mesh.num_devices > 0:
    devices = devices[:config.mesh.num_devices]
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
  model_config = build_model_config(config)
  rules = model_config.sharding_rules
  task = build_task(config, model_config)
  num_steps = config.train.num_steps
  optimizer_config = OptimizerConfig(**config.optimizer)
  abstract_model = nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract_model)
  param_shardings = nnx.to_pure_dict(sharding.state_shardings(abstract_params, mesh, rules))
  optimizer = make_optimizer(optimizer_config, num_steps)
  if model_config.lora_rank:
    # LoRA: only the adapters train; the base weights get no update and no optimizer state.
    optimizer = train_only(optimizer, nnx.to_pure_dict(abstract_params),
                           lambda path: path[-1].endswith(("_lora_a", "_lora_b")))
  schedule = make_schedule(optimizer_config, num_steps)
  pipeline = build_pipeline(config, graphdef, optimizer, task)

  def state_from(params: dict) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params),
                      rng=jax.random.key_data(jax.random.key(config.seed)),
                      extra=pipeline.init_extra(params),
                      skipped_updates=jnp.zeros((), jnp.int32),
                      consecutive_skips=jnp.zeros((), jnp.int32))

  def init_state() -> TrainState:
    model = Transformer(model_config, rngs=nnx.Rngs(params=config.seed))
    return state_from(nnx.to_pure_dict(nnx.state(model)))

  abstract_state = jax.eval_shape(init_state)
  state_shardings = _state_shardings(abstract_state, param_shardings, pipeline, optimizer, mesh)

  train_records, eval_records = load_records(config, task)
  iterator = data_lib.make_iterator(
      train_records, train_encoder(config, task), global_batch_size=config.train.global_batch_size,
      seed=config.seed, shuffle=config.data.shuffle)
  eval_batches = data_lib.eval_batches(eval_records, task.encode, config.eval.batch_size)

  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
                              async_save=config.train.async_checkpoints)
  start_step = checkpointer.latest_step()
  resumed = start_step is not None
  if resumed:
    # Logged as a warning so it shows at the launcher's default (quiet) verbosity.
    logging.warning("Resuming from checkpoint at step %d in %s", start_step, checkpointer.directory)
    state, data_state = checkpointer.restore(start_step, abstract_like(abstract_state, state_shardings))
    iterator.set_state(data_state["iterator"])
  elif config.init_from:
    start_step = 0
    logging.warning("Starting from the model saved in %s", config.init_from)
    _, _, loaded = load_orbax_params(config.init_from, mesh, rules)

    def start_from(loaded: dict) -> TrainState:
      # Fresh parameters (e.g. new LoRA adapters) from the seed, the saved ones over them.
      params = nnx.to_pure_dict(nnx.state(Transformer(model_config, rngs=nnx.Rngs(params=config.seed))))
      return state_from(overlay(params, loaded, config.init_from))

    state = jax.jit(start_from, out_shardings=state_shardings)(nnx.to_pure_dict(loaded))
  else:
    start_step = 0
    state = jax.jit(init_state, out_shardings=state_shardings)()

  def one_step(state: TrainState, batch):
    new_state, step_metrics = pipeline.step(state, batch, step_key(state))
    finite = jnp.isfinite(step_metrics["train/loss"]) & jnp.isfinite(step_metrics["train/grad_norm"])
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    kept = kept._replace(
        step=state.step + 1,
        skipped_updates=state.skipped_updates + (~finite).astype(jnp.int32),
        consecutive_skips=jnp.where(finite, 0, state.consecutive_skips + 1))
    return kept, dict(step_metrics, **{"train/skipped_updates": kept.skipped_updates})

  def run_steps(state: TrainState, batches):
    return jax.lax.scan(one_step, state, batches)

  steps_per_call = config.train.steps_per_call
  replicated = sharding.replicated(mesh)
  compiled_steps = jax.jit(run_steps, out_shardings=(state_shardings, replicated), donate_argnums=0)
  eval_fn = jax.jit(pipeline.evaluate, out_shardings=replicated)
  eval_rng = jax.random.key(config.seed + 1)

  # A fresh start (-1) clears every record an earlier, uncheckpointed attempt left, step 0 included.
  writer = metrics_lib.MetricsWriter(workdir, resume_step=start_step if resumed else -1)
  last_eval: dict[str, float] = {}
  if not resumed and config.train.get("eval_at_start", False):
    # The starting model's figures (step 0), e.g. the warm start before SCoRe.
    with jax.set_mesh(mesh):
      last_eval = evaluate(eval_fn, state.params, eval_batches, mesh, rules, eval_rng,
                           pipeline.eval_metric_names)
    writer.write(0, dict(last_eval))
  progress = metrics_lib.ProgressBar(num_steps, initial_step=start_step,
                                     keys=("train/loss",) + tuple(f"eval/{n}" for n in pipeline.eval_metric_names))
  pause_step = int(os.environ.get(_PAUSE_ENV, "-1"))
  step = start_step
  warned_recompile = False  # warn once per run
  # A run that met its stop rule is finished: relaunching it only re-exports and summarises.
  stop_marker = os.path.join(workdir, "stopped_early.json")
  stopped_early = resumed and os.path.exists(stop_marker)
  if not resumed and os.path.exists(stop_marker) and jax.process_index() == 0:
    os.remove(stop_marker)   # left by an earlier attempt at this workdir
  interval_start, interval_tokens, interval_steps = time.perf_counter(), 0.0, 0
  with jax.set_mesh(mesh), _Preemption() as preemption:
    while step < num_steps and not stopped_early:
      batches = _stack_batches([next(iterator) for _ in range(steps_per_call)])
      state, call_metrics = compiled_steps(state, _device_batch(batches, mesh, rules, 1))
      step += steps_per_call
      warned_recompile = warned_recompile or warn_if_recompiled(compiled_steps, "training step", step)
      call_metrics = jax.device_get(call_metrics)
      interval_tokens += float(np.sum(call_metrics["perf/tokens"]))
      interval_steps += steps_per_call
      consecutive = int(jax.device_get(state.consecutive_skips))
      if consecutive >= config.train.max_consecutive_skips:
        checkpointer.close()
        raise FloatingPointError(
            f"{consecutive} consecutive steps up to step {step} had a non-finite loss or gradient "
            f"norm; their updates were skipped. Stopping (config.train.max_consecutive_skips="
            f"{config.train.max_consecutive_skips}). The last checkpoint "
            f"(step {checkpointer.latest_step()}) in {checkpointer.directory} is intact.")

      stopped_early = stopped_early or _stop_rule_met(config.train, call_metrics)
      final = step == num_steps or stopped_early
      row: dict[str, float] = {}
      if step % config.train.log_every == 0 or final:
        elapsed = time.perf_counter() - interval_start
        for i in range(steps_per_call):
          s = step - steps_per_call + i + 1
          if s % config.train.log_every and s != step:
            continue
          row = {k: float(v[i]) for k, v in call_metrics.items() if k != "perf/tokens"}
          row["train/learning_rate"] = float(schedule(max(s - 1, 0) // optimizer_config.grad_accum_steps))
          row["perf/steps_per_sec"] = interval_steps / elapsed
          row["perf/tokens_per_sec"] = interval_tokens / elapsed
          if s == step and (step % config.train.eval_every == 0 or final):
            last_eval = evaluate(eval_fn, state.params, eval_batches, mesh, rules, eval_rng,
                                 pipeline.eval_metric_names)
            row.update(last_eval)
          writer.write(s, row)
        interval_start, interval_tokens, interval_steps = time.perf_counter(), 0.0, 0
      elif step % config.train.eval_every == 0:
        last_eval = evaluate(eval_fn, state.params, eval_batches, mesh, rules, eval_rng,
                             pipeline.eval_metric_names)
        row = dict(last_eval)
        writer.write(step, row)
      progress.update(step, {k: float(v[-1]) for k, v in call_metrics.items()} | last_eval)

      preempted = preemption.any_process_requested()
      if step % config.train.checkpoint_every == 0 or final or preempted:
        checkpointer.save(step, state, {"iterator": iterator.get_state()})
        if step == pause_step:
          checkpointer.wait()
          print(f"CHECKPOINT {step} FINALIZED", flush=True)
          while True:
            time.sleep(60)
      if preempted:
        logging.warning("Preempted: checkpoint at step %d saved; exiting.", step)
        break
      if stopped_early:
        checkpointer.wait()
        if jax.process_index() == 0:
          with open(stop_marker, "w") as f:
            json.dump({"step": step, "metric": config.train.stop_metric,
                       "threshold": config.train.stop_threshold}, f)
        logging.warning("Stopping at step %d of %d: %s reached %s (config.train.stop_metric).",
                        step, num_steps, config.train.stop_metric, config.train.stop_threshold)
        break
  checkpointer.close()
  progress.close()
  writer.close()
  if step >= num_steps or stopped_early:
    # The trained model, in the format `init_from` and launch/convert.py read.
    save_orbax_params(os.path.join(workdir, "params"), model_config,
                      nnx.state(nnx.merge(graphdef, state.params)))
  if jax.process_index() == 0:
    plot_path = metrics_lib.plot_metrics(workdir)
    print(metrics_lib.summarize(workdir))
    print(f"curves: {plot_path}")
    if last_eval:
      # The pipeline's eval figures alone, e.g. SCoRe's Acc@t1, Acc@t2 and deltas over training.
      eval_plot = metrics_lib.plot_metrics(workdir, keys=list(last_eval), filename="eval_curves.png")
      print(f"eval curves: {eval_plot}")
  return {"step": step, **last_eval}


def train_with_warm_start(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """`train`, first training `config.warm_start` (a whole run config) when the config has one.

  The warm-start run lives in workdir/warm_start and the main run starts from
  its exported parameters (`init_from`), e.g. SFT then SCoRe in one command.
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
  demo_instruction = config.warm_start.data.get("correction_instruction", "")
  if (config.warm_start.data.get("correction_demos", 0.0) and "score" in config and
      demo_instruction != config.score.correction_instruction):
    raise ConfigError(
        f"config.warm_start.data.correction_instruction={demo_instruction!r} differs from "
        f"config.score.correction_instruction={config.score.correction_instruction!r}: the warm "
        f"start's two-turn demos must use the instruction SCoRe appends.")
  warm_dir = os.path.join(workdir, "warm_start")
  warm_params = os.path.join(warm_dir, "params")
  if not os.path.exists(os.path.join(warm_params, "model_config.json")):
    logging.warning("Warm start: training %s first", warm_dir)
    train(config.warm_start, warm_dir)
  config = ml_collections.ConfigDict(config.to_dict())   # an unlocked copy
  config.init_from = warm_params
  return train(config, workdir)
