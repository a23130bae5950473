"""Gradients flow through every parameter and a few AdamW steps lower the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from selfimprove.models import init_model
from selfimprove.objectives import (first_argmax, masked_mean, next_token_loss,
                                    teacher_forced_exact_match,
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


def _reference_token_logprobs(logits, targets):
  """The plain definition: log_softmax, then pick the target (autodiff's gradient)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def test_token_logprobs_value_and_gradient_match_log_softmax():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, 5, 11)) * 4, jnp.float32)
  logits = logits.at[0, 1, 3].set(-jnp.inf)   # a masked-out vocabulary entry
  targets = jnp.asarray(rng.integers(0, 11, (3, 5)), jnp.int32).at[0, 1].set(4)
  weights = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)  # any per-token cotangent
  ours = jax.value_and_grad(lambda z: jnp.sum(weights * token_logprobs(z, targets)))(logits)
  ref = jax.value_and_grad(lambda z: jnp.sum(weights * _reference_token_logprobs(z, targets)))(logits)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
  np.testing.assert_allclose(ours[1], ref[1], rtol=1e-5, atol=1e-7)
  assert ours[1][0, 1, 3] == 0.0
  # bfloat16 logits are computed in float32 and their gradient comes back in bfloat16.
  low = logits.astype(jnp.bfloat16)
  grad = jax.grad(lambda z: jnp.sum(token_logprobs(z, targets)))(low)
  assert grad.dtype == jnp.bfloat16
  np.testing.assert_allclose(grad.astype(np.float32), jax.grad(
      lambda z: jnp.sum(_reference_token_logprobs(z, targets)))(low).astype(np.float32), atol=1e-2)
  # Any leading shape, inside jit.
  flat = jax.jit(token_logprobs)(logits.reshape(15, 11), targets.reshape(15))
  np.testing.assert_allclose(flat, _reference_token_logprobs(logits, targets).reshape(15), rtol=1e-6)


def test_next_token_loss_and_exact_match_equal_the_sliced_definitions():
  """They never slice the logits; values and gradients are those of logits[:, :-1] vs tokens[:, 1:]."""
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(4, 6, 7)), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, 7, (4, 6)), jnp.int32)
  loss_mask = jnp.asarray(rng.random((4, 6)) < 0.7).at[:, 0].set(False)

  def sliced_loss(z):
    logp = _reference_token_logprobs(z[:, :-1], tokens[:, 1:])
    return -masked_mean(logp, loss_mask[:, 1:])

  ours = jax.value_and_grad(next_token_loss)(logits, tokens, loss_mask)
  ref = jax.value_and_grad(sliced_loss)(logits)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
  np.testing.assert_allclose(ours[1], ref[1], rtol=1e-5, atol=1e-8)
  # Make the argmax hit the target on some rows, then compare with the argmax definition.
  targets_at = jnp.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)
  peaked = logits + 10.0 * jax.nn.one_hot(targets_at, 7) * (jnp.arange(4) < 2)[:, None, None]
  hit = jnp.argmax(peaked[:, :-1], axis=-1) == tokens[:, 1:]
  expected = jnp.all(hit | ~loss_mask[:, 1:], axis=-1).astype(jnp.float32)
  np.testing.assert_array_equal(teacher_forced_exact_match(peaked, tokens, loss_mask), expected)
  assert expected.tolist()[:2] == [1.0, 1.0] and expected.tolist()[2:] != [1.0, 1.0]


def test_first_argmax_is_argmax_with_ties_and_infinities():
  logits = jnp.array([[1.0, 3.0, 3.0, 0.0],          # a tie: the first index wins
                      [-jnp.inf] * 4,                # all -inf: index 0
                      [jnp.inf, 2.0, jnp.inf, 1.0],  # +inf ties
                      [0.0, 0.0, 0.0, 5.0]])
  np.testing.assert_array_equal(first_argmax(logits), jnp.argmax(logits, axis=-1))
  big = jnp.asarray(np.random.default_rng(2).normal(size=(3, 9, 50)).round(1), jnp.float32)
  np.testing.assert_array_equal(first_argmax(big), jnp.argmax(big, axis=-1))
  assert int(first_argmax(jnp.array([1.0, jnp.nan, 2.0]))) == 3   # NaN: no index is the argmax
