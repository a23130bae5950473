"""A training run's pieces, built once from the config before any state exists.

`build_run(config)` makes the mesh, the model's graph and shardings, the
optimizer, the run's tokenizer, the task and its data, the verifier, the
pipeline, the abstract train state with its shardings, the Grain training
iterator and the fixed eval batches. The trainer (selfimprove/train.py) then
only initialises or restores state and runs the loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from selfimprove import data as data_lib
from selfimprove import run_identity, run_setup, sharding
from selfimprove.models import Transformer, TransformerConfig
from selfimprove.optim import OptimizerConfig, make_optimizer, make_schedule, train_only
from selfimprove.pipelines.base import Pipeline
from selfimprove.tokenizers import Tokenizer
from selfimprove.train_state import TrainState


@dataclasses.dataclass
class Run:
  """Everything a run is built from (see the module docstring)."""

  config: ml_collections.ConfigDict
  mesh: Mesh
  model_config: TransformerConfig
  graphdef: nnx.GraphDef
  optimizer: optax.GradientTransformation
  schedule: Callable[[int], Any]
  grad_accum_steps: int
  tokenizer: Tokenizer
  data: run_setup.RunData
  verifier: Any
  pipeline: Pipeline
  abstract_state: TrainState
  state_shardings: TrainState
  iterator: Any                       # Grain iterator of this process's rows, resumable
  eval_batches: list[dict]
  identity: dict                      # what defines the run, saved with every checkpoint

  @property
  def rules(self):
    return self.model_config.sharding_rules

  def fresh_params(self) -> dict:
    """Parameters initialised from config.seed (call under jit for the trainer's values)."""
    model = Transformer(self.model_config, rngs=nnx.Rngs(params=self.config.seed))
    return nnx.to_pure_dict(nnx.state(model))

  def state_from(self, params: dict) -> TrainState:
    """Step 0's train state around `params`."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.init(params),
                      rng=jax.random.key_data(jax.random.key(self.config.seed)),
                      extra=self.pipeline.init_extra(params),
                      skipped_updates=jnp.zeros((), jnp.int32),
                      consecutive_skips=jnp.zeros((), jnp.int32))


def _state_shardings(abstract_state: TrainState, param_shardings: dict, pipeline: Pipeline,
                     optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  replicated = sharding.replicated(mesh)
  # Optimizer state that mirrors the params (Adam moments) is sharded like them; a frozen
  # parameter's slot (optax.MaskedNode, no arrays) stays as it is; the rest is replicated.
  masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
  opt_shardings = optax.tree_map_params(
      optimizer, lambda leaf, s: leaf if masked(leaf) else s, abstract_state.opt_state,
      param_shardings, transform_non_params=lambda _: replicated, is_leaf=masked)
  extra_fn = getattr(pipeline, "extra_shardings", None)
  extra = extra_fn(param_shardings) if extra_fn else jax.tree.map(lambda _: replicated,
                                                                   abstract_state.extra)
  return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                    rng=replicated, extra=extra, skipped_updates=replicated,
                    consecutive_skips=replicated)


def build_run(config: ml_collections.ConfigDict) -> Run:
  """Builds every piece of the run described by a validated config."""
  devices = jax.devices()
  if config.mesh.num_devices > 0:
    devices = devices[:config.mesh.num_devices]
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
  model_config = run_setup.build_model_config(config)
  task = run_setup.build_task(config)
  tokenizer, tokenizer_source = run_setup.build_run_tokenizer(config, task, model_config)
  logging.info("Tokenizer: %s", tokenizer_source)
  data = run_setup.build_data(config, task, tokenizer)
  verifier = run_setup.build_verifier(task, tokenizer, data)

  num_steps = config.train.num_steps
  optimizer_config = OptimizerConfig(**config.optimizer)
  abstract_model = nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract_model)
  param_shardings = nnx.to_pure_dict(sharding.state_shardings(abstract_params, mesh,
                                                              model_config.sharding_rules))
  optimizer = make_optimizer(optimizer_config, num_steps)
  if model_config.lora_rank:
    # LoRA: only the adapters train; the base weights get no update and no optimizer state.
    optimizer = train_only(optimizer, nnx.to_pure_dict(abstract_params),
                           lambda path: path[-1].endswith(("_lora_a", "_lora_b")))
  pipeline = run_setup.build_pipeline(config, graphdef, optimizer, data, verifier, task)

  run = Run(config=config, mesh=mesh, model_config=model_config, graphdef=graphdef,
            optimizer=optimizer, schedule=make_schedule(optimizer_config, num_steps),
            grad_accum_steps=optimizer_config.grad_accum_steps, tokenizer=tokenizer, data=data,
            verifier=verifier, pipeline=pipeline, abstract_state=None, state_shardings=None,
            iterator=None, eval_batches=[], identity=run_identity.run_identity(
                config, run_identity.fingerprint_examples(data.records)))
  run.abstract_state = jax.eval_shape(lambda: run.state_from(run.fresh_params()))
  run.state_shardings = _state_shardings(run.abstract_state, param_shardings, pipeline, optimizer,
                                         mesh)
  run.iterator = data_lib.make_iterator(
      data.train, data.train_rows, global_batch_size=config.train.global_batch_size,
      seed=config.seed, shuffle=config.data.shuffle)
  run.eval_batches = data_lib.eval_batches(data.eval, data.eval_rows, config.eval.batch_size)
  return run
