"""Optimizer and learning-rate schedule from a typed config (optax)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax

SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW with warm-up, decay, global-norm clipping and optional gradient accumulation.

  Attributes:
    learning_rate: peak learning rate, reached after `warmup_steps`.
    warmup_steps: linear warm-up from 0.
    decay: "constant", "cosine" or "linear" decay after warm-up, to
      `learning_rate * end_learning_rate_factor` at the last step.
    end_learning_rate_factor: final learning rate as a fraction of the peak.
    weight_decay: decoupled (AdamW) weight decay.
    b1, b2, eps: Adam moments and epsilon.
    grad_clip_norm: clip gradients to this global norm (0: off).
    grad_accum_steps: average gradients over this many steps before one
      update (optax.MultiSteps); the schedule then counts updates, not steps.
    schedule_steps: length of the learning-rate schedule in training steps;
      -1 means the run's `num_steps`. Set it to run a schedule in several legs
      (each launched with a smaller num_steps) exactly as one run would.
  """

  learning_rate: float = 3e-4
  warmup_steps: int = 0
  decay: str = "cosine"
  end_learning_rate_factor: float = 0.1
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip_norm: float = 1.0
  grad_accum_steps: int = 1
  schedule_steps: int = -1

  def __post_init__(self):
    if self.decay not in SCHEDULES:
      raise ValueError(f"optimizer.decay must be one of {SCHEDULES}, got {self.decay!r}.")
    if self.learning_rate <= 0:
      raise ValueError(f"optimizer.learning_rate must be > 0, got {self.learning_rate}.")
    if self.warmup_steps < 0:
      raise ValueError(f"optimizer.warmup_steps must be >= 0, got {self.warmup_steps}.")
    if self.grad_accum_steps < 1:
      raise ValueError(f"optimizer.grad_accum_steps must be >= 1, got {self.grad_accum_steps}.")


def make_schedule(config: OptimizerConfig, num_steps: int) -> optax.Schedule:
  """Learning rate per optimizer update for a run of `num_steps` training steps."""
  if config.schedule_steps > 0:
    num_steps = config.schedule_steps
  num_updates = max(num_steps // config.grad_accum_steps, 1)
  warmup = min(config.warmup_steps, num_updates)
  end_value = config.learning_rate * config.end_learning_rate_factor
  decay_steps = max(num_updates - warmup, 1)
  if config.decay == "constant":
    decay = optax.constant_schedule(config.learning_rate)
  elif config.decay == "cosine":
    decay = optax.cosine_decay_schedule(config.learning_rate, decay_steps,
                                        alpha=config.end_learning_rate_factor)
  else:
    decay = optax.linear_schedule(config.learning_rate, end_value, decay_steps)
  if not warmup:
    return decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, config.learning_rate, warmup), decay], [warmup])


def train_only(optimizer: optax.GradientTransformation, params: Any,
               is_trainable: Callable[[tuple[str, ...]], bool]) -> optax.GradientTransformation:
  """`optimizer` on the parameters whose path is trainable; zero updates (and no optimizer
  state) for the rest, e.g. a frozen base model under LoRA adapters.

  `params` is the (abstract) parameter tree, used only for its structure.
  """
  def label(path, _):
    keys = tuple(str(getattr(k, "key", k)) for k in path)
    return "trainable" if is_trainable(keys) else "frozen"

  labels = jax.tree_util.tree_map_with_path(label, params)
  return optax.multi_transform({"trainable": optimizer, "frozen": optax.set_to_zero()}, labels)


def make_optimizer(config: OptimizerConfig, num_steps: int) -> optax.GradientTransformation:
  schedule = make_schedule(config, num_steps)
  chain = []
  if config.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  chain.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay))
  optimizer = optax.chain(*chain)
  if config.grad_accum_steps > 1:
    optimizer = optax.MultiSteps(optimizer, every_k_schedule=config.grad_accum_steps)
  return optimizer
