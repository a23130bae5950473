"""Worker for bench/rl_iteration.py: times our compiled training step in its own process.

    .venv/bin/python bench/peers/rl_selfimprove.py --config=configs/bench_rl.py:rl --steps=8

Builds the run the way selfimprove/train.py does (`build_run`, the trainer's `compile_steps`:
the guarded step under `lax.scan`, one step per call, donated state, the run's own Grain
batches), compiles it ahead of time (timed: trace + lower + compile), runs one step (timed:
the first step) and then `--steps` more, each timed to `block_until_ready`. Prints one line
`RESULT {json}` with the times and the shapes of the work done. No files are written.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from selfimprove.config_checks import validate_config  # noqa: E402
from selfimprove.evaluation import device_batch  # noqa: E402
from selfimprove.host_memory import reexec_with_huge_pages  # noqa: E402
from selfimprove.run import build_run  # noqa: E402
from selfimprove.train import _stack_batches, compile_steps  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench_rl.py:rl")
_STEPS = flags.DEFINE_integer("steps", 8, "Timed steps after the first.")
_BREAKDOWN = flags.DEFINE_bool("breakdown", False, "RL only: also time the sampler alone "
                               "(the step's `sample` call, jitted by itself) on the same batches.")


def time_sampling_alone(run, state, next_batch, steps: int) -> list[float]:
  """Seconds per call of the RL step's own sampling (same config, params and batch shapes)."""
  from flax import nnx
  from selfimprove.sampling import sample
  pipeline = run.pipeline
  sampling = jax.jit(lambda params, batch, rng: sample(
      nnx.merge(pipeline.graphdef, params), batch["prompt_tokens"][0], batch["prompt_mask"][0],
      rng, pipeline.sampling_config(train=True)).tokens)
  times = []
  for i in range(1 + steps):
    batch = next_batch()
    start = time.perf_counter()
    jax.block_until_ready(sampling(state.params, batch, jax.random.key(i)))
    times.append(time.perf_counter() - start)
  return times[1:]


def main(argv):
  del argv
  config = _CONFIG.value
  validate_config(config)
  start = time.perf_counter()
  run = build_run(config)
  with jax.set_mesh(run.mesh):
    state = jax.jit(lambda: run.state_from(run.fresh_params()), out_shardings=run.state_shardings)()
    jax.block_until_ready(state)
    setup_s = time.perf_counter() - start
    steps_fn, _ = compile_steps(run)
    next_batch = lambda: device_batch(_stack_batches([next(run.iterator)]), run.mesh, run.rules, 1)
    batch = next_batch()

    start = time.perf_counter()
    compiled = steps_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    times, records = [], []
    for i in range(1 + _STEPS.value):
      batch = next_batch()   # host data work is part of an iteration, as in the trainer's loop
      start = time.perf_counter()
      state, metrics = compiled(state, batch)
      metrics = jax.device_get(metrics)
      times.append(time.perf_counter() - start)
      records.append({k: float(np.mean(v)) for k, v in metrics.items()})
    sampling_s = (time_sampling_alone(run, state, next_batch, _STEPS.value)
                  if _BREAKDOWN.value else None)

  prompt_len = int(batch["prompt_tokens"].shape[-1])
  pipeline = run.pipeline
  new_tokens = getattr(pipeline, "max_new_tokens", 0) or pipeline.config.max_new_tokens
  samples = (pipeline.config.group_size if config.pipeline == "rl"
             else pipeline.config.num_samples_per_prompt)
  m = run.model_config
  result = dict(
      library="selfimprove", version=f"jax {jax.__version__}", pipeline=config.pipeline,
      setup_s=setup_s, compile_s=compile_s, first_step_s=times[0], step_s=times[1:],
      sampling_alone_s=sampling_s,
      prompts=int(batch["prompt_tokens"].shape[1]), samples_per_prompt=samples,
      prompt_len=prompt_len, max_new_tokens=int(new_tokens),
      instruction_len=len(getattr(pipeline, "instruction_ids", ())),
      model=dict(vocab_size=m.vocab_size, embed_dim=m.embed_dim, mlp_dim=m.mlp_dim,
                 num_layers=m.num_layers, num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
                 head_dim=m.head_dim),
      mean_prompt_tokens=float(np.mean(np.sum(np.asarray(batch["prompt_mask"]), -1))),
      metrics={k: float(np.mean([r[k] for r in records[1:]])) for k in records[0]},
      threads=dict(jax_devices=jax.device_count(), backend=jax.default_backend()))
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  reexec_with_huge_pages()   # as launch/train.py does (selfimprove/host_memory.py)
  app.run(main)
