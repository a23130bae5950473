"""Benchmark: decode throughput of `selfimprove.sampling.sample` vs a peer on the same shapes.

    python bench/sampling.py --config=configs/bench_sampling.py:tiny

Prints a table and writes JSON (see configs/bench_sampling.py). Not a test.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

from absl import app
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from selfimprove.models import get_preset, init_model  # noqa: E402
from selfimprove.sampling import SamplingConfig, make_sampler  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench_sampling.py:tiny")


def _median_seconds(run, num_runs: int) -> float:
  run()  # warm-up: compilation and first-touch allocations are not timed
  times = []
  for _ in range(num_runs):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def time_selfimprove(model_config, batch: int, bench) -> float:
  graphdef, params = init_model(model_config, seed=bench.seed)
  sampler = make_sampler(graphdef, SamplingConfig(max_new_tokens=bench.max_new_tokens, greedy=True))
  prompts = np.random.default_rng(bench.seed).integers(
      3, model_config.vocab_size, (batch, bench.prompt_len)).astype(np.int32)
  mask = np.ones_like(prompts, bool)
  key = jax.random.key(bench.seed)

  def run():
    rollout = sampler(params, prompts, mask, key)
    jax.block_until_ready(rollout.tokens)
    assert int(rollout.num_decode_steps) == bench.max_new_tokens

  return _median_seconds(run, bench.num_runs)


def time_transformers(model_config, batch: int, bench) -> float | None:
  try:
    import torch
    import transformers
  except ImportError:
    return None
  torch.manual_seed(bench.seed)
  torch.set_num_threads(os.cpu_count() or 1)
  hf_config = transformers.LlamaConfig(
      vocab_size=model_config.vocab_size, hidden_size=model_config.embed_dim,
      intermediate_size=model_config.mlp_dim, num_hidden_layers=model_config.num_layers,
      num_attention_heads=model_config.num_heads, num_key_value_heads=model_config.num_kv_heads,
      head_dim=model_config.head_dim, rope_theta=model_config.rope_theta,
      rms_norm_eps=model_config.norm_eps, tie_word_embeddings=model_config.tie_embeddings)
  model = transformers.LlamaForCausalLM(hf_config).eval().to(getattr(torch, bench.dtype))
  prompts = torch.randint(3, model_config.vocab_size, (batch, bench.prompt_len))

  def run():
    with torch.inference_mode():
      out = model.generate(prompts, attention_mask=torch.ones_like(prompts),
                           max_new_tokens=bench.max_new_tokens, min_new_tokens=bench.max_new_tokens,
                           do_sample=False, pad_token_id=0, eos_token_id=None)
    assert out.shape[1] == bench.prompt_len + bench.max_new_tokens

  return _median_seconds(run, bench.num_runs)


def main(argv):
  del argv
  bench = _CONFIG.value
  rows = []
  for preset in [p.strip() for p in bench.presets.split(",") if p.strip()]:
    model_config = get_preset(preset, dtype=bench.dtype, param_dtype=bench.dtype)
    for batch in bench.batch_sizes:
      new_tokens = batch * bench.max_new_tokens
      ours = time_selfimprove(model_config, batch, bench)
      peer = time_transformers(model_config, batch, bench) if bench.peer == "transformers" else None
      rows.append(dict(
          preset=preset, params=model_config.num_params, batch=batch,
          prompt_len=bench.prompt_len, new_tokens=bench.max_new_tokens,
          seconds=ours, tokens_per_sec=new_tokens / ours,
          peer=bench.peer or None, peer_seconds=peer,
          peer_tokens_per_sec=(new_tokens / peer) if peer else None))
      print(f"  measured {preset} batch={batch}", file=sys.stderr, flush=True)

  header = (f"{'preset':<7}{'params':>8}{'batch':>7}{'sec/call':>10}{'tok/s':>10}"
            f"{'peer tok/s':>12}{'speedup':>9}")
  print(f"\nsample(): prompt {bench.prompt_len} tokens, {bench.max_new_tokens} new tokens, greedy, "
        f"{bench.dtype}, median of {bench.num_runs}; peer = {bench.peer or 'none'} on the same shapes")
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}), "
        f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
  print(header)
  print("-" * len(header))
  for r in rows:
    peer = f"{r['peer_tokens_per_sec']:>12.0f}{r['tokens_per_sec'] / r['peer_tokens_per_sec']:>8.2f}x" \
        if r["peer_tokens_per_sec"] else f"{'n/a':>12}{'':>9}"
    print(f"{r['preset']:<7}{r['params'] / 1e6:>7.1f}M{r['batch']:>7}{r['seconds']:>10.3f}"
          f"{r['tokens_per_sec']:>10.0f}{peer}")

  result = dict(benchmark="sampling", config=bench.to_dict(), jax_version=jax.__version__,
                backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
                device_count=jax.device_count(), cpu_count=os.cpu_count(),
                time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), rows=rows)
  os.makedirs(os.path.dirname(bench.output) or ".", exist_ok=True)
  with open(bench.output, "w") as f:
    json.dump(result, f, indent=2)
  print(f"\nwrote {bench.output}")


if __name__ == "__main__":
  app.run(main)
