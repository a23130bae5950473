"""Standard-library pieces the workers share (each worker runs in its own virtualenv, so this
module imports nothing else): the generation shape flags, the timing loop and the RL
benchmark's reward."""

from __future__ import annotations

import argparse
import time


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
  """The shape of one generation call, the same flags on every sampling worker."""
  parser.add_argument("--prompts", type=int, default=1)
  parser.add_argument("--samples_per_prompt", type=int, default=1)
  parser.add_argument("--prompt_len", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--calls", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)


def addition_reward(prompts, completions, **kwargs) -> list[float]:
  """1.0 when the completion starts with the sum of the prompt's two numbers, else 0.0."""
  del kwargs
  rewards = []
  for prompt, completion in zip(prompts, completions):
    a, b = prompt.rstrip("=").split("+")
    rewards.append(float(completion.strip().startswith(str(int(a) + int(b)))))
  return rewards


def time_calls(call, calls: int):
  """(the warm-up call's result, [its seconds], [the seconds of each of `calls` timed calls])."""
  start = time.perf_counter()
  result = call()
  warmup = [time.perf_counter() - start]
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return result, warmup, times
