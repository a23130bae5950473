"""Supervised fine-tuning on (prompt, answer) pairs; eval = exact match of greedy answers.

The loss is next-token cross-entropy on the answer tokens only (the prompt is
context); train/exact_match is the share of the batch's rows whose answer greedy
decoding would reproduce (every answer token is the argmax under teacher forcing).
Evaluation samples greedily from the prompt (up to the answer length, or
`max_new_tokens` in config.sft) and scores the completion with the run's
verifier (the task's in-graph one, or its host function).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from selfimprove.objectives import next_token_loss, teacher_forced_exact_match
from selfimprove.pipelines.base import RunPieces
from selfimprove.sampling import SamplingConfig, sample
from selfimprove.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class SFT:
  """Batch keys: prompt_tokens/prompt_mask [batch, prompt_len] (left-padded),
  answer_tokens/answer_mask [batch, answer_len] (right-padded), and what the verifier reads."""

  graphdef: nnx.GraphDef
  optimizer: optax.GradientTransformation
  verifier: Callable[..., Any]  # (tokens, mask, batch) -> [batch] rewards
  eval_sampling: SamplingConfig
  eval_metric_names: tuple[str, ...] = ("accuracy",)

  def init_extra(self, params: dict) -> dict:
    return {}

  def step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
           ) -> tuple[TrainState, dict[str, jax.Array]]:
    del rng  # teacher forcing is deterministic
    tokens = jnp.concatenate([batch["prompt_tokens"], batch["answer_tokens"]], axis=1)
    mask = jnp.concatenate([batch["prompt_mask"], batch["answer_mask"]], axis=1)
    loss_mask = jnp.concatenate([jnp.zeros_like(batch["prompt_mask"]), batch["answer_mask"]], axis=1)

    def loss_fn(params):
      logits, _ = nnx.merge(self.graphdef, params)(tokens, mask)
      exact = teacher_forced_exact_match(jax.lax.stop_gradient(logits), tokens, loss_mask)
      return next_token_loss(logits, tokens, loss_mask), jnp.mean(exact)

    (loss, exact_match), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"train/loss": loss, "train/exact_match": exact_match,
               "train/grad_norm": optax.tree.norm(grads), "perf/tokens": jnp.sum(mask)}
    return state._replace(params=params, opt_state=opt_state), metrics

  def evaluate(self, params: dict, batch: dict[str, jax.Array], rng: jax.Array
               ) -> dict[str, jax.Array]:
    model = nnx.merge(self.graphdef, params)
    rollout = sample(model, batch["prompt_tokens"], batch["prompt_mask"], rng, self.eval_sampling)
    correct = self.verifier(rollout.tokens, rollout.completion_mask, batch)
    return {"accuracy": correct}


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """SFT settings (an optional config.sft section).

  Attributes:
    max_new_tokens: greedy evaluation's completion budget (0: the answer length,
      i.e. the longest reference answer with its <eos>).
  """

  max_new_tokens: int = 0

  def __post_init__(self):
    if self.max_new_tokens < 0:
      raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}.")


def build(pieces: RunPieces, settings: dict) -> SFT:
  """SFT from the run's pieces and its settings (SFTConfig fields)."""
  config = SFTConfig(**settings)
  eval_sampling = SamplingConfig(
      max_new_tokens=config.max_new_tokens or pieces.answer_len, greedy=True,
      stop_token_ids=pieces.stop_token_ids, pad_token_id=pieces.pad_id)
  return SFT(graphdef=pieces.graphdef, optimizer=pieces.optimizer, verifier=pieces.verifier,
             eval_sampling=eval_sampling)
