"""SCoRe on your own data: two attempts per prompt with a plain-English correction instruction.

    python launch/train.py --config=configs/score_jsonl.py --workdir=/runs/score \
        --config.init_from=/runs/sft/params \
        --config.task.train_path=train.jsonl --config.task.eval_path=eval.jsonl

Start from a model that already answers your prompts (a converted instruct model, or the
`params` of a configs/sft_jsonl.py run: its tokenizer comes along). The verifier, data fields
and tokenizer settings are those of configs/sft_jsonl.py. Eval figures: eval/acc_t1,
eval/acc_t2, eval/delta, eval/delta_i2c, eval/delta_c2i (held-out, greedy by default).
`score.max_new_tokens` (0 = the longest reference answer) bounds each attempt: raise it for
models that reason before answering. With `tokenizer.chat_template=True` the correction
instruction is rendered as a user turn between the two attempts by the model's chat template.
Presets (`:arg`): `tiny` (default) and `test` (a few steps, for tests).
"""

import ml_collections

from configs.sft_jsonl import get_config as get_sft_config

INSTRUCTION = " There might be a mistake in that answer. Please check it and answer again: "


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = get_sft_config(arg).unlock()
  config.pipeline = "score"
  config.score = ml_collections.ConfigDict(dict(
      correction_instruction=INSTRUCTION, max_new_tokens=0,
      stage1_steps=2 if arg == "test" else 100,
      alpha=10.0, beta1=0.01, beta2=0.1, kl_estimator="exact", advantage="reinforce",
      num_samples_per_prompt=2, temperature=1.0, mode="score",
      eval_greedy=True, eval_temperature=1.0))
  config.train.eval_at_start = True
  config.optimizer.update(dict(learning_rate=1e-5 if arg != "test" else 1e-4, warmup_steps=0,
                               decay="constant"))
  return config.lock()
