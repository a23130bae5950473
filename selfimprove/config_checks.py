"""Start-up checks of a run config: fail before any compilation, naming the field."""

from __future__ import annotations

import os

import jax
import ml_collections


class ConfigError(ValueError):
  """A run config that cannot work; the message names the field and what is expected."""


class DataError(ConfigError):
  """Data that cannot be used; the message names the file and line (or split and index)."""


def _data_parallel_size(config: ml_collections.ConfigDict, num_devices: int) -> int:
  mesh = config.mesh
  sizes = {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}
  fixed = 1
  for name, size in sizes.items():
    if size == 0 or size < -1:
      raise ConfigError(f"config.mesh.{name}={size}: expected a positive size or -1 (the rest).")
    if size > 0:
      fixed *= size
  if num_devices % fixed:
    raise ConfigError(
        f"config.mesh ({sizes}) does not fit {num_devices} devices: the fixed axes' product "
        f"{fixed} must divide the device count.")
  if list(sizes.values()).count(-1) > 1:
    raise ConfigError(f"config.mesh ({sizes}): at most one axis may be -1.")
  rest = num_devices // fixed
  resolved = {name: (rest if size == -1 else size) for name, size in sizes.items()}
  if resolved["data"] * resolved["fsdp"] * resolved["tensor"] != num_devices:
    raise ConfigError(f"config.mesh ({sizes}) uses {fixed} devices but {num_devices} are "
                      f"available: set one axis to -1 or set config.mesh.num_devices.")
  return resolved["data"] * resolved["fsdp"]


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for contradictory or impossible settings."""
  from selfimprove.pipelines import pipeline_names   # the registries; importing them is heavy
  from selfimprove.tasks import task_names

  if config.pipeline not in pipeline_names():
    raise ConfigError(f"config.pipeline={config.pipeline!r}: expected one of {pipeline_names()} "
                      f"(register your own with selfimprove.pipelines.register_pipeline).")
  if config.task.name not in task_names():
    raise ConfigError(f"config.task.name={config.task.name!r}: expected one of {task_names()} "
                      f"(register your own with selfimprove.tasks.register_task).")
  train = config.train
  for field in ("num_steps", "global_batch_size", "steps_per_call", "log_every", "eval_every",
                "checkpoint_every", "keep_checkpoints", "max_consecutive_skips"):
    if getattr(train, field) < 1:
      raise ConfigError(f"config.train.{field}={getattr(train, field)}: expected a positive integer.")
  for field in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
    if getattr(train, field) % train.steps_per_call:
      raise ConfigError(
          f"config.train.{field}={getattr(train, field)} must be a multiple of "
          f"config.train.steps_per_call={train.steps_per_call} (steps run in groups of that size).")
  num_devices = jax.device_count()
  if config.mesh.num_devices > 0:
    if config.mesh.num_devices > num_devices:
      raise ConfigError(f"config.mesh.num_devices={config.mesh.num_devices}: only {num_devices} "
                        f"devices are available.")
    num_devices = config.mesh.num_devices
  data_parallel = _data_parallel_size(config, num_devices)
  for field, value in (("config.train.global_batch_size", train.global_batch_size),
                       ("config.eval.batch_size", config.eval.batch_size)):
    if value % data_parallel:
      raise ConfigError(
          f"{field}={value} must be divisible by the data-parallel size {data_parallel} "
          f"(mesh data x fsdp on {num_devices} devices).")
    if value % jax.process_count():
      raise ConfigError(f"{field}={value} must be divisible by the number of processes "
                        f"{jax.process_count()}.")
  if config.init_from and not os.path.exists(os.path.join(config.init_from, "model_config.json")):
    raise ConfigError(
        f"config.init_from={config.init_from!r}: not a saved model (no model_config.json); "
        f"expected a finished run's DIR/params or launch/convert.py output.")
  _check_typed_sections(config)
  for field in ("max_prompt_len", "max_answer_len"):
    if config.data[field] < 0:
      raise ConfigError(f"config.data.{field}={config.data[field]}: expected >= 0 "
                        f"(0 = the longest in the data).")


def _check_typed_sections(config: ml_collections.ConfigDict) -> None:
  """The optimizer and model sections build their typed configs (their checks name the field)."""
  from selfimprove.models import TransformerConfig
  from selfimprove.optim import OptimizerConfig

  try:
    OptimizerConfig(**config.optimizer)
  except (TypeError, ValueError) as error:
    message = str(error)
    raise ConfigError(f"config.{message}" if message.startswith("optimizer.") else
                      f"config.optimizer: {message}") from None
  if not config.init_from:   # else the saved model's architecture applies (checked when read)
    try:
      TransformerConfig(**config.model.to_dict())
    except (TypeError, ValueError) as error:
      raise ConfigError(f"config.model: {error}") from None
