"""SCoRe against the paper's baselines and ablations over seeds 0-2 (bench/score_seeds.py's arms).

    python launch/sweep.py --sweep=configs/sweeps/score_seeds.py --workdir=/tmp/score_sweep \
        --parallel=2

7 methods (`config.score.mode`) x 3 seeds = 21 trials of configs/score_arithmetic.py:tiny,
each with `--config.seed=S --config.warm_start.seed=S --config.score.mode=M`, named
"mode=M,seed=S". bench/score_seeds.py starts the non-SCoRe methods from the SCoRe run's warm
start (`--config.init_from=DIR/seed{S}/score/warm_start/params`); here every trial trains that
same warm start itself (the same config and seed, so the same model on one machine), which
keeps the trials independent: any order, any node. DIR/results.md has each trial's final
greedy eval figures and their mean +- sample std over seeds per method; DIR/comparison.png
draws eval/delta (pick another with --metric). The bench script's step-0 rows and sampled
figures are not part of a sweep.
"""

import ml_collections

MODES = ("score", "multiturn_rl_baseline", "offline_star_baseline", "online_star_baseline",
         "pair_sft_baseline", "score_without_stage1", "score_without_shaping")
SEEDS = (0, 1, 2)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.base = "configs/score_arithmetic.py:tiny"
  config.trials = [{"score.mode": mode, "seed": seed, "warm_start.seed": seed}
                   for mode in MODES for seed in SEEDS]
  config.name_keys = ["score.mode", "seed"]   # warm_start.seed always equals seed
  config.metric = "eval/delta"
  return config
