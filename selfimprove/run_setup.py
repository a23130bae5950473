"""Turns a run's ConfigDict into typed objects: model config, tokenizer, task, data, verifier, pipeline.

The ConfigDict stops here: everything built below takes dataclasses, plain dicts
of one section's settings, or explicit keyword arguments. Tasks and pipelines are
looked up by name in their registries (selfimprove/tasks/__init__.py,
selfimprove/pipelines/__init__.py); nothing here names one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import ml_collections
import optax
from flax import nnx

from selfimprove import encoding
from selfimprove import pipelines as pipeline_registry
from selfimprove import tasks as task_registry
from selfimprove.config_checks import ConfigError, DataError
from selfimprove.models import TransformerConfig
from selfimprove.models.orbax_params import read_orbax_metadata
from selfimprove.pipelines.base import Pipeline, RunPieces
from selfimprove.run_tokenizer import TokenizerSpec, build_tokenizer, stop_token_ids
from selfimprove.problems import Problems
from selfimprove.tasks.base import SPLITS, Task, check_examples, describe_example
from selfimprove.tokenizers import Tokenizer
from selfimprove.verifiers import HostVerifier, InGraphVerifier

# Model fields a run may change when it starts from a saved model (`init_from`): how to compute,
# not what the model is.
RUNTIME_MODEL_FIELDS = ("dtype", "remat", "scan_layers")
LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_targets")


def build_model_config(config: ml_collections.ConfigDict) -> TransformerConfig:
  """The run's TransformerConfig.

  From `config.model`, or, when `config.init_from` names a saved model, the
  architecture saved with it (config.model's RUNTIME_MODEL_FIELDS still apply,
  and its LoRA fields when config.model.lora_rank > 0: adapters on a saved base).
  """
  rules = tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
                for name, axes in config.sharding_rules)
  if config.init_from:
    saved = read_orbax_metadata(config.init_from)["transformer_config"]
    model_config = TransformerConfig.from_dict(saved, f"config.init_from={config.init_from!r}")
    fields = RUNTIME_MODEL_FIELDS + (LORA_FIELDS if config.model.lora_rank > 0 else ())
    return model_config.replace(sharding_rules=rules, **{k: config.model[k] for k in fields})
  return TransformerConfig(**config.model.to_dict(), sharding_rules=rules)


def build_task(config: ml_collections.ConfigDict) -> Task:
  """The task named by config.task.name, built from config.task's other fields."""
  entry = task_registry.get_task_entry(config.task.name)
  fields = {k: v for k, v in config.task.to_dict().items() if k != "name"}
  try:
    return entry.build(entry.config_class(**fields))
  except (TypeError, ValueError) as error:
    raise ConfigError(f"config.task (name={config.task.name!r}): {error}") from None


def build_run_tokenizer(config: ml_collections.ConfigDict, task: Task,
                        model_config: TransformerConfig) -> tuple[Tokenizer, str]:
  """The run's tokenizer (config.tokenizer), checked against the model and the task's alphabet."""
  try:
    spec = TokenizerSpec(**config.tokenizer.to_dict())
    tokenizer, source = build_tokenizer(spec, task.alphabet, config.init_from)
    encoding.check_alphabet(tokenizer, task.alphabet)
  except ValueError as error:
    raise ConfigError(f"config.tokenizer: {error}") from None
  if tokenizer.vocab_size > model_config.vocab_size:
    where = f"the model saved in config.init_from={config.init_from!r}" if config.init_from else (
        "config.model.vocab_size")
    raise ConfigError(f"config.tokenizer ({source}) has {tokenizer.vocab_size} ids but the model "
                      f"has vocab_size={model_config.vocab_size} ({where}): the model cannot "
                      f"read or write its ids. Use a matching tokenizer or a larger vocabulary.")
  return tokenizer, source


@dataclasses.dataclass(frozen=True)
class RunData:
  """A run's examples and how they become batch rows (see selfimprove/encoding.py).

  Train example i has record_id i; eval example j has record_id len(train) + j.
  """

  train: list[tuple[int, dict]]   # (record_id, example)
  eval: list[tuple[int, dict]]
  encoder: encoding.TextEncoder
  prompt_len: int
  answer_len: int
  train_rows: Callable[[tuple[int, dict]], dict]   # may add correction demos
  eval_rows: Callable[[tuple[int, dict]], dict]   # may add fields evaluate reads

  @functools.cached_property
  def records(self) -> list[dict]:
    """Every example, indexed by record_id."""
    return [example for _, example in self.train] + [example for _, example in self.eval]


def _raise_data_problems(problems: Problems) -> None:
  try:
    problems.raise_if_any()
  except ValueError as error:
    raise DataError(str(error)) from None


