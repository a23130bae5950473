"""SCoRe (multi-turn self-correction RL) on 3-digit addition: SFT warm start, then SCoRe.

    python launch/train.py --config=configs/score_arithmetic.py:tiny --workdir=/tmp/score

One command runs both stages: the `warm_start` section (a whole SFT run config)
trains first in DIR/warm_start, with some rows as two-turn correction demos so
the model knows the format (selfimprove/correction_demos.py), and stops while
attempt 1 is still often wrong (70% of training rows right); SCoRe then starts
from its parameters (`init_from`). It prints a before/after table of the eval
figures (eval/acc_t1, eval/acc_t2, eval/delta, eval/delta_i2c, eval/delta_c2i)
and saves their curves in DIR/eval_curves.png. Relaunching resumes either stage.

Baselines and ablations are named losses of the same pipeline (`--config.score.mode=`):
`multiturn_rl_baseline` (no Stage I, alpha = 0), `star_baseline` (online STaR: SFT on the
model's own traces of each step whose second attempt is correct), `score_without_stage1`,
`score_without_shaping`. `--config.score.kl_estimator=exact` uses the paper's exact KL. To start from another model instead, pass
`--config.init_from=DIR/params` (the warm start is then skipped).

Expected result (tiny, 2-core CPU, 3 min for seed 0): greedy held-out Delta(t1, t2) from
about -1.4 points at the warm start to +2..+6 after SCoRe (seeds 0-2); details, baselines
and commands in docs/results/score.md.
Presets: `tiny`, `test` (2-layer model, a few steps, for tests).
"""

import ml_collections

from configs.sft_arithmetic import get_config as get_sft_config

INSTRUCTION = "="   # appended after attempt 1; must use the task's alphabet


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = get_sft_config(arg).unlock()
  if arg == "tiny":
    config.task.update(dict(min_digits=3, max_digits=3))
    config.model.vocab_size = 32        # the task's 17 symbols; a smaller, faster softmax
  warm_start = get_sft_config(arg).unlock()
  warm_start.task = ml_collections.ConfigDict(config.task.to_dict())
  warm_start.model = ml_collections.ConfigDict(config.model.to_dict())
  warm_start.data.update(dict(correction_demos=0.5, wrong_draft_fraction=0.5,
                              correction_instruction=INSTRUCTION))
  if arg == "tiny":
    # Stop while attempt 1 is still often wrong: once 70% of training rows (plain and demo)
    # come out right under greedy decoding, which lands between ~300 and ~1000 steps by seed.
    warm_start.train.update(dict(num_steps=1000, eval_every=1000, checkpoint_every=100,
                                 stop_metric="train/exact_match", stop_threshold=0.7))
    warm_start.eval.num_examples = 1024
  config.warm_start = warm_start.lock()

  config.pipeline = "score"
  config.score = ml_collections.ConfigDict(dict(
      correction_instruction=INSTRUCTION,
      stage1_steps=200 if arg == "tiny" else 2,
      alpha=10.0, beta1=0.01, beta2=0.1, kl_estimator="k3", advantage="reinforce",
      num_samples_per_prompt=2, temperature=1.0, mode="score",
      eval_greedy=True, eval_temperature=1.0))
  config.train.eval_at_start = True
  if arg == "tiny":
    config.optimizer.update(dict(learning_rate=1e-4, warmup_steps=0, decay="constant"))
    config.train.update(dict(num_steps=300, global_batch_size=32, steps_per_call=4, log_every=20,
                             eval_every=100, checkpoint_every=100))
    config.eval.num_examples = 1024
  return config.lock()
