"""Peer worker: a plain PyTorch training step (forward, backward, AdamW) on a LlamaForCausalLM.

Runs in its own process and virtualenv, with torch's default thread settings:

    /tmp/torch_venv/bin/python bench/peers/torch_train_step.py --hf_dir=/tmp/w/small --batch=8

The model is the one our worker exported (`selfimprove_generate.py --export_hf`), or the
shapes in --model_json (see transformers_generate.py). One step: next-token cross-entropy on
seeded random ids [batch, seq_len] (`labels=input_ids`, so seq_len - 1 predictions per row,
as ours), `loss.backward()`, global-norm clip 1.0, `torch.optim.AdamW` (lr 1e-3, betas
(0.9, 0.99), eps 1e-8, weight decay 0.01: our SFT step's settings), `zero_grad`. Prints one
JSON line: the warm-up call's seconds and each timed call's.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import transformers

from transformers_generate import build_model


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--hf_dir", default="")
  parser.add_argument("--model_json", default="")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--calls", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if not (args.hf_dir or args.model_json):
    parser.error("give --hf_dir or --model_json")

  model = build_model(args).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-8,
                                weight_decay=0.01)
  ids = torch.from_numpy(np.random.default_rng(args.seed).integers(
      3, model.config.vocab_size, (args.batch, args.seq_len)).astype(np.int64))

  def call() -> float:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())

  start = time.perf_counter()
  losses = [call()]
  warmup = [time.perf_counter() - start]
  times = []
  for _ in range(args.calls):
    start = time.perf_counter()
    losses.append(call())
    times.append(time.perf_counter() - start)
  print(json.dumps(dict(
      library="torch", transformers=transformers.__version__, torch=torch.__version__,
      torch_threads=torch.get_num_threads(), attn_implementation=model.config._attn_implementation,
      tokens_per_call=args.batch * args.seq_len, losses=losses,
      warmup_seconds=warmup, call_seconds=times)))


if __name__ == "__main__":
  main()
