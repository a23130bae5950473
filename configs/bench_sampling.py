"""Sampling throughput benchmark settings.

    .venv/bin/python bench/sampling.py --config=configs/bench_sampling.py:tiny,small

The `:arg` is a comma-separated list of model presets. For each preset: greedy rows at
every batch size (prompt_len tokens, max_new_tokens new tokens, every row generating all of
them) and one GRPO-shaped row (grpo_prompts prompts x grpo_samples samples at temperature 1,
grpo_new_tokens new tokens). Ours (`selfimprove.sampling.make_sampler`) and the peer
(`transformers` `generate`, PyTorch CPU, its own virtualenv at peer_python) each run in
their own process, alternating, `rounds` processes per side with `calls` timed calls each;
the figure is the median of the pooled calls, the warm-up call is reported apart. Every row
also shows its FLOP floor over the f32 matmul peak measured in the same run. Results and
the machine: bench/README.md.
"""

import ml_collections


def get_config(arg: str = "tiny,small") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.presets = arg
  config.batch_sizes = (1, 8, 32)
  config.prompt_len = 32
  config.max_new_tokens = 64
  config.grpo_prompts = 8
  config.grpo_samples = 8
  config.grpo_new_tokens = 16
  config.calls = 3          # timed calls per process
  config.rounds = 2         # processes per side, alternating A B, B A
  config.seed = 0
  config.matmul_size = 2048
  config.matmul_calls = 20
  # The peer's interpreter ("" skips the peer): a virtualenv with torch==2.13.0 (CPU) and
  # transformers, apart from ours (see bench/README.md).
  config.peer_python = "/tmp/torch_venv/bin/python"
  config.weights_dir = "/tmp/selfimprove_bench_weights"  # our random weights, exported for the peer
  config.output = "bench/results/sampling.json"
  return config.lock()