def build_data(config: ml_collections.ConfigDict, task: Task, tokenizer: Tokenizer) -> RunData:
  """Reads the task's examples, measures and checks them, and builds the row encoders."""
  name, problems = config.task.name, Problems()
  examples: dict[str, list[dict]] = {}
  train_examples = config.data.get("train_examples", "train")
  if train_examples not in ("train", "warm_start"):
    raise ConfigError(f"config.data.train_examples must be 'train' (the task's training split) "
                      f"or 'warm_start' (its warm-start set), got {train_examples!r}.")
  if train_examples == "warm_start" and not hasattr(task, "warm_start_examples"):
    raise ConfigError(f"config.data.train_examples='warm_start': task {name!r} has no "
                      f"warm-start set (no warm_start_examples method).")
  for split in SPLITS:   # both files' problems are reported together
    try:
      if split == "train" and train_examples == "warm_start":
        examples[split] = check_examples(task.warm_start_examples(), "warm_start", name)
      else:
        examples[split] = check_examples(task.examples(split), split, name)
    except ValueError as error:
      problems.add(str(error))
  _raise_data_problems(problems)
  train, evals = examples["train"], examples["eval"]
  if config.eval.num_examples > 0:
    evals = evals[:config.eval.num_examples]
  spec = config.tokenizer
  encoder = encoding.TextEncoder(tokenizer, encoding.PromptFormat(
      chat_template=spec.chat_template, system_prompt=spec.system_prompt))
  try:
    prompt_len, answer_len = encoding.measure_lengths(
        encoder, {"train": train, "eval": evals}, config.data.max_prompt_len,
        config.data.max_answer_len)
  except ValueError as error:
    problems.add(str(error))
  for split, split_examples in (("train", train), ("eval", evals)):
    for index, example in enumerate(split_examples):
      try:
        task.example_arrays(example)
      except ValueError as error:
        problems.add(f"{describe_example(example, index, split)}: {error}")
  _raise_data_problems(problems)
  rows = encoding.RowEncoder(encoder, prompt_len, answer_len, task.example_arrays)
  train_rows: Callable = rows
  eval_rows: Callable = rows
  data_settings = config.data.to_dict()
  for field, (transform, also_eval) in pipeline_registry.row_transforms().items():
    if data_settings.get(field):
      try:
        train_rows = transform(train_rows, data_settings, task, config.seed)
        if also_eval:
          eval_rows = transform(eval_rows, data_settings, task, config.seed)
      except ValueError as error:
        raise ConfigError(f"config.data ({field} and the fields it reads): {error}") from None
  return RunData(train=list(enumerate(train)),
                 eval=[(len(train) + j, example) for j, example in enumerate(evals)],
                 encoder=encoder, prompt_len=prompt_len, answer_len=answer_len,
                 train_rows=train_rows, eval_rows=eval_rows)


def build_verifier(task: Task, tokenizer: Tokenizer, data: RunData) -> InGraphVerifier | HostVerifier:
  """The task's in-graph verifier for this tokenizer if it has one, else its host function."""
  in_graph = task.in_graph_verifier(tokenizer)
  if in_graph is not None:
    return InGraphVerifier(in_graph)
  if task.host_verifier is None:
    raise ConfigError(f"The task has no verifier for this tokenizer ({type(tokenizer).__name__}): "
                      f"its in-graph verifier cannot read it and it has no host verifier.")
  return HostVerifier(task.host_verifier, tokenizer, data.records, stop_token_ids(tokenizer))


def build_pipeline(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                   optimizer: optax.GradientTransformation, data: RunData, verifier: Any,
                   task: Task | None = None) -> Pipeline:
  """The pipeline named by config.pipeline, built from the run's pieces and its config section."""
  entry = pipeline_registry.get_pipeline_entry(config.pipeline)
  pieces = RunPieces(graphdef=graphdef, optimizer=optimizer, encoder=data.encoder,
                     verifier=verifier, prompt_len=data.prompt_len, answer_len=data.answer_len,
                     stop_token_ids=stop_token_ids(data.encoder.tokenizer), seed=config.seed,
                     task=task)
  section = entry.section
  settings = config[section].to_dict() if section and section in config else {}
  try:
    return entry.build(pieces, settings)
  except (TypeError, ValueError) as error:
    raise ConfigError(f"config.{section or 'pipeline'} (pipeline={config.pipeline!r}): "
                      f"{error}") from None


def check_warm_start(config: ml_collections.ConfigDict) -> None:
  """The main pipeline's own check of its warm start's data (e.g. SCoRe's instruction)."""
  entry = pipeline_registry.get_pipeline_entry(config.pipeline)
  if entry.check_warm_start is None:
    return
  settings = config[entry.section].to_dict() if entry.section and entry.section in config else {}
  try:
    entry.check_warm_start(settings, config.warm_start.data.to_dict())
  except ValueError as error:
    raise ConfigError(str(error)) from None
