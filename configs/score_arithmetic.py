"""SCoRe (multi-turn self-correction RL) on integer arithmetic, from a saved warm-start model.

    # 1. warm start (SFT), 2. SCoRe from its parameters:
    python launch/train.py --config=configs/sft_arithmetic.py:tiny --workdir=/tmp/sft
    python launch/train.py --config=configs/score_arithmetic.py:tiny --workdir=/tmp/score \\
        --config.init_from=/tmp/sft/params

Baselines are switches of the same pipeline: `--config.score.mode=multiturn_rl_baseline`
(no Stage I, alpha = 0) and `--config.score.mode=star_baseline` (SFT on the model's own
traces whose second attempt is correct).

Status: the pipeline, its losses and metrics are tested; the demo's task variant and its
measured result are still to come (issue 4), so `tiny` has no expected result yet.
Presets: `tiny`, `test` (2-layer model, a few steps, for tests).
"""

import ml_collections

from configs.sft_arithmetic import get_config as get_sft_config


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = get_sft_config(arg).unlock()
  config.pipeline = "score"
  config.score = ml_collections.ConfigDict(dict(
      correction_instruction="=",   # appended after attempt 1; must use the task's alphabet
      stage1_steps=100 if arg == "tiny" else 2,
      alpha=10.0, beta1=0.01, beta2=0.1, kl_estimator="k3", advantage="reinforce",
      num_samples_per_prompt=2, temperature=1.0, mode="score",
      eval_greedy=True, eval_temperature=1.0))
  if arg == "tiny":
    config.optimizer.update(dict(learning_rate=1e-5, warmup_steps=0, decay="constant"))
    config.train.update(dict(num_steps=400, global_batch_size=32, steps_per_call=4, log_every=20,
                             eval_every=100, checkpoint_every=100))
  return config.lock()
