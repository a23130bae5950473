"""Self-judged RL on 3-digit addition: SFT, then judge training, then GRPO whose only reward is
the model's own P(True) (SSR-Zero style; the verifier measures but never rewards).

    python launch/train.py --config=configs/self_judged_rl_arithmetic.py:tiny --workdir=/tmp/sj

One command runs three stages, each resumable:
  DIR/warm_start/warm_start  SFT (configs/rl_arithmetic.py's warm start: stops at 50% of
                             training rows right, so that there is room to improve);
  DIR/warm_start             judge training (selfimprove/pipelines/judge_training.py): the
                             P(True) judge "{problem}{candidate}=" -> "1" / "0" fitted to the
                             verifier's labels of the model's own samples, mixed with the task
                             loss; its log holds the judge's AUROC and the accuracy before
                             (step 0) and after;
  DIR                        GRPO (selfimprove/pipelines/rl.py) with rewards.self_judge
                             (judge = the current policy, as SSR-Zero) as the only reward.
The run logs train/verified_accuracy (the verifier's verdict on the samples, never a reward),
eval/accuracy, eval/judge_auroc, eval/judge_score and the rest of the judge measurement at
every evaluation, and the run summary flags reward hacking (flags.json).

The upper reference, verifier-rewarded RL from the same judge-trained start with the same steps
and samples:

    python launch/train.py --config=configs/self_judged_rl_arithmetic.py:tiny --workdir=/tmp/vr \
      --config.init_from=/tmp/sj/warm_start/params \
      --config.rl.rewards.verifier.weight=1 --config.rl.rewards.self_judge.weight=0

The no-training reference is step 0 of either run. bench/self_judging_seeds.py runs all of it
for several seeds (docs/results/self_judging.md). The char tokenizer writes only the task's
alphabet, so the judge template is digits and symbols; with a real tokenizer use words
(judging.P_TRUE_TEMPLATE) in judge_training.template and rl.rewards.self_judge.template alike.

Other single rewards from the same start: `--config.rl.rewards.self_judge.weight=0` with
`--config.rl.rewards.pairwise.weight=1`, `...self_certainty.weight=1` or `...majority.weight=1`.

Presets: `tiny`; `test` (2-layer model, a few steps of each stage, for tests).
"""

import ml_collections

from configs.rl_arithmetic import JUDGE_TEMPLATE, PAIRWISE_TEMPLATE
from configs.rl_arithmetic import get_config as get_rl_config


def judge_eval(tiny: bool) -> dict:
  """What every evaluation measures of the judge (config.*.judge_eval)."""
  return dict(enabled=True, num_candidates=16 if tiny else 4, best_of=(1, 4, 16) if tiny else (1, 4),
              temperature=1.0, pairwise_template=PAIRWISE_TEMPLATE, pairwise_yes="1",
              pairwise_no="0", borda_power=0.5)


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in ("tiny", "test"):
    raise ValueError(f"configs/self_judged_rl_arithmetic.py: unknown preset {arg!r}; use 'tiny' "
                     "or 'test'.")
  tiny = arg == "tiny"
  config = get_rl_config(arg).unlock()
  sft = config.warm_start

  # Stage 2: judge training from the SFT warm start.
  judge = get_rl_config(arg).unlock()
  judge.pipeline = "judge_training"
  del judge.rl
  judge.warm_start = sft
  judge.judge_training = ml_collections.ConfigDict(dict(
      template=JUDGE_TEMPLATE, yes="1", no="0", num_candidates=8 if tiny else 2,
      temperature=1.0, max_new_tokens=0, judge_weight=1.0, task_weight=1.0,
      judge_eval=judge_eval(tiny)))
  if tiny:
    judge.optimizer.update(dict(learning_rate=3e-4, warmup_steps=20, decay="constant"))
    judge.train.update(dict(num_steps=400, global_batch_size=16, steps_per_call=4,
                            log_every=20, eval_every=200, checkpoint_every=100))
  config.warm_start = judge.lock()

  # Stage 3: GRPO with the self-judge as the only reward.
  for source in ("verifier", "length", "format"):
    config.rl.rewards[source].weight = 0.0
  config.rl.rewards.self_judge.weight = 1.0
  config.rl.judge_eval = judge_eval(tiny)
  if tiny:
    # Chosen on the tuning split (task.split_seed=1) between configs/rl_arithmetic.py's 1e-4 and
    # 1e-5: at 1e-4 every self-generated reward (P(True), self-certainty, majority) collapsed
    # held-out accuracy, at 1e-5 the majority reward improved it; verifier RL improves at both.
    config.optimizer.learning_rate = 1e-5
  else:
    config.rl.update(dict(num_iterations=1, kl_coef=0.0))
  return config.lock()
