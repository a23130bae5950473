"""Adding an algorithm or a task is a file and a registry line: a toy pipeline and a toy task,
registered from this file, train through launch/train.py; the pipeline's eval summary is not a mean.
"""

import dataclasses
import itertools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from selfimprove import pipelines, tasks
from selfimprove.objectives import next_token_loss
from selfimprove.pipelines.base import RunPieces, mean_summary
from selfimprove.sampling import SamplingConfig, sample
from tests.train_helpers import ROOT, read_metrics


# -- a toy task: reverse a string of a's and b's ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ReverseConfig:
  length: int = 3


class ReverseTask:
  alphabet = "ab"

  def __init__(self, config: ReverseConfig):
    self.strings = ["".join(s) for s in itertools.product("ab", repeat=config.length)]

  def examples(self, split):
    return [{"prompt": s, "answer": s[::-1]} for s in self.strings]

  def example_arrays(self, example):
    return {}

  def in_graph_verifier(self, tokenizer):
    return None

  @staticmethod
  def host_verifier(completion, example):
    return float(completion == example["answer"])


# -- a toy pipeline: answer-only cross-entropy; eval summary = accuracy, count, longest ---------

@dataclasses.dataclass(frozen=True)
class ToyPipeline:
  pieces: RunPieces
  label_smoothing: float
  eval_metric_names: tuple = ("correct", "length")
  eval_summary_names: tuple = ("accuracy", "num_examples", "longest")

  def init_extra(self, params):
    return {}

  def step(self, state, batch, rng):
    tokens = jnp.concatenate([batch["prompt_tokens"], batch["answer_tokens"]], axis=1)
    mask = jnp.concatenate([batch["prompt_mask"], batch["answer_mask"]], axis=1)
    loss_mask = jnp.concatenate([jnp.zeros_like(batch["prompt_mask"]), batch["answer_mask"]], 1)
    loss_fn = lambda p: next_token_loss(nnx.merge(self.pieces.graphdef, p)(tokens, mask)[0],
                                        tokens, loss_mask)
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = self.pieces.optimizer.update(grads, state.opt_state, state.params)
    return (state._replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state),
            {"train/loss": loss, "train/grad_norm": optax.tree.norm(grads),
             "perf/tokens": jnp.sum(mask)})

  def evaluate(self, params, batch, rng):
    sampling = SamplingConfig(max_new_tokens=self.pieces.answer_len, greedy=True,
                              stop_token_ids=self.pieces.stop_token_ids,
                              pad_token_id=self.pieces.pad_id)
    rollout = sample(nnx.merge(self.pieces.graphdef, params), batch["prompt_tokens"],
                     batch["prompt_mask"], rng, sampling)
    correct = self.pieces.verifier(rollout.tokens, rollout.completion_mask, batch)
    return {"correct": correct, "length": rollout.lengths.astype(jnp.float32)}

  @staticmethod
  def summarize_eval(values):
    return {"accuracy": mean_summary(values)["correct"], "num_examples": len(values["correct"]),
            "longest": float(np.max(values["length"]))}


def build_toy(pieces: RunPieces, settings: dict) -> ToyPipeline:
  return ToyPipeline(pieces, **settings)


def register_toys():
  """Called by the config file below, in the launched process (and again here: a no-op)."""
  tasks.register_task("toy_reverse", ReverseConfig, ReverseTask)
  pipelines.register_pipeline("toy", build_toy, section="toy")


CONFIG_FILE = textwrap.dedent('''
    import ml_collections
    from configs.sft_arithmetic import get_config as get_base
    from tests.test_plugins import register_toys

    def get_config(arg="test"):
      register_toys()
      config = get_base("test").unlock()
      config.pipeline = "toy"
      config.toy = ml_collections.ConfigDict(dict(label_smoothing=0.0))
      config.task = ml_collections.ConfigDict(dict(name="toy_reverse", length=3))
      return config.lock()
''')


def test_registered_toy_pipeline_and_task_train_through_launch(tmp_path):
  config_path = tmp_path / "toy_config.py"
  config_path.write_text(CONFIG_FILE)
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  workdir = tmp_path / "run"
  result = subprocess.run([sys.executable, "launch/train.py", f"--config={config_path}",
                           f"--workdir={workdir}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  rows = read_metrics(str(workdir))
  evals = [r for r in rows if "eval/num_examples" in r]
  assert [r["step"] for r in evals] == [4, 8]
  # The summary saw the 8 real eval examples at once (the batch of 16 is padded with repeats).
  assert all(r["eval/num_examples"] == 8 for r in evals)
  assert all(0 <= r["eval/accuracy"] <= 1 and 1 <= r["eval/longest"] <= 4 for r in evals)
  assert "eval/correct" not in rows[-1]   # summary names replace the per-example ones


def test_registry_rejects_a_clash_and_lists_names():
  register_toys()
  register_toys()   # the same objects again: a no-op
  with pytest.raises(ValueError, match="already registered"):
    tasks.register_task("toy_reverse", ReverseConfig, lambda config: None)
  assert {"sft", "score", "toy"} <= set(pipelines.pipeline_names())
  assert {"arithmetic", "jsonl", "toy_reverse"} <= set(tasks.task_names())
