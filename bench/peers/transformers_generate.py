"""Peer worker: Hugging Face `transformers` `generate` (PyTorch CPU) on one row's shapes.

Runs in its own process and virtualenv, with torch's default thread settings:

    /tmp/torch_venv/bin/python bench/peers/transformers_generate.py --hf_dir=/tmp/w/tiny --prompts=8
    /tmp/torch_venv/bin/python bench/peers/transformers_generate.py \
        --model_json='{"vocab_size": 512, "embed_dim": 256, ...}' --prompts=8

The model is a `LlamaForCausalLM`: either the weights our worker exported
(`selfimprove_generate.py --export_hf`, so both sides run the very same random model), or
the shapes in --model_json (our TransformerConfig field names) with torch's random init
from --seed. Prompts are the same seeded numpy ids as ours. Greedy, or with
--samples_per_prompt > 1 `num_return_sequences` samples at temperature 1 with top-k and
top-p off (generate repeats each prompt that many times before its prefill, as ours does).
min_new_tokens = max_new_tokens and no eos: every row generates every new token (checked).
Prints one JSON line: the warm-up call's seconds and each timed call's.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import transformers

from shapes import add_generation_flags, time_calls  # noqa: E402  (bench/peers/, the script's directory)


def build_model(args) -> transformers.LlamaForCausalLM:
  if args.hf_dir:
    return transformers.LlamaForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32).eval()
  shape = json.loads(args.model_json)
  torch.manual_seed(args.seed)
  config = transformers.LlamaConfig(
      vocab_size=shape["vocab_size"], hidden_size=shape["embed_dim"],
      intermediate_size=shape["mlp_dim"], num_hidden_layers=shape["num_layers"],
      num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"],
      head_dim=shape["head_dim"], rope_theta=shape.get("rope_theta", 10_000.0),
      rms_norm_eps=shape.get("norm_eps", 1e-6),
      tie_word_embeddings=shape.get("tie_embeddings", False))
  return transformers.LlamaForCausalLM(config).eval()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--hf_dir", default="")
  parser.add_argument("--model_json", default="")
  add_generation_flags(parser)
  args = parser.parse_args()
  if not (args.hf_dir or args.model_json):
    parser.error("give --hf_dir or --model_json")

  model = build_model(args)
  model.generation_config.eos_token_id = None
  vocab = model.config.vocab_size
  prompts = torch.from_numpy(np.random.default_rng(args.seed).integers(
      3, vocab, (args.prompts, args.prompt_len)).astype(np.int64))
  n = args.samples_per_prompt
  options = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                 pad_token_id=0, eos_token_id=None)
  if n > 1:
    options.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=n)
  else:
    options.update(do_sample=False)

  def call():
    with torch.inference_mode():
      return model.generate(prompts, attention_mask=torch.ones_like(prompts), **options)

  out, warmup, times = time_calls(call, args.calls)
  assert tuple(out.shape) == (args.prompts * n, args.prompt_len + args.new_tokens), out.shape
  print(json.dumps(dict(
      library="transformers", transformers=transformers.__version__, torch=torch.__version__,
      torch_threads=torch.get_num_threads(), attn_implementation=model.config._attn_implementation,
      rows=int(out.shape[0]), new_tokens=args.new_tokens,
      first_row_tokens=out[0, args.prompt_len:].tolist(),
      warmup_seconds=warmup, call_seconds=times)))


if __name__ == "__main__":
  main()
