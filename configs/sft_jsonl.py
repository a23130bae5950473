"""SFT on your own data: a JSONL file of prompts and reference answers, usually from a converted model.

    # A Hugging Face model converted with launch/convert.py (its tokenizer comes along):
    python launch/train.py --config=configs/sft_jsonl.py --workdir=/runs/sft \
        --config.init_from=/models/qwen-orbax \
        --config.task.train_path=train.jsonl --config.task.eval_path=eval.jsonl

Each JSONL line holds a prompt and its answer (`task.prompt_field`, `task.answer_field`;
e.g. {"prompt": "What is 12 plus 34?", "answer": "46"}). Evaluation samples greedily and checks
the completion with `task.verifier`: "numeric" (the last number, or the one after "####",
equals the reference's), "exact_match", or "module:function" naming your own Python
`fn(completion: str, example: dict) -> float` (called from inside the compiled step).
With `--config.tokenizer.chat_template=True` each prompt is wrapped as a user message.

Without init_from the `tiny` model is trained from scratch on UTF-8 bytes.
Presets (`:arg`): `tiny` (default) and `test` (a 2-layer model and a few steps, for tests).
"""

import ml_collections

from configs.sft_arithmetic import get_config as get_arithmetic_config


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = get_arithmetic_config(arg).unlock()
  config.task = ml_collections.ConfigDict(dict(
      name="jsonl", train_path="", eval_path="", prompt_field="prompt", answer_field="answer",
      verifier="numeric"))
  if arg == "test":
    config.model.vocab_size = 320   # UTF-8 bytes (259 ids) when trained from scratch
  return config.lock()
