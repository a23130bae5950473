"""Peer worker for bench/rl_iteration.py: TRL's GRPOTrainer (PyTorch, CPU) at the RL row's shape.

    /tmp/trl_venv/bin/python bench/peers/rl_trl.py --steps 8

Runs in its own virtual environment (see bench/rl_iteration.md), with TRL's and PyTorch's
defaults (threads included) except what the shape fixes: a random-weight LlamaForCausalLM of
the `tiny` preset's shape, num_generations=8, per_device_train_batch_size=64 (so one
optimizer step = 8 prompts x 8 samples), max_completion_length=16, beta=0.04, and a
rule-based reward (the arithmetic answer checked from the text), and use_cpu=True (which TRL's
default bf16=True demands on a CPU-only machine). Prompts are 3-digit
additions "123+456=" with <bos> (9 tokens), like ours. `--f32` additionally turns off TRL's
default bf16 autocast and gradient checkpointing (a sensitivity check, not the default row).

Each optimizer step is timed by a TrainerCallback from one `on_step_end` to the next (the
first step, from `on_train_begin`, is reported separately). Prints `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time

import datasets
import tokenizers
import torch
import transformers
import trl

from shapes import addition_reward  # noqa: E402  (bench/peers/, the script's directory)

ALPHABET = "0123456789+-*="
SHAPE = dict(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=4, head_dim=32, rope_theta=10_000.0,
             rms_norm_eps=1e-6, tie_word_embeddings=False)   # selfimprove.models preset "tiny"
NUM_PROMPTS, GROUP_SIZE, MAX_NEW_TOKENS, BETA = 8, 8, 16, 0.04


def make_tokenizer(vocab_size: int) -> transformers.PreTrainedTokenizerFast:
  """One id per character of the task's alphabet (like our char tokenizer), padded to vocab_size."""
  vocab = ["<pad>", "<bos>", "<eos>"] + list(ALPHABET)
  vocab += [f"<unused{i}>" for i in range(vocab_size - len(vocab))]
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({t: i for i, t in enumerate(vocab)},
                                                         unk_token="<pad>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("."), "isolated")
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="<bos> $A", special_tokens=[("<bos>", 1)])
  tok.decoder = tokenizers.decoders.Fuse()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")




class StepTimer(transformers.TrainerCallback):
  def __init__(self):
    self.last, self.times = None, []

  def on_train_begin(self, args, state, control, **kwargs):
    self.last = time.perf_counter()

  def on_step_end(self, args, state, control, **kwargs):
    now = time.perf_counter()
    self.times.append(now - self.last)
    self.last = now


def run(args, prompts, workdir):
  """Trains TRL's GRPOTrainer in workdir and returns the timings."""
  tokenizer = make_tokenizer(SHAPE["vocab_size"])
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      **SHAPE, bos_token_id=1, eos_token_id=2, pad_token_id=0))
  # TRL builds the reference from the policy's path, so both load these same random weights.
  model_dir = os.path.join(workdir, "model")
  model.save_pretrained(model_dir)
  tokenizer.save_pretrained(model_dir)

  # TRL's default bf16=True refuses to start on a CPU-only machine unless use_cpu=True is set
  # ("Your setup doesn't support bf16/gpu. You need to assign use_cpu ..."): its own advice.
  overrides = (dict(bf16=False, gradient_checkpointing=False) if args.f32 else
               dict(use_cpu=True))
  config = trl.GRPOConfig(
      output_dir=os.path.join(workdir, "out"), report_to="none", save_strategy="no",
      max_steps=1 + args.steps, num_generations=GROUP_SIZE,
      per_device_train_batch_size=NUM_PROMPTS * GROUP_SIZE, max_completion_length=MAX_NEW_TOKENS,
      beta=BETA, seed=0, **overrides)
  timer = StepTimer()
  start = time.perf_counter()
  trainer = trl.GRPOTrainer(model=model_dir, reward_funcs=addition_reward, args=config,
                            train_dataset=datasets.Dataset.from_dict({"prompt": prompts}),
                            processing_class=tokenizer, callbacks=[timer])
  setup_s = time.perf_counter() - start
  trainer.train()
  lengths = [r["completions/mean_length"] for r in trainer.state.log_history
             if "completions/mean_length" in r]
  return dict(
      library="trl", version=f"trl {trl.__version__}, transformers {transformers.__version__}, "
      f"torch {torch.__version__}", setup_s=setup_s, compile_s=None, compiles=False,
      first_step_s=timer.times[0], step_s=timer.times[1:],
      median_step_s=statistics.median(timer.times[1:]), prompts=NUM_PROMPTS,
      prompt_len=len(tokenizer(prompts[0])["input_ids"]),
      settings=dict(bf16=config.bf16, use_cpu=config.use_cpu, gradient_checkpointing=config.gradient_checkpointing,
                    loss_type=config.loss_type, learning_rate=config.learning_rate,
                    generation_batch_size=config.generation_batch_size,
                    num_iterations=config.num_iterations, beta=config.beta),
      metrics={"train/length": statistics.mean(lengths) if lengths else None},
      threads=dict(torch_num_threads=torch.get_num_threads()))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=8, help="timed steps after the first")
  parser.add_argument("--f32", action="store_true",
                      help="bf16=False and gradient_checkpointing=False (not TRL's defaults)")
  args = parser.parse_args()
  torch.manual_seed(0)
  rng = random.Random(0)
  prompts = [f"{rng.randint(100, 999)}+{rng.randint(100, 999)}="
             for _ in range(NUM_PROMPTS * (args.steps + 1))]
  with tempfile.TemporaryDirectory(prefix="rl_trl_") as workdir:  # removed afterwards
    result = run(args, prompts, workdir)
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
