"""A tiny sweep for tests and a first try: learning rate x seed on the `test` SFT preset.

    python launch/sweep.py --sweep=configs/sweeps/sft_lr_test.py --workdir=/tmp/sft_lr_sweep \
        --parallel=2

4 trials ("learning_rate=0.001,seed=0", ...) of configs/sft_arithmetic.py:test, 8 steps each
(seconds on a CPU); DIR/results.md gives eval/accuracy per trial and its mean +- std over the
two seeds per learning rate.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.base = "configs/sft_arithmetic.py:test"
  config.grid = {"optimizer": {"learning_rate": [1e-3, 3e-3]}, "seed": [0, 1]}
  config.fixed = {"train": {"num_steps": 8}}   # nested dicts: ConfigDict keys have no dots
  return config
