"""Your own data: prompts and reference answers from JSONL files, checked by a host verifier.

    config.task = dict(name="jsonl", train_path="train.jsonl", eval_path="eval.jsonl",
                       prompt_field="question", answer_field="answer", verifier="numeric")

Each line is a JSON object; `prompt_field` and `answer_field` name its prompt
and reference answer (strings; a JSON number as answer is read as its text).
Every other field is kept and passed to the verifier in `example`, as is
"source": "file:line". Verifiers (`selfimprove.tasks.text_verifiers`):
"numeric" (the last number, or the one after "####", equals the reference's),
"exact_match" (normalised text) or "module:function" naming your own
`fn(completion: str, example: dict) -> float`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from selfimprove.data import read_jsonl
from selfimprove.problems import Problems
from selfimprove.tasks.text_verifiers import load_verifier


@dataclasses.dataclass(frozen=True)
class JsonlTaskConfig:
  """Where the data is and how completions are checked (see the module docstring)."""

  train_path: str = ""
  eval_path: str = ""
  prompt_field: str = "prompt"
  answer_field: str = "answer"
  verifier: str = "numeric"

  def __post_init__(self):
    for field in ("train_path", "eval_path"):
      path = getattr(self, field)
      if not path:
        raise ValueError(f"{field} is empty: set it to a JSONL file.")
      if not os.path.isfile(path):
        raise ValueError(f"{field}={path!r}: file not found.")


def _as_text(record: dict, fields: dict[str, str], problems: Problems) -> dict | None:
  """The record with str prompt and answer (a JSON number is read as its text), or None."""
  out = dict(record)
  for ours, theirs in fields.items():
    value = record[ours]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
      problems.add(f"{record['source']}: field {theirs!r} must be a string, got "
                   f"{type(value).__name__} {value!r}.")
      return None
    out[ours] = value if isinstance(value, str) else str(value)
  return out


class JsonlTask:
  """A `Task` over JSONL files; open text (no alphabet), host verifier only."""

  alphabet = None

  def __init__(self, config: JsonlTaskConfig):
    self.config = config
    self.host_verifier = load_verifier(config.verifier)

  def examples(self, split: str) -> list[dict]:
    if split not in ("train", "eval"):
      raise ValueError(f"JsonlTask.examples: split must be 'train' or 'eval', got {split!r}.")
    path = self.config.train_path if split == "train" else self.config.eval_path
    fields = {"prompt": self.config.prompt_field, "answer": self.config.answer_field}
    records = read_jsonl(path, fields, keep_all=True)
    if not records:
      raise ValueError(f"{path}: no records (the file is empty or has only blank lines).")
    problems = Problems()
    examples = [_as_text(r, fields, problems) for r in records]
    problems.raise_if_any()
    return examples

  def example_arrays(self, example: dict) -> dict[str, np.ndarray]:
    return {}

  def in_graph_verifier(self, tokenizer):
    return None
