"""Worker: our SFT training step, built exactly as `launch/train.py` builds it, in this process.

    .venv/bin/python bench/peers/selfimprove_train_step.py --preset=small --batch=8 --seq_len=256

The run is configs/sft_arithmetic.py with config.model set to the preset and the batch to
--batch; `selfimprove.run.build_run` makes the mesh, shardings, optimizer (AdamW, global-norm
clip 1.0, constant learning rate 1e-3, weight decay 0.01, b2 0.99) and the SFT pipeline, and
`selfimprove.train.compile_steps` jits the guarded step (`steps_per_call` steps under one
`lax.scan`, non-finite updates skipped, the state donated). Each call runs one step on
seeded random ids: a 1-token prompt and a (seq_len - 1)-token answer, so the loss covers all
seq_len - 1 next-token predictions, as the peer's does. Prints one JSON line: the warm-up
call's seconds (compilation included) and each timed call's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import dataclasses  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from selfimprove.host_memory import reexec_with_huge_pages  # noqa: E402
from selfimprove.models import get_preset  # noqa: E402
from selfimprove.run import build_run  # noqa: E402
from selfimprove.train import compile_steps  # noqa: E402


def sft_config(preset: str, batch: int, steps_per_call: int):
  spec = importlib.util.spec_from_file_location(
      "sft_arithmetic", os.path.join(ROOT, "configs", "sft_arithmetic.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  model = dataclasses.asdict(get_preset(preset))
  model.pop("sharding_rules")
  config.model.update(model)
  config.train.update(dict(global_batch_size=batch, steps_per_call=steps_per_call, num_steps=100))
  config.optimizer.update(dict(warmup_steps=0, decay="constant"))
  return config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--preset", required=True)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--calls", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  run = build_run(sft_config(args.preset, args.batch, steps_per_call=1))
  steps_fn, _ = compile_steps(run)
  state = jax.jit(lambda: run.state_from(run.fresh_params()), out_shardings=run.state_shardings)()
  ids = np.random.default_rng(args.seed).integers(
      3, run.model_config.vocab_size, (1, args.batch, args.seq_len)).astype(np.int32)
  batches = dict(prompt_tokens=ids[:, :, :1], prompt_mask=np.ones_like(ids[:, :, :1], bool),
                 answer_tokens=ids[:, :, 1:], answer_mask=np.ones_like(ids[:, :, 1:], bool))

  def call():
    nonlocal state
    state, metrics = steps_fn(state, batches)
    return jax.block_until_ready(metrics)

  start = time.perf_counter()
  metrics = call()
  warmup = [time.perf_counter() - start]
  times, losses = [], [float(metrics["train/loss"][0])]
  for _ in range(args.calls):
    start = time.perf_counter()
    metrics = call()
    times.append(time.perf_counter() - start)
    losses.append(float(metrics["train/loss"][0]))
  assert int(state.skipped_updates) == 0, "an update was skipped (non-finite loss or gradient)"
  print(json.dumps(dict(
      library="selfimprove", jax=jax.__version__, backend=jax.default_backend(),
      tokens_per_call=args.batch * args.seq_len, losses=losses,
      warmup_seconds=warmup, call_seconds=times)))


if __name__ == "__main__":
  reexec_with_huge_pages()   # as launch/train.py does (selfimprove/host_memory.py)
  main()
