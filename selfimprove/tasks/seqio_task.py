"""Prompts and answers from a registered seqio Task or Mixture, by name, checked by a host verifier.

    config.task = dict(name="seqio", seqio_name="my_task", seqio_modules=("my_tasks",),
                       train_split="train", eval_split="validation",
                       prompt_feature="inputs", answer_feature="targets", verifier="exact_match")

Needs the `seqio` extra (`pip install '.[seqio]'`, which pulls TensorFlow); seqio is imported
only when such a task is built. `seqio_modules` are imported first so that their
`seqio.TaskRegistry.add(...)` / `seqio.MixtureRegistry.add(...)` calls run (a str is read as
comma-separated names, so `--config.task.seqio_modules=a,b` works).

How the text is read: each seqio Task's own `get_dataset(split=..., sequence_length=None,
shuffle=False, num_epochs=1, seed=seed)`, so its preprocessors run as in seqio, untruncated and
in the source's order. A feature is taken from `<feature>_pretokenized` where the task's
`seqio.preprocessors.tokenize` kept it (its default `copy_pretokenized=True`): the text exactly as
it was before tokenization. Otherwise the feature itself must still be text (or a number, read as
its text); token ids are never decoded back, because a vocabulary's decode need not give the
original text. A Mixture gives each of its tasks' examples once, task by task in the Mixture's
(name) order, skipping tasks without the split: its mixing rates are not applied (the run samples
and shuffles; `Mixture.get_dataset` would sample at random and drop the pretokenized text).

Each example keeps the prompt and answer plus every other scalar text/number feature under its
seqio name, "seqio_task" and "source": "seqio:<task>:<split>:<index>", and is checked by the same
verifiers as the JSONL task ("numeric", "exact_match" or "module:function").
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any

import numpy as np

from selfimprove.problems import Problems
from selfimprove.tasks.jsonl import _as_text
from selfimprove.tasks.text_verifiers import load_verifier

INSTALL_HINT = "pip install '.[seqio]'"


@dataclasses.dataclass(frozen=True)
class SeqioTaskConfig:
  """Which seqio Task or Mixture, which splits and features (see the module docstring)."""

  seqio_name: str = ""
  seqio_modules: tuple[str, ...] | str = ()
  train_split: str = "train"
  eval_split: str = "validation"
  prompt_feature: str = "inputs"
  answer_feature: str = "targets"
  max_examples_per_split: int = 0   # 0: all; else at most this many from each seqio Task
  verifier: str = "exact_match"
  use_cached: bool = False          # read a cache written by seqio's cache_tasks_main
  # None: no seed (seqio's default; a FunctionDataSource's dataset_fn(split, shuffle_files) then
  # need not take one). An int makes stochastic preprocessors repeatable (dataset_fn needs `seed`).
  seed: int | None = None

  def __post_init__(self):
    modules = self.seqio_modules
    if isinstance(modules, str):
      modules = [m.strip() for m in modules.split(",") if m.strip()]
    if not isinstance(modules, (list, tuple)) or not all(
        isinstance(m, str) and m for m in modules):
      raise ValueError(f"seqio_modules={self.seqio_modules!r}: must be a list of importable "
                       f"module names (or one comma-separated string).")
    object.__setattr__(self, "seqio_modules", tuple(modules))
    for field in ("seqio_name", "train_split", "eval_split", "prompt_feature", "answer_feature",
                  "verifier"):
      value = getattr(self, field)
      if not isinstance(value, str) or not value:
        raise ValueError(f"{field}={value!r}: must be a non-empty string"
                         + (" naming a registered seqio Task or Mixture."
                            if field == "seqio_name" else "."))
    if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
      raise ValueError(f"seed={self.seed!r}: must be an int or None.")
    if (isinstance(self.max_examples_per_split, bool)
        or not isinstance(self.max_examples_per_split, int) or self.max_examples_per_split < 0):
      raise ValueError(f"max_examples_per_split={self.max_examples_per_split!r}: must be an "
                       f"int >= 0 (0 reads every example).")


def import_seqio():
  """The seqio module, or an ImportError that says how to install it."""
  try:
    import seqio  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(f"config.task.name='seqio' needs the seqio package ({error}); install the "
                      f"extra with {INSTALL_HINT} (it pulls TensorFlow).") from error
  try:   # keep TensorFlow off the accelerators: JAX owns them
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.set_visible_devices([], "GPU")
  except (ImportError, RuntimeError, ValueError):
    pass
  return seqio


def _text_key(spec: dict, feature: str, field: str, where: str) -> str:
  """The element key holding `feature` as text: '<feature>_pretokenized' first, else itself."""
  for key in (f"{feature}_pretokenized", feature):
    if key in spec and getattr(getattr(spec[key], "shape", None), "rank", None) == 0:
      return key
  if feature in spec:
    raise ValueError(
        f"{field}={feature!r}: {where} holds feature {feature!r} as "
        f"{getattr(getattr(spec[feature], 'dtype', None), 'name', spec[feature])} of shape "
        f"{getattr(spec[feature], 'shape', '?')} (token ids?) and keeps no "
        f"{feature + '_pretokenized'!r} text; name a text feature, or keep copy_pretokenized=True "
        f"in the task's seqio.preprocessors.tokenize.")
  raise ValueError(f"{field}={feature!r}: {where} has no feature {feature!r}; its features are "
                   f"{sorted(spec)}.")


def _scalar(value: Any) -> Any:
  """A numpy scalar as Python: bytes decoded as UTF-8 (UnicodeDecodeError if not), else .item()."""
  if isinstance(value, np.ndarray):
    value = value.item() if value.ndim == 0 else value
  if isinstance(value, np.generic):
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else value


class SeqioTask:
  """A `Task` over a registered seqio Task or Mixture; open text (no alphabet), host verifier only."""

  alphabet = None

  def __init__(self, config: SeqioTaskConfig):
    self.config = config
    self.host_verifier = load_verifier(config.verifier)
    self._seqio = import_seqio()
    for module in config.seqio_modules:
      try:
        importlib.import_module(module)
      except ImportError as error:
        raise ValueError(f"seqio_modules: cannot import {module!r}: {error}") from error
    self.provider = self._lookup(config.seqio_name)
    self._cache: dict[str, list[dict]] = {}

  def _lookup(self, name: str):
    seqio = self._seqio
    try:
      return seqio.get_mixture_or_task(name)
    except ValueError:
      names = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
      close = difflib.get_close_matches(name, names, n=5)
      raise ValueError(
          f"seqio_name={name!r}: no seqio Task or Mixture of that name is registered (after "
          f"importing seqio_modules={list(self.config.seqio_modules)}); "
          + (f"close names: {close}." if close else
             "list the module that registers it in task.seqio_modules.")) from None

  def _subtasks(self, split: str, field: str) -> list:
    name = self.config.seqio_name
    if isinstance(self.provider, self._seqio.Mixture):
      tasks = [t for t in self.provider.tasks if split in t.splits]
      if not tasks:
        raise ValueError(f"{field}={split!r}: no task of seqio mixture {name!r} has that split; "
                         f"their splits are {sorted(self.provider.splits)}.")
      return tasks
    if split not in self.provider.splits:
      raise ValueError(f"{field}={split!r}: seqio task {name!r} has no such split; its splits "
                       f"are {sorted(self.provider.splits)}.")
    return [self.provider]

  def _read(self, task, split: str, field: str, problems: Problems) -> list[dict]:
    """One seqio Task's examples of `split` as text records."""
    config = self.config
    ds = task.get_dataset(sequence_length=None, split=split, use_cached=config.use_cached,
                          shuffle=False, seed=config.seed, num_epochs=1)
    if config.max_examples_per_split:
      ds = ds.take(config.max_examples_per_split)
    where = f"seqio task {task.name!r} (split {split!r})"
    fields = {"prompt": _text_key(ds.element_spec, config.prompt_feature, "prompt_feature",
                                  where),
              "answer": _text_key(ds.element_spec, config.answer_feature, "answer_feature",
                                  where)}
    examples = []
    for index, element in enumerate(ds.as_numpy_iterator()):
      source = f"seqio:{task.name}:{split}:{index}"
      record = {}
      for key, value in element.items():
        try:
          value = _scalar(value)
        except UnicodeDecodeError:
          if key in fields.values():
            problems.add(f"{source}: feature {key!r} is not UTF-8 text.")
          continue
        if isinstance(value, (str, int, float)):
          record[key] = value
      record.update(seqio_task=task.name, source=source,
                    prompt=record.get(fields["prompt"]), answer=record.get(fields["answer"]))
      if record["prompt"] is not None and record["answer"] is not None:
        example = _as_text(record, fields, problems)
        if example is not None:
          examples.append(example)
    return examples

  def examples(self, split: str) -> list[dict]:
    if split not in ("train", "eval"):
      raise ValueError(f"SeqioTask.examples: split must be 'train' or 'eval', got {split!r}.")
    if split not in self._cache:
      field = "train_split" if split == "train" else "eval_split"
      seqio_split = getattr(self.config, field)
      problems = Problems()
      examples = [example for task in self._subtasks(seqio_split, field)
                  for example in self._read(task, seqio_split, field, problems)]
      problems.raise_if_any()
      if not examples:
        raise ValueError(f"{field}={seqio_split!r}: seqio {self.config.seqio_name!r} gave no "
                         f"examples for that split.")
      self._cache[split] = examples
    return self._cache[split]

  def example_arrays(self, example: dict) -> dict[str, np.ndarray]:
    return {}

  def in_graph_verifier(self, tokenizer):
    return None
