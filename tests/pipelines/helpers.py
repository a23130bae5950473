"""A tiny model and the arithmetic task for pipeline tests."""

import functools

import jax
import numpy as np
import optax
from flax import nnx

from selfimprove.encoding import TextEncoder
from selfimprove.models import Transformer, TransformerConfig
from selfimprove.pipelines.base import RunPieces
from selfimprove.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from selfimprove.verifiers import InGraphVerifier


def tiny_model_config(vocab_size: int = 17) -> TransformerConfig:
  """2 layers, embed 32: compiles in seconds on CPU."""
  return TransformerConfig(vocab_size=vocab_size, embed_dim=32, mlp_dim=64, num_layers=2,
                           num_heads=2, num_kv_heads=1, head_dim=16)


@functools.lru_cache(maxsize=None)
def tiny_model(seed: int = 0) -> tuple[nnx.GraphDef, dict]:
  """(graphdef, pure-dict params) of a tiny transformer initialised with `seed`.

  Cached (eager initialisation takes seconds); the arrays are immutable, do not
  mutate the returned dict.
  """
  model = Transformer(tiny_model_config(), rngs=nnx.Rngs(params=seed))
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def arithmetic_task() -> ArithmeticTask:
  """Two-digit addition: prompts '<bos>ab+cd=' (7 tokens) and answers of up to 4 tokens."""
  return ArithmeticTask(ArithmeticConfig(min_digits=1, max_digits=2, operations="+"))


def run_pieces(task: ArithmeticTask, verifier=None, optimizer=None) -> RunPieces:
  """The pieces a pipeline is built from, for the tiny model on `task` in its own char ids."""
  graphdef, _ = tiny_model()
  verifier = verifier or InGraphVerifier(task.in_graph_verifier(task.tokenizer))
  return RunPieces(graphdef=graphdef, optimizer=optimizer or optax.adam(1e-2),
                   encoder=TextEncoder(task.tokenizer), verifier=verifier,
                   prompt_len=task.prompt_len, answer_len=task.answer_len,
                   stop_token_ids=(task.tokenizer.eos_id,))


def levenshtein(a, b) -> int:
  """Python reference edit distance."""
  previous = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    current = [i]
    for j, y in enumerate(b, 1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
    previous = current
  return previous[-1]


def perturbed(params: dict, scale: float, seed: int) -> dict:
  """params plus Gaussian noise (a reference policy that differs from the policy)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                   for x, k in zip(leaves, keys)])


def real_tokens(tokens, mask) -> list[int]:
  return [int(t) for t, m in zip(np.asarray(tokens), np.asarray(mask)) if m]
