"""Offline preference optimisation on your own pairs: DPO, IPO, SPIN (logistic, hinge), SPPO.

config.pipeline = "preference" (settings config.preference = `PreferenceConfig`). The pairs
are the task's examples: chosen = the example's "answer", rejected = its "rejected" text
(config.data.rejected_field), encoded into the rows by the row transform `pair_rows`, switched
on by config.data.preference_pairs=True. One compiled step:

  1. the policy's summed completion log-probs log pi(y_w|x), log pi(y_l|x): ONE forward pass
     over chosen and rejected concatenated on the batch axis ([2B, P + W], W = max(A, R));
  2. the same under the frozen reference (state.extra["ref_params"], the starting params,
     reference="init"), without gradient, once per batch;
  3. the loss on the four [B] vectors (objectives.py: "dpo" / "spin" = the logistic loss,
     "spin_hinge", "ipo", "sppo" with the rows' win rates) and one optimizer update.

Metrics: train/loss, train/grad_norm, perf/tokens (real tokens of the policy's pass) and
objectives.preference_metrics (train/reward_margin, train/reward_accuracy, train/chosen_logp,
train/rejected_logp; implicit rewards r = beta (log pi - log ref)).

Evaluation (per held-out pair) ranks the pair by the policy alone: eval/pair_accuracy
(log pi(y_w|x) > log pi(y_l|x)) and eval/logp_margin (their difference). `evaluate` gets the
params but not state.extra, so the implicit reward (which needs the reference) cannot be
formed there; eval/logp_margin at a step minus at step 0 (eval_at_start) is beta^-1 times the
mean implicit reward margin.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from selfimprove import multiturn
from selfimprove.objectives import (dpo_loss, ipo_loss, preference_metrics, sequence_logprobs,
                                    spin_hinge_loss, sppo_loss)
from selfimprove.pipelines.base import RunPieces
from selfimprove.problems import Problems
from selfimprove.tasks.base import describe_example
from selfimprove.tokenizers import pad_ids
from selfimprove.train_state import TrainState

REFERENCES = ("init",)
PAIR_KEYS = ("rejected_tokens", "rejected_mask")
WIN_RATE_KEYS = ("win_rate_chosen", "win_rate_rejected")


class PairLogprobs(NamedTuple):
  """Summed completion log-probs of a batch's pairs, each float32 [B]."""

  chosen: jax.Array        # log pi(y_w | x)
  rejected: jax.Array      # log pi(y_l | x)
  ref_chosen: jax.Array    # log ref(y_w | x)
  ref_rejected: jax.Array  # log ref(y_l | x)


# loss name -> (PairLogprobs, batch, beta) -> scalar; chosen at build, never branched on in step.
LOSSES: dict[str, Callable[[PairLogprobs, dict, float], jax.Array]] = {
    "dpo": lambda lp, batch, beta: dpo_loss(*lp, beta),
    "spin": lambda lp, batch, beta: dpo_loss(*lp, beta),   # SPIN's logistic loss is DPO's
    "spin_hinge": lambda lp, batch, beta: spin_hinge_loss(*lp, beta),
    "ipo": lambda lp, batch, beta: ipo_loss(*lp, beta),
    "sppo": lambda lp, batch, beta: sppo_loss(*lp, batch["win_rate_chosen"],
                                              batch["win_rate_rejected"], beta),
}


@dataclasses.dataclass(frozen=True)
class PreferenceConfig:
  """Preference settings (config.preference). Errors name the field.

  Attributes:
    loss: "dpo", "ipo", "spin" (logistic, = DPO's), "spin_hinge" or "sppo" (needs
      config.data.win_rates=True: each pair's win_rate_chosen / win_rate_rejected).
    beta: DPO's beta / SPIN's lambda (0.1); IPO's tau; SPPO's 1 / eta (the paper: 0.001).
    reference: "init": the frozen starting params (SPIN/SPPO's previous iterate when the run
      starts from it with init_from).
  """

  loss: str = "dpo"
  beta: float = 0.1
  reference: str = "init"

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"PreferenceConfig.loss={self.loss!r}: must be one of {sorted(LOSSES)}.")
    if not self.beta > 0:
      raise ValueError(f"PreferenceConfig.beta={self.beta!r}: must be > 0.")
    if self.reference not in REFERENCES:
      raise ValueError(f"PreferenceConfig.reference={self.reference!r}: must be one of "
                       f"{REFERENCES} (the frozen starting params).")


def _check_batch(batch: dict, loss: str) -> None:
  """At trace time: the rows carry what the loss reads (else the data settings are off)."""
  missing = [k for k in PAIR_KEYS + (WIN_RATE_KEYS if loss == "sppo" else ()) if k not in batch]
  if missing:
    raise KeyError(f"the preference pipeline (loss={loss!r}) reads batch keys {missing}, which "
                   f"the rows lack: set config.data.preference_pairs=True"
                   f"{' and config.data.win_rates=True' if loss == 'sppo' else ''} (the row "
                   f"transform preference.pair_rows must build these rows).")


