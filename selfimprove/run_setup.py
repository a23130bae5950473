"""Turns a run's ConfigDict into typed objects: model config, task, pipeline, records.

The ConfigDict stops here: everything built below takes dataclasses or explicit
keyword arguments.
"""

from __future__ import annotations

from typing import Any, Callable

import ml_collections
import numpy as np
import optax
from flax import nnx

from selfimprove import data as data_lib
from selfimprove.config_checks import ConfigError
from selfimprove.correction_demos import CorrectionDemoConfig, CorrectionDemoEncoder
from selfimprove.models import TransformerConfig
from selfimprove.models.orbax_params import read_orbax_metadata
from selfimprove.pipelines.base import Pipeline
from selfimprove.pipelines.score import SCoRe, SCoReConfig
from selfimprove.pipelines.sft import SFT
from selfimprove.sampling import SamplingConfig
from selfimprove.tasks.arithmetic import ArithmeticConfig, ArithmeticTask

PIPELINES = ("sft", "score")
TASKS = ("arithmetic",)


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


def build_task(config: ml_collections.ConfigDict, model_config: TransformerConfig) -> ArithmeticTask:
  fields = {k: v for k, v in config.task.to_dict().items() if k != "name"}
  task = ArithmeticTask(ArithmeticConfig(**fields))
  if task.tokenizer.vocab_size > model_config.vocab_size:
    raise ValueError(f"The model's vocab_size={model_config.vocab_size} is smaller than the "
                     f"task tokenizer's vocabulary ({task.tokenizer.vocab_size}).")
  return task


def build_pipeline(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                   optimizer: optax.GradientTransformation, task: Any) -> Pipeline:
  if config.pipeline == "sft":
    eval_sampling = SamplingConfig(
        max_new_tokens=task.answer_len, greedy=True,
        stop_token_ids=(task.tokenizer.eos_id,), pad_token_id=task.tokenizer.pad_id)
    return SFT(graphdef=graphdef, optimizer=optimizer, task=task, eval_sampling=eval_sampling)
  if config.pipeline == "score":
    if "score" not in config:
      raise ValueError("config.pipeline='score' needs a config.score section "
                       "(see configs/score_arithmetic.py).")
    score = SCoReConfig(**{"max_new_tokens": task.answer_len, **config.score.to_dict()})
    return SCoRe(graphdef=graphdef, optimizer=optimizer, task=task, config=score)
  raise ValueError(f"config.pipeline={config.pipeline!r}: expected one of {PIPELINES}.")


def train_encoder(config: ml_collections.ConfigDict, task: ArithmeticTask
                  ) -> Callable[[dict], dict[str, np.ndarray]]:
  """Encodes a training record; with config.data.correction_demos > 0 some rows become
  two-turn correction demos (see selfimprove/correction_demos.py)."""
  fraction = config.data.get("correction_demos", 0.0)
  if not fraction:
    return task.encode
  try:
    demos = CorrectionDemoConfig(
        fraction=fraction, wrong_draft_fraction=config.data.wrong_draft_fraction,
        instruction=config.data.correction_instruction, seed=config.seed)
  except ValueError as error:
    raise ConfigError(f"config.data (correction_demos, wrong_draft_fraction, "
                      f"correction_instruction): {error}") from None
  return CorrectionDemoEncoder(task, demos)


def _with_targets(records: list[dict], path: str) -> list[dict]:
  """Arithmetic records from a file: the integer target is parsed from the answer."""
  out = []
  for index, record in enumerate(records):
    try:
      target = int(str(record["answer"]).strip())
    except ValueError:
      raise ValueError(f"{path}: record {index + 1}: answer {record['answer']!r} is not an "
                       f"integer (the arithmetic task needs integer answers).") from None
    out.append(dict(record, answer=str(record["answer"]).strip(), target=target))
  return out


def load_records(config: ml_collections.ConfigDict, task: ArithmeticTask
                 ) -> tuple[list[dict], list[dict]]:
  """(train records, eval records) from the task's own splits or from JSONL files."""
  if config.data.source == "jsonl":
    fields = {"prompt": config.data.prompt_field, "answer": config.data.answer_field}
    train = _with_targets(data_lib.read_jsonl(config.data.train_path, fields), config.data.train_path)
    evals = _with_targets(data_lib.read_jsonl(config.data.eval_path, fields), config.data.eval_path)
  else:
    train, evals = task.examples("train"), task.examples("eval")
  if config.eval.num_examples > 0:
    evals = evals[:config.eval.num_examples]
  return train, evals
