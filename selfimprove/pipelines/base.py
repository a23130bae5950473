"""What the trainer needs from a pipeline (one algorithm = one pipeline file), and what it gets.

A pipeline module registers a `build(pieces, settings) -> Pipeline` function in
`selfimprove/pipelines/__init__.py`. `pieces` are the run's shared objects
(`RunPieces`); `settings` is the plain dict of its own config section (e.g.
config.score), which the module turns into its own frozen config dataclass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol

import jax
import numpy as np
import optax
from flax import nnx

from selfimprove.encoding import TextEncoder
from selfimprove.train_state import TrainState
from selfimprove.verifiers import Verifier


@dataclasses.dataclass(frozen=True)
class RunPieces:
  """The run's pieces a pipeline is built from.

  Attributes:
    graphdef: the model's graph (`nnx.merge(graphdef, params)` inside jit).
    optimizer: the run's optax transformation (LoRA-masked where it applies).
    encoder: the run's tokenizer applied to text (`encoder.tokenizer`,
      `encoder.text_ids(text, what)` for instructions and templates).
    verifier: (completion_tokens, completion_mask, batch) -> [rows] rewards,
      in-graph or a host function (see selfimprove/verifiers.py).
    prompt_len, answer_len: static lengths of the batches' prompt and answer
      arrays (answer_len includes <eos>: the natural completion budget).
    stop_token_ids: ids that end a completion.
    seed: the run's config.seed, for randomness fixed for the whole run (a
      dataset sampled once: pipelines/score_baselines.py); per-step randomness
      comes from the step's key.
    task: the run's task, for a pipeline that needs more of its domain than the
      verifier (STP reads its training statements, seed set and statement checks).
  """

  graphdef: nnx.GraphDef
  optimizer: optax.GradientTransformation
  encoder: TextEncoder
  verifier: Verifier
  prompt_len: int
  answer_len: int
  stop_token_ids: tuple[int, ...]
  seed: int = 0
  task: Any = None

  @property
  def pad_id(self) -> int:
    return self.encoder.tokenizer.pad_id


class Pipeline(Protocol):
  """An algorithm, as the trainer sees it.

  `step` and `evaluate` are pure functions of arrays; the trainer jits them
  (with shardings and donation), scans `step` for `steps_per_call`, advances
  `state.step`, and skips updates whose `train/loss` or `train/grad_norm` is
  not finite. Pipelines never write files or print.

  Batches hold the rows of selfimprove/encoding.py (prompt_tokens, prompt_mask,
  answer_tokens, answer_mask, record_id, and the task's arrays).
  """

  # Names of the per-example values `evaluate` returns.
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
    """Per-example eval values [batch, ...] (a leading row per example) for each name in
    `eval_metric_names`."""
    ...

  # Optional: `summarize_eval(values) -> {name: float}` over ALL eval examples at once
  # ({name: [num_examples]} arrays, padding rows removed), for figures that are not means
  # (AUROC, calibration error, pass@k). Without it, each name's mean is logged. The
  # trainer logs each returned name as eval/<name>; a pipeline with a summary may name the
  # ones the progress bar shows in `eval_summary_names`.


def mean_summary(values: Mapping[str, np.ndarray]) -> dict[str, float]:
  """The default eval summary: the mean of each per-example value."""
  return {name: float(np.mean(v, dtype=np.float64)) if len(v) else float("nan")
          for name, v in values.items()}


def summarize_eval(pipeline: Pipeline, values: Mapping[str, np.ndarray]) -> dict[str, float]:
  """The pipeline's own summary of the eval values, or their means."""
  summarize = getattr(pipeline, "summarize_eval", None) or mean_summary
  return {name: float(value) for name, value in summarize(values).items()}