def _widen(tokens: jax.Array, mask: jax.Array, width: int, pad_id: int
           ) -> tuple[jax.Array, jax.Array]:
  """Right-pads [B, N] tokens and mask to [B, width]."""
  extra = ((0, 0), (0, width - tokens.shape[1]))
  return jnp.pad(tokens, extra, constant_values=pad_id), jnp.pad(mask, extra)


@dataclasses.dataclass(frozen=True)
class Preference:
  """Batch keys: prompt_tokens/prompt_mask [B, P] (left-padded), answer_tokens/answer_mask
  [B, A] (the chosen answer, right-padded, with <eos>), rejected_tokens/rejected_mask [B, R]
  (likewise), and for "sppo" win_rate_chosen/win_rate_rejected float32 [B]."""

  graphdef: nnx.GraphDef
  optimizer: optax.GradientTransformation
  config: PreferenceConfig
  pad_id: int
  eval_metric_names: tuple[str, ...] = ("pair_accuracy", "logp_margin")

  def init_extra(self, params: dict) -> dict:
    return {"ref_params": params}

  def extra_shardings(self, param_shardings: dict) -> dict:
    return {"ref_params": param_shardings}

  def pair_sequences(self, batch: dict) -> tuple[jax.Array, ...]:
    """(context, context_mask [2B, P], completion, completion_mask [2B, W]): the chosen rows
    then the rejected rows, both completions right-padded to W = max(A, R)."""
    width = max(batch["answer_tokens"].shape[1], batch["rejected_tokens"].shape[1])
    chosen = _widen(batch["answer_tokens"], batch["answer_mask"], width, self.pad_id)
    rejected = _widen(batch["rejected_tokens"], batch["rejected_mask"], width, self.pad_id)
    twice = lambda x: jnp.concatenate([x, x], axis=0)  # noqa: E731
    return (twice(batch["prompt_tokens"]), twice(batch["prompt_mask"]),
            jnp.concatenate([chosen[0], rejected[0]], axis=0),
            jnp.concatenate([chosen[1], rejected[1]], axis=0))

  def pair_logprobs(self, params: dict, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(log p(y_w|x), log p(y_l|x)), each [B], summed over completion tokens; one forward pass."""
    context, context_mask, completion, completion_mask = self.pair_sequences(batch)
    logp = multiturn.completion_logprobs(nnx.merge(self.graphdef, params), context, context_mask,
                                         completion, completion_mask)          # [2B, W]
    summed = sequence_logprobs(logp, completion_mask)                          # [2B]
    rows = batch["prompt_tokens"].shape[0]
    return summed[:rows], summed[rows:]

  def step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
           ) -> tuple[TrainState, dict[str, jax.Array]]:
    del rng   # the pairs are fixed data: no sampling
    cfg = self.config
    _check_batch(batch, cfg.loss)
    ref = jax.lax.stop_gradient(self.pair_logprobs(state.extra["ref_params"], batch))

    def loss_fn(params):
      chosen, rejected = self.pair_logprobs(params, batch)
      loss = LOSSES[cfg.loss](PairLogprobs(chosen, rejected, *ref), batch, cfg.beta)
      return loss, (chosen, rejected)

    (loss, (chosen, rejected)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    tokens = (2 * jnp.sum(batch["prompt_mask"]) + jnp.sum(batch["answer_mask"]) +
              jnp.sum(batch["rejected_mask"]))
    metrics = {"train/loss": loss, "train/grad_norm": optax.tree.norm(grads),
               "perf/tokens": tokens, **preference_metrics(chosen, rejected, *ref, cfg.beta)}
    return state._replace(params=params, opt_state=opt_state), metrics

  def evaluate(self, params: dict, batch: dict[str, jax.Array], rng: jax.Array
               ) -> dict[str, jax.Array]:
    """Per held-out pair [B]: pair_accuracy (1.0 if the policy's summed log-prob of chosen
    exceeds rejected's) and logp_margin (log pi(y_w|x) - log pi(y_l|x))."""
    del rng
    _check_batch(batch, "dpo")
    chosen, rejected = self.pair_logprobs(params, batch)
    return {"pair_accuracy": (chosen > rejected).astype(jnp.float32),
            "logp_margin": chosen - rejected}


def build(pieces: RunPieces, settings: dict) -> Preference:
  """The preference pipeline from the run's pieces; settings = config.preference."""
  return Preference(graphdef=pieces.graphdef, optimizer=pieces.optimizer,
                    config=PreferenceConfig(**settings), pad_id=pieces.pad_id)


# ---- The rows: rejected answers (and SPPO's win rates) from the examples ------------------------

@dataclasses.dataclass(frozen=True)
class PairDataConfig:
  """The config.data fields `pair_rows` reads.

  Attributes:
    max_rejected_len: static length of rejected_tokens with <eos> (0: the longest in the data).
    rejected_field: the example's field holding the rejected answer (text; a JSON number is
      read as its text, as the answer is).
    win_rates: also read win_rate_chosen / win_rate_rejected (numbers in [0, 1]; SPPO).
  """

  max_rejected_len: int = 0
  rejected_field: str = "rejected"
  win_rates: bool = False

  def __post_init__(self):
    if self.max_rejected_len < 0:
      raise ValueError(f"max_rejected_len={self.max_rejected_len}: expected >= 0 (0 = the "
                       f"longest in the data).")
    if not self.rejected_field:
      raise ValueError("rejected_field is empty: name the examples' rejected-answer field.")


def _rejected_text(example: dict, field: str) -> str:
  value = example.get(field)
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    got = "no such field" if field not in example else f"{type(value).__name__} {value!r}"
    raise ValueError(f"field {field!r} (the rejected answer) must be a string, got {got}.")
  return value if isinstance(value, str) else str(value)


def _rejected_ids(encoder: Any, example: dict, field: str) -> list[int]:
  """The rejected answer's ids then <eos> (raises naming the field when it is missing or bad)."""
  return encoder.answer_ids(_rejected_text(example, field))


def _win_rate(example: dict, field: str) -> np.float32:
  value = example.get(field)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
    got = "no such field" if field not in example else repr(value)
    raise ValueError(f"field {field!r} must be a number in [0, 1] (SPPO's estimated win rate, "
                     f"config.data.win_rates=True), got {got}.")
  return np.float32(value)


class PairRowEncoder:
  """Wraps the run's row encoder: adds rejected_tokens/rejected_mask [R] (right-padded, the
  rejected answer then <eos>) and, with win_rates, win_rate_chosen/win_rate_rejected float32 [].
  Picklable for Grain."""

  def __init__(self, rows: Any, rejected_len: int, config: PairDataConfig):
    self.rows = rows
    self.encoder = rows.encoder
    self.prompt_len, self.answer_len = rows.prompt_len, rows.answer_len
    self.rejected_len = rejected_len
    self.config = config

  def __call__(self, item: tuple[int, dict]) -> dict[str, np.ndarray]:
    row = self.rows(item)
    record_id, example = item
    try:
      ids = _rejected_ids(self.encoder, example, self.config.rejected_field)
      if len(ids) > self.rejected_len:
        raise ValueError(f"the rejected answer is {len(ids)} tokens, more than the batches' "
                         f"{self.rejected_len}.")
      if self.config.win_rates:
        row.update({key: _win_rate(example, key) for key in WIN_RATE_KEYS})
    except ValueError as error:
      raise ValueError(f"{describe_example(example, record_id, 'record')}: {error}") from None
    row["rejected_tokens"], row["rejected_mask"] = pad_ids(
        ids, self.rejected_len, self.encoder.tokenizer.pad_id, "right")
    return row


def pair_rows(rows: Any, data: dict, task: Any, seed: int) -> PairRowEncoder:
  """The rows of a run with config.data.preference_pairs=True (the registered row transform).

  Reads every train and eval example once: each needs its rejected answer (and win rates), and
  the longest rejected answer sets the static length R unless config.data.max_rejected_len is
  set. Every problem is reported at once, naming the example's file:line and the field.
  """
  del seed   # the pairs are the data's; nothing is drawn
  if not hasattr(rows, "encoder"):
    raise ValueError("preference_pairs needs the run's plain row encoder; it cannot be combined "
                     "with another row transform (e.g. correction_demos).")
  config = PairDataConfig(**{k: data[k] for k in ("max_rejected_len", "rejected_field",
                                                   "win_rates") if k in data})
  warm = data.get("train_examples", "train") == "warm_start"
  splits = {"train": task.warm_start_examples() if warm else task.examples("train"),
            "eval": task.examples("eval")}
  problems, longest = Problems(), 0
  for split, examples in splits.items():
    for index, example in enumerate(examples):
      try:
        length = len(_rejected_ids(rows.encoder, example, config.rejected_field))
        if config.win_rates:
          for key in WIN_RATE_KEYS:
            _win_rate(example, key)
      except ValueError as error:
        problems.add(f"{describe_example(example, index, split)}: {error}")
        continue
      if config.max_rejected_len and length > config.max_rejected_len:
        problems.add(f"{describe_example(example, index, split)}: the rejected answer is {length} "
                     f"tokens, more than config.data.max_rejected_len={config.max_rejected_len}; "
                     f"raise it (0 = the longest in the data) or shorten the answer.")
      longest = max(longest, length)
  problems.raise_if_any()
  return PairRowEncoder(rows, config.max_rejected_len or longest, config)


__all__ = ["LOSSES", "PairDataConfig", "PairLogprobs", "PairRowEncoder", "Preference",
           "PreferenceConfig", "build", "pair_rows"]
