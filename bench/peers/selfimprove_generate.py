"""Worker: our sampler (`selfimprove.sampling.make_sampler`) on one row's shapes, in this process.

    .venv/bin/python bench/peers/selfimprove_generate.py --preset=tiny --prompts=8 --calls=3
    .venv/bin/python bench/peers/selfimprove_generate.py --preset=tiny --export_hf=/tmp/w/tiny

Random weights from `init_model(preset, seed)`; prompts are seeded numpy ids in [3, vocab)
(the PyTorch peer draws the same ones). Greedy unless --samples_per_prompt > 1, which
samples at temperature 1 with no top-k / top-p (the GRPO-shaped row). No stop tokens: every
row decodes all --new_tokens (checked). Prints one JSON line: the warm-up call's seconds
(compilation included) and each timed call's. With --export_hf, writes the same weights as
a Hugging Face folder for the peers and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from selfimprove.host_memory import reexec_with_huge_pages  # noqa: E402
from selfimprove.models import get_preset, init_model  # noqa: E402
from selfimprove.sampling import SamplingConfig, make_sampler  # noqa: E402

from shapes import add_generation_flags, time_calls  # noqa: E402  (bench/peers/, the script's directory)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--preset", required=True)
  add_generation_flags(parser)
  parser.add_argument("--export_hf", default="")
  args = parser.parse_args()

  config = get_preset(args.preset)
  graphdef, params = init_model(config, seed=args.seed)
  if args.export_hf:
    from selfimprove.models.hf import save_hf
    save_hf(args.export_hf, config, params, family="llama")
    print(json.dumps(dict(exported=args.export_hf, params=config.num_params,
                          warmup_seconds=[0.0], call_seconds=[])))
    return

  n = args.samples_per_prompt
  sampler = make_sampler(graphdef, SamplingConfig(
      max_new_tokens=args.new_tokens, greedy=n == 1, temperature=1.0, num_samples_per_prompt=n))
  prompts = np.random.default_rng(args.seed).integers(
      3, config.vocab_size, (args.prompts, args.prompt_len)).astype(np.int32)
  mask = np.ones_like(prompts, bool)
  key = jax.random.key(args.seed)

  def call():
    rollout = sampler(params, prompts, mask, key)
    jax.block_until_ready(rollout.tokens)
    return rollout

  rollout, warmup, times = time_calls(call, args.calls)
  assert int(rollout.num_decode_steps) == args.new_tokens, "a row stopped early"
  assert bool(rollout.completion_mask.all()), "every row must generate every new token"
  print(json.dumps(dict(
      library="selfimprove", jax=jax.__version__, backend=jax.default_backend(),
      rows=int(rollout.tokens.shape[0]), new_tokens=args.new_tokens,
      first_row_tokens=np.asarray(rollout.tokens[0]).tolist(),
      warmup_seconds=warmup, call_seconds=times)))


if __name__ == "__main__":
  reexec_with_huge_pages()   # as launch/train.py does (selfimprove/host_memory.py)
  main()
