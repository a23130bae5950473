"""SFT of a transformer from scratch on integer arithmetic (default: 2-digit addition).

    python launch/train.py --config=configs/sft_arithmetic.py:tiny --workdir=/tmp/sft_tiny

Presets (`:arg`): `tiny` (the 3.4M-parameter model, the README demo) and
`test` (a 2-layer model and a few steps, for smoke tests).
Expected result (tiny, 2-core CPU): see README "Measured" — held-out exact match
well above 90% in a few minutes.
"""

import dataclasses

import ml_collections

from selfimprove.models import get_preset
from selfimprove.sharding import DEFAULT_RULES


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in ("tiny", "test"):
    raise ValueError(f"configs/sft_arithmetic.py: unknown preset {arg!r}; use 'tiny' or 'test'.")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.pipeline = "sft"
  # A saved model to start from: a run's DIR/params, or launch/convert.py output. Its
  # architecture replaces config.model (whose dtype/remat/scan_layers still apply).
  config.init_from = ""

  config.task = ml_collections.ConfigDict(dict(
      name="arithmetic", min_digits=2, max_digits=2, operations="+",
      eval_fraction=0.1, split_seed=0, max_examples_per_split=0))
  # The run's tokenizer (selfimprove/run_tokenizer.py). "auto": the one saved with init_from,
  # else one id per character of the task's alphabet (here "0123456789+-*=", 17 ids with
  # pad/bos/eos). "hf" with path= a Hugging Face folder; chat_template wraps each prompt.
  config.tokenizer = ml_collections.ConfigDict(dict(
      kind="auto", alphabet="", path="", chat_template=False, system_prompt=""))
  config.data = ml_collections.ConfigDict(dict(
      # Static batch lengths in tokens (prompt with <bos>; answer with <eos>): 0 = the longest in
      # the data (every example is encoded once at start, and one that does not fit is named).
      max_prompt_len=0, max_answer_len=0,
      shuffle=True,
      # Warm start for SCoRe: this share of training rows becomes two-turn demos
      # [x, draft, instruction] -> answer (selfimprove/correction_demos.py); 0 = plain SFT.
      correction_demos=0.0, wrong_draft_fraction=0.5, correction_instruction=""))

  model = dataclasses.asdict(get_preset("tiny"))
  model.pop("sharding_rules")
  config.model = ml_collections.ConfigDict(model)
  config.sharding_rules = DEFAULT_RULES
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_devices=-1))

  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=100, decay="cosine", end_learning_rate_factor=0.1,
      weight_decay=0.01, b1=0.9, b2=0.99, eps=1e-8, grad_clip_norm=1.0, grad_accum_steps=1,
      schedule_steps=-1))
  config.train = ml_collections.ConfigDict(dict(
      num_steps=1000, global_batch_size=64, steps_per_call=10, log_every=50, eval_every=250,
      checkpoint_every=250, eval_at_start=False, keep_checkpoints=2, async_checkpoints=True, max_consecutive_skips=5,
      # Stop before num_steps once this training metric's mean over one call's steps is
      # >= stop_threshold (e.g. "train/exact_match"); "" trains all num_steps.
      stop_metric="", stop_threshold=1.0))
  config.eval = ml_collections.ConfigDict(dict(batch_size=256, num_examples=-1))

  if arg == "test":
    config.model.update(dict(vocab_size=32, embed_dim=32, mlp_dim=64, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=8))
    config.train.update(dict(num_steps=8, global_batch_size=8, steps_per_call=2, log_every=2,
                             eval_every=4, checkpoint_every=4))
    config.optimizer.warmup_steps = 2
    config.eval.update(dict(batch_size=16, num_examples=32))
  return config.lock()
