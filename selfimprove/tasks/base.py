"""What a task is, as the run sees it: text examples, optional arrays for in-graph checks, verifiers.

A task speaks text. Its examples are dicts with a "prompt" and a reference
"answer" (both str) plus whatever else the task keeps (a JSONL line's other
fields, an integer target, "source": "file:line"). The run's tokenizer encodes
the text (`selfimprove.encoding.TextEncoder`); the task never chooses token ids.

A task verifies completions in one or both of two ways:

* in-graph: `in_graph_verifier(tokenizer)` returns a jnp function
  (completion_tokens [rows, N], completion_mask [rows, N], batch) -> rewards
  [rows] float32, traced into the compiled step. It may read the fixed-shape
  arrays the task adds to each row with `example_arrays` (e.g. an int32 target).
  It returns None for a tokenizer it cannot read (e.g. BPE merges of digits).
* host: `host_verifier` is a plain Python function (completion_text, example)
  -> float, written the way TRL users write reward functions. The run calls it
  from inside the compiled step through `selfimprove.verifiers.HostVerifier`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import jax
import numpy as np

from selfimprove.problems import Problems
from selfimprove.tokenizers import Tokenizer

# (completion_tokens [rows, N], completion_mask [rows, N], batch {name: [rows, ...]}) -> [rows] f32
InGraphVerifierFn = Callable[[jax.Array, jax.Array, dict[str, jax.Array]], jax.Array]
# (completion text, example dict) -> reward
HostVerifierFn = Callable[[str, dict], float]

SPLITS = ("train", "eval")


class Task(Protocol):
  """A task domain: prompts and references as text, and how to check a completion.

  Attributes:
    alphabet: every character the task's text uses, when that set is closed
      (arithmetic: "0123456789+-*="); a character tokenizer for a model trained
      from scratch is built over it. None for open text.
    host_verifier: the Python verifier, or None if the task has only an in-graph one.
  """

  alphabet: str | None
  host_verifier: HostVerifierFn | None

  def examples(self, split: str) -> list[dict]:
    """Every example of `split` ("train" or "eval"), each with str "prompt" and "answer"."""
    ...

  def example_arrays(self, example: dict) -> dict[str, np.ndarray]:
    """Fixed-shape arrays its in-graph verifier reads from the batch (e.g. target); {} if none."""
    ...

  def in_graph_verifier(self, tokenizer: Tokenizer) -> InGraphVerifierFn | None:
    """A jnp verifier for completions in `tokenizer`'s ids, or None if it cannot read them."""
    ...

  # Optional: `in_graph_generator(tokenizer) -> fn(rng, batch_size) -> rows | None`, fresh
  # training rows drawn inside jit (the row layout of selfimprove/encoding.py, without
  # record_id: such rows suit in-graph verifiers only), or None for a tokenizer it cannot write.


def describe_example(example: dict, index: int, split: str) -> str:
  """Where an example came from, for error messages: its "source" (file:line) or split and index."""
  source = example.get("source") if isinstance(example, dict) else None
  return str(source) if source else f"{split} example {index}"


def check_examples(examples: Any, split: str, task_name: str) -> list[dict]:
  """The examples of a split, checked: a non-empty list of dicts with str prompt and answer."""
  if not isinstance(examples, list) or not examples:
    raise ValueError(f"Task {task_name!r}: examples({split!r}) must return a non-empty list of "
                     f"dicts, got {type(examples).__name__} of length {len(examples or [])}.")
  problems = Problems()
  for index, example in enumerate(examples):
    if not isinstance(example, dict):
      problems.add(f"Task {task_name!r}: {split} example {index} is a "
                   f"{type(example).__name__}, expected a dict with 'prompt' and 'answer'.")
      continue
    for field in ("prompt", "answer"):
      if not isinstance(example.get(field), str):
        problems.add(f"{describe_example(example, index, split)}: field {field!r} must be a "
                     f"string, got {example.get(field)!r}.")
  problems.raise_if_any()
  return examples
