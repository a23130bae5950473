"""The training state: a plain pytree of arrays, sharded by the trainer and saved whole."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax


class TrainState(NamedTuple):
  step: jax.Array             # [] int32, steps completed
  params: dict                # pure dict of parameter arrays (nnx.to_pure_dict layout)
  opt_state: Any              # optax state for `params`
  rng: jax.Array              # [2] uint32 key data; step t uses fold_in(key, t)
  extra: Any                  # pipeline-specific state (reference params, pools, ...); {} if none
  skipped_updates: jax.Array  # [] int32, updates skipped for non-finite loss/gradients in total
  consecutive_skips: jax.Array  # [] int32, ... in a row, up to and including the last step


def step_key(state: TrainState) -> jax.Array:
  """The random key of the step about to run: a pure function of (seed key, step)."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
