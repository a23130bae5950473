"""Worker: the f32 matmul rate of one library in this process (its default threads).

    .venv/bin/python bench/peers/matmul_peak.py --lib=jax --size=2048 --calls=20
    /tmp/torch_venv/bin/python bench/peers/matmul_peak.py --lib=torch

Prints one JSON line: per-call seconds of a [size, size] @ [size, size] float32 product
(one warm-up call first) and the median GFLOP/s (2 * size**3 FLOPs per call).
"""

from __future__ import annotations

import argparse
import json
import statistics

from shapes import time_calls  # bench/peers/, the script's directory


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--lib", choices=("jax", "torch"), required=True)
  parser.add_argument("--size", type=int, default=2048)
  parser.add_argument("--calls", type=int, default=20)
  args = parser.parse_args()
  n = args.size
  if args.lib == "jax":
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    product = jax.jit(jnp.matmul)
    call = lambda: product(a, b).block_until_ready()  # noqa: E731
    version, threads = jax.__version__, None
  else:
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    call = lambda: torch.mm(a, b)  # noqa: E731
    version, threads = torch.__version__, torch.get_num_threads()
  _, warmup, times = time_calls(call, args.calls)
  gflops = [2 * n ** 3 / t / 1e9 for t in times]
  print(json.dumps(dict(lib=args.lib, version=version, threads=threads, size=n,
                        warmup_seconds=warmup, call_seconds=times,
                        median_gflops=statistics.median(gflops), max_gflops=max(gflops))))


if __name__ == "__main__":
  main()
