"""Optimizer and schedule built from OptimizerConfig."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from selfimprove.optim import OptimizerConfig, make_optimizer, make_schedule


def test_warmup_then_cosine_decay_to_the_end_factor():
  schedule = make_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10, decay="cosine",
                                           end_learning_rate_factor=0.1), num_steps=110)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(schedule(110), 0.1, atol=1e-6)
  linear = make_schedule(OptimizerConfig(learning_rate=2.0, decay="linear", end_learning_rate_factor=0.5),
                         num_steps=100)
  np.testing.assert_allclose([linear(0), linear(50), linear(100)], [2.0, 1.5, 1.0], atol=1e-6)
  # schedule_steps fixes the schedule's length whatever this run's num_steps is.
  legged = make_schedule(OptimizerConfig(learning_rate=1.0, schedule_steps=110, warmup_steps=10),
                         num_steps=20)
  np.testing.assert_allclose(legged(60), schedule(60), atol=1e-7)


def test_gradient_accumulation_updates_every_k_steps_with_the_mean_gradient():
  optimizer = make_optimizer(OptimizerConfig(learning_rate=0.1, decay="constant", grad_clip_norm=0.0,
                                             grad_accum_steps=2), num_steps=10)
  reference = make_optimizer(OptimizerConfig(learning_rate=0.1, decay="constant", grad_clip_norm=0.0),
                             num_steps=10)
  params = {"w": jnp.array([1.0, -2.0])}
  state = optimizer.init(params)
  first, state = optimizer.update({"w": jnp.array([1.0, 3.0])}, state, params)
  assert not np.any(first["w"])  # the first micro-step only accumulates
  second, state = optimizer.update({"w": jnp.array([3.0, 1.0])}, state, params)
  expected, _ = reference.update({"w": jnp.array([2.0, 2.0])}, reference.init(params), params)
  np.testing.assert_allclose(second["w"], expected["w"], rtol=1e-6)


def test_clipping_bounds_the_global_norm():
  optimizer = make_optimizer(OptimizerConfig(learning_rate=1.0, decay="constant", grad_clip_norm=1.0,
                                             b1=0.0, b2=0.0, eps=0.0), num_steps=1)
  clip = optax.clip_by_global_norm(1.0)
  clipped, _ = clip.update({"w": jnp.array([30.0, 40.0])}, clip.init(None))
  np.testing.assert_allclose(clipped["w"], [0.6, 0.8], rtol=1e-6)
  assert optimizer.init({"w": jnp.zeros(2)}) is not None


@pytest.mark.parametrize("field, value, message", [
    ("decay", "step", "optimizer.decay"), ("learning_rate", 0.0, "optimizer.learning_rate"),
    ("grad_accum_steps", 0, "optimizer.grad_accum_steps")])
def test_optimizer_config_errors_name_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    OptimizerConfig(**{field: value})
