"""What the trainer needs from a pipeline (one algorithm = one pipeline file)."""

from __future__ import annotations

from typing import Any, Protocol

import jax

from selfimprove.train_state import TrainState


class Pipeline(Protocol):
  """An algorithm, as the trainer sees it.

  `step` and `evaluate` are pure functions of arrays; the trainer jits them
  (with shardings and donation), scans `step` for `steps_per_call`, advances
  `state.step`, and skips updates whose `train/loss` or `train/grad_norm` is
  not finite. Pipelines never write files or print.
  """

  # Names of the per-example values `evaluate` returns; logged as eval/<name>.
  eval_metric_names: tuple[str, ...]

  def init_extra(self, params: dict) -> Any:
    """Pipeline state beyond params/optimizer (e.g. a frozen reference policy); {} if none."""
    ...

  def step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
           ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One training step. Metrics must include scalar `train/loss`,
    `train/grad_norm` and `perf/tokens` (tokens processed, for throughput)."""
    ...

  def evaluate(self, params: dict, batch: dict[str, jax.Array], rng: jax.Array
               ) -> dict[str, jax.Array]:
    """Per-example eval values [batch] for each name in `eval_metric_names`."""
    ...
