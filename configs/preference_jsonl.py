"""Offline preference optimisation (DPO, IPO, SPIN, SPPO) on your own preference pairs (JSONL).

    python launch/train.py --config=configs/preference_jsonl.py --workdir=/runs/dpo \
        --config.init_from=/runs/sft/params \
        --config.task.train_path=pairs_train.jsonl --config.task.eval_path=pairs_eval.jsonl

Each JSONL line is one pair: {"prompt": "What is 12 plus 34?", "answer": "46", "rejected": "45"}
(the chosen answer is `task.answer_field`, the rejected one `data.rejected_field`; a JSON number
is read as its text). Start from a model that already answers your prompts (a converted
instruct model, or the `params` of a configs/sft_jsonl.py run): the reference is that starting
model, frozen (`preference.reference="init"`).

Losses (`--config.preference.loss=`): "dpo" (default, beta 0.1), "ipo", "spin" (the logistic
loss with rejected = your model's own samples, chosen = the data's answers; "spin_hinge" its
hinge variant) and "sppo", which also reads each line's "win_rate_chosen" and
"win_rate_rejected" in [0, 1] (add `--config.data.win_rates=True`; the paper's beta is 0.001).
Logged: train/loss, train/reward_margin, train/reward_accuracy, train/chosen_logp,
train/rejected_logp; eval/pair_accuracy (held-out pairs the policy ranks chosen first) and
eval/logp_margin, at step 0 too. Expected result: not measured yet.

Presets (`:arg`): `tiny` (default: the tiny model from scratch, UTF-8 bytes, unless init_from)
and `test` (a 2-layer model and a few steps, for tests).
"""

import ml_collections

from configs.sft_jsonl import get_config as get_sft_config


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = get_sft_config(arg).unlock()
  config.pipeline = "preference"
  config.preference = ml_collections.ConfigDict(dict(loss="dpo", beta=0.1, reference="init"))
  # The pairs (selfimprove/pipelines/preference.py pair_rows): rejected answers padded to
  # max_rejected_len tokens with <eos> (0 = the longest in the data).
  config.data.preference_pairs = True
  config.data.max_rejected_len = 0
  config.data.rejected_field = "rejected"
  config.data.win_rates = False
  config.train.eval_at_start = True
  config.optimizer.update(dict(learning_rate=1e-3 if arg == "test" else 1e-6, warmup_steps=0,
                               decay="constant", weight_decay=0.0))
  return config.lock()
