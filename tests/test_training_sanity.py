"""Gradients flow through every parameter and a few AdamW steps lower the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from selfimprove.models import init_model
from selfimprove.objectives import (masked_mean, next_token_loss, teacher_forced_exact_match,
                                    token_logprobs)


def test_token_logprobs_and_next_token_loss_match_hand_computation():
  logits = jnp.array([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [3.0, 0.0, 0.0]]])
  tokens = jnp.array([[2, 1, 0]])
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(token_logprobs(logits, tokens)[0],
                             [log_softmax[0, 0, 2], log_softmax[0, 1, 1], log_softmax[0, 2, 0]], rtol=1e-5)
  # Targets are tokens 1 and 2, predicted from positions 0 and 1; only token 2 is in the mask.
  loss = next_token_loss(logits, tokens, jnp.array([[False, False, True]]))
  np.testing.assert_allclose(loss, -log_softmax[0, 1, 0], rtol=1e-6)
  assert masked_mean(jnp.ones(3), jnp.zeros(3, bool)) == 0.0


def test_adamw_steps_lower_the_loss_and_every_parameter_gets_gradient(small_config):
  graphdef, params = init_model(small_config)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, small_config.vocab_size, (8, 16)).astype(np.int32)
  mask = np.ones_like(tokens, bool)
  mask[:4, :3] = False   # some left padding
  tokens[~mask] = 0
  optimizer = optax.adamw(3e-3)
  opt_state = optimizer.init(params)

  def loss_fn(params):
    logits, _ = nnx.merge(graphdef, params)(tokens, mask)
    return next_token_loss(logits, tokens, mask)

  @jax.jit
  def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  losses = []
  for step in range(10):
    params, opt_state, loss, grads = train_step(params, opt_state)
    if step == 0:
      flat = nnx.to_flat_state(grads)
      zero = ["/".join(map(str, path)) for path, g in flat if not bool(jnp.any(g[...] != 0))]
      assert not zero, f"parameters with all-zero gradients: {zero}"
    losses.append(float(loss))
  assert losses[-1] < 0.7 * losses[0], losses


def test_teacher_forced_exact_match_is_greedy_exact_match_on_the_targets():
  # Row 0: argmax at positions 0,1 predicts tokens 1,2 -> matched. Row 1: position 1 predicts 0,
  # target 2 -> not matched. Row 2: the miss is at a non-target position -> matched.
  tokens = jnp.array([[3, 1, 2], [3, 1, 2], [3, 0, 2]])
  logits = jax.nn.one_hot(jnp.array([[1, 2, 0], [1, 0, 0], [1, 2, 0]]), 4)
  mask = jnp.array([[False, True, True], [False, True, True], [False, False, True]])
  np.testing.assert_array_equal(teacher_forced_exact_match(logits, tokens, mask), [1.0, 0.0, 1.0])
