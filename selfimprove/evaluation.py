"""Evaluation: the pipeline's per-example values over fixed eval batches, then its summary."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from selfimprove import sharding
from selfimprove.pipelines.base import Pipeline, summarize_eval


def device_batch(batch: dict[str, np.ndarray], mesh, rules, leading_dims: int
                 ) -> dict[str, jax.Array]:
  """Global arrays from this process's rows; the batch axis follows `leading_dims` axes."""
  batch_axes = sharding.logical_to_spec(("batch",), rules, mesh.axis_names)[0]

  def put(x):
    spec = PartitionSpec(*([None] * leading_dims), batch_axes,
                         *([None] * (x.ndim - leading_dims - 1)))
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x)

  return jax.tree.map(put, batch)


def evaluate(eval_fn: Callable[..., Any], pipeline: Pipeline, params: dict,
             batches: list[dict[str, np.ndarray]], mesh, rules, rng: jax.Array
             ) -> dict[str, float]:
  """eval/<name> figures: the pipeline's summary of its per-example values on every real row.

  `eval_fn(params, batch, rng)` returns {name: [batch, ...]} (replicated, so every
  process reads the whole batch; trailing axes, e.g. [batch, candidates], are kept
  and reach the summary as [num_examples, ...]); padding rows (batch["valid"]
  False) are dropped before the summary, which sees all eval examples at once.
  """
  values: dict[str, list[np.ndarray]] = {name: [] for name in pipeline.eval_metric_names}
  process, processes = jax.process_index(), jax.process_count()
  for batch in batches:
    valid = batch["valid"]
    rows = len(valid) // processes
    local = {k: v[process * rows:(process + 1) * rows] for k, v in batch.items() if k != "valid"}
    outputs = jax.device_get(eval_fn(params, device_batch(local, mesh, rules, 0), rng))
    for name in values:
      values[name].append(np.asarray(outputs[name])[valid])
  summary = summarize_eval(pipeline, {name: np.concatenate(v) for name, v in values.items()})
  return {f"eval/{name}": value for name, value in summary.items()}
