"""Worker: a row's projection matmuls alone, with jax, at the row's own shapes, in this process.

    .venv/bin/python bench/peers/matmuls_only.py --preset=small --work=sampling --prompts=32
    .venv/bin/python bench/peers/matmuls_only.py --preset=small --work=train --batch=8 --seq_len=256

A row's floor divides its FLOPs by the f32 peak of a large square matmul. But a decode step
multiplies every weight by only `rows` activations, and XLA:CPU's kernels run such thin
matmuls well below that peak. This worker times only the matmuls that carry the floor's
weight FLOPs — each layer's q/k/v/o and gate/up/down projections and the LM head, on random
weights of the preset's shapes, one buffer per layer — and nothing else: no attention, norms,
rotary, softmax, loss or sampling. Its time is what the row would take with XLA:CPU's
matmuls if everything else were free, so floor / this time bounds the "% floor" that any
implementation running these projections as XLA:CPU matmuls can reach.

  sampling: the prefill's projections on prompts x prompt_len tokens and the LM head on
    each prompt's last token, then new_tokens - 1 decode steps of rows x 1 token (the
    projections and the LM head), in a fori_loop, as the sampler runs them.
  train: forward and backward of the projections on batch x seq_len tokens through
    `selfimprove.models.dense` (the step's own VJP), the LM head on every token included.

Prints one JSON line: the warm-up call's seconds (compilation included) and each timed call's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from selfimprove.host_memory import reexec_with_huge_pages  # noqa: E402
from selfimprove.models import get_preset  # noqa: E402
from selfimprove.models.dense import dense  # noqa: E402

from shapes import add_generation_flags, time_calls  # noqa: E402  (bench/peers/, the script's directory)


def random_weights(config, seed: int) -> dict:
  """Per-layer projection weights [in, out] and the LM head [embed, vocab], scaled 1/sqrt(in)."""
  e, h, k, d, m = (config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim,
                   config.mlp_dim)
  shapes = dict(q=(e, h * d), k=(e, k * d), v=(e, k * d), o=(h * d, e),
                gate=(e, m), up=(e, m), down=(m, e))
  keys = iter(jax.random.split(jax.random.key(seed), config.num_layers * len(shapes) + 1))
  init = lambda shape: jax.random.normal(next(keys), shape, jnp.float32) / shape[0] ** 0.5  # noqa: E731
  layers = [{name: init(shape) for name, shape in shapes.items()}
            for _ in range(config.num_layers)]
  return dict(layers=layers, head=init((e, config.vocab_size)))


def projections(x: jax.Array, weights: dict) -> jax.Array:
  """Every layer's projections on x [tokens, embed]; a residual chain keeps each layer
  dependent on the one before (the sums and products are elementwise, not matmuls)."""
  for w in weights["layers"]:
    q, k, v = dense(x, w["q"], 1), dense(x, w["k"], 1), dense(x, w["v"], 1)
    x = x + 0.1 * dense(q, w["o"], 1) + 1e-3 * (k.mean(-1) + v.mean(-1))[:, None]
    x = x + 0.1 * dense(dense(x, w["gate"], 1) * dense(x, w["up"], 1), w["down"], 1)
  return x


def sampling_call(config, args):
  def run(weights, prompt_x):
    x = projections(prompt_x.reshape(-1, config.embed_dim), weights)
    last = x.reshape(args.prompts, args.prompt_len, -1)[:, -1]
    logits = last @ weights["head"]
    x = jnp.repeat(last + 1e-3 * logits[:, :1], args.samples_per_prompt, axis=0)

    def decode_step(_, x):
      x = projections(x, weights)
      return x + 1e-3 * (x @ weights["head"])[:, :1]

    return jax.lax.fori_loop(0, args.new_tokens - 1, decode_step, x)

  prompt_x = jnp.full((args.prompts, args.prompt_len, config.embed_dim), 0.1, jnp.float32)
  return jax.jit(run), prompt_x


def train_call(config, args):
  def loss(weights, x):
    x = projections(x.reshape(-1, config.embed_dim), weights)
    return jnp.mean(dense(x, weights["head"], 1, jnp.float32))  # the model's LM head

  x = jnp.full((args.batch, args.seq_len, config.embed_dim), 0.1, jnp.float32)
  return jax.jit(jax.grad(loss)), x


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--preset", required=True)
  parser.add_argument("--work", choices=("sampling", "train"), required=True)
  add_generation_flags(parser)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  args = parser.parse_args()

  config = get_preset(args.preset)
  weights = random_weights(config, args.seed)
  fn, x = (sampling_call if args.work == "sampling" else train_call)(config, args)
  _, warmup, times = time_calls(lambda: jax.block_until_ready(fn(weights, x)), args.calls)
  print(json.dumps(dict(library="selfimprove matmuls only", jax=jax.__version__,
                        backend=jax.default_backend(), work=args.work,
                        warmup_seconds=warmup, call_seconds=times)))


if __name__ == "__main__":
  reexec_with_huge_pages()   # as our other workers and launch/train.py (selfimprove/host_memory.py)
  main()
