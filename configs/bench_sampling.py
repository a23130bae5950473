"""Sampling throughput benchmark settings.

    python bench/sampling.py --config=configs/bench_sampling.py:tiny
    python bench/sampling.py --config=configs/bench_sampling.py:tiny,small

The `:arg` is a comma-separated list of model presets. The benchmark prints a
table of decode tokens/second (batch x new tokens / wall time of one `sample`
call, prefill included, compile excluded, median of `num_runs`) next to Hugging
Face `transformers` greedy `generate` on a model of exactly the same shape,
measured in the same run, and writes the table as JSON.
"""

import ml_collections


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.presets = arg
  config.batch_sizes = (1, 8, 32)
  config.prompt_len = 32
  config.max_new_tokens = 64
  config.num_runs = 5
  config.dtype = "float32"
  config.seed = 0
  # "transformers" (torch, CPU) or "" to skip the peer.
  config.peer = "transformers"
  config.output = "bench/results/sampling.json"
  return config.lock()
