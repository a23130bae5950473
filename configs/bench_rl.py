"""Run configs for bench/rl_iteration.py: our pipelines at the benchmark's shapes.

    python bench/rl_iteration.py                       # both rows, peers included
    python launch/train.py --config=configs/bench_rl.py:rl --workdir=/tmp/bench_rl   # same run, trained

Presets:
  `rl`    — GRPO (selfimprove/pipelines/rl.py) at the shape of issue 15's RL row: the `tiny`
            model preset exactly (vocab 512, 4 layers, width 256), 8 prompts x 8 samples,
            16 new tokens, the arithmetic task's verifier as the rule-based 0/1 reward, KL to
            the frozen reference with coefficient 0.04 (k3), one policy-gradient update per
            batch (num_iterations=1), one step per call. Random initial weights: no warm start.
  `score` — the SCoRe demo's step (configs/score_arithmetic.py:tiny, same model, batch,
            samples and optimizer) with one step per call and no warm start.
Neither evaluates during timing (the benchmark calls the compiled step only).
"""

import ml_collections

from configs.rl_arithmetic import get_config as get_rl_config
from configs.score_arithmetic import get_config as get_score_config
from selfimprove.models import get_preset

NUM_PROMPTS = 8
GROUP_SIZE = 8
MAX_NEW_TOKENS = 16
KL_COEF = 0.04


def get_config(arg: str = "rl") -> ml_collections.ConfigDict:
  if arg == "rl":
    config = get_rl_config("tiny").unlock()
    config.model.vocab_size = get_preset("tiny").vocab_size   # the preset's shape, not the task's
    config.rl.update(dict(group_size=GROUP_SIZE, max_new_tokens=MAX_NEW_TOKENS, kl_coef=KL_COEF,
                          kl_estimator="k3", num_iterations=1))
    config.rl.judge_eval.enabled = False
    config.train.update(dict(global_batch_size=NUM_PROMPTS, steps_per_call=1, num_steps=1000,
                             eval_at_start=False, eval_every=1000, checkpoint_every=1000,
                             log_every=10))
  elif arg == "score":
    config = get_score_config("tiny").unlock()
    config.train.update(dict(steps_per_call=1, eval_at_start=False, eval_every=1000,
                             checkpoint_every=1000, log_every=10))
  else:
    raise ValueError(f"configs/bench_rl.py: unknown preset {arg!r}; use 'rl' or 'score'.")
  del config["warm_start"]   # random weights: the benchmark measures speed, not learning
  return config.lock()
