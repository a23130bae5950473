"""GRPO-family loss pieces (objectives.py) against hand computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfimprove.objectives import (aggregate_token_losses, clipped_policy_loss,
                                    dr_grpo_advantages, grpo_advantages, rloo_advantages)

REWARDS = jnp.array([1.0, 0.0, 0.0, 1.0,     # prompt 0: mean 0.5, sample std sqrt(1/3)
                     0.5, 0.5, 0.5, 0.5,     # prompt 1: all equal
                     2.0, 0.0, 1.0, 1.0])    # prompt 2: mean 1, sample std sqrt(2/3)


def test_grpo_advantages_by_hand():
  std0, std2 = np.sqrt(1 / 3), np.sqrt(2 / 3)
  expected = np.array([0.5 / std0, -0.5 / std0, -0.5 / std0, 0.5 / std0, 0, 0, 0, 0,
                       1 / std2, -1 / std2, 0, 0])
  np.testing.assert_allclose(grpo_advantages(REWARDS, 4, True, eps=0.0), expected, rtol=1e-6)
  # eps is added to the std (a group of equal rewards stays at 0, no division by zero).
  got = grpo_advantages(REWARDS, 4, True, eps=0.5)
  np.testing.assert_allclose(got[:4], np.array([1, -1, -1, 1]) * 0.5 / (std0 + 0.5), rtol=1e-6)
  assert np.all(np.isfinite(np.asarray(grpo_advantages(REWARDS, 4, True, eps=0.0))))
  # Without the std: reward minus the group mean.
  centred = [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, 1, -1, 0, 0]
  np.testing.assert_allclose(grpo_advantages(REWARDS, 4, False), centred, atol=1e-7)
  with pytest.raises(ValueError, match="group_size >= 2"):
    grpo_advantages(REWARDS, 1, True)
  with pytest.raises(ValueError, match="divide the number of reward rows"):
    grpo_advantages(REWARDS, 5, False)


def test_dr_grpo_and_rloo_advantages_by_hand():
  np.testing.assert_allclose(dr_grpo_advantages(REWARDS, 4),
                             [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, 1, -1, 0, 0], atol=1e-7)
  # RLOO: r_i minus the mean of the other three of its prompt.
  others = [1 / 3, 2 / 3, 2 / 3, 1 / 3, 0.5, 0.5, 0.5, 0.5, 2 / 3, 4 / 3, 1, 1]
  np.testing.assert_allclose(rloo_advantages(REWARDS, 4), np.asarray(REWARDS) - others,
                             rtol=1e-6, atol=1e-7)
  # RLOO = G / (G - 1) x Dr. GRPO's group-mean advantage.
  np.testing.assert_allclose(rloo_advantages(REWARDS, 4), 4 / 3 * dr_grpo_advantages(REWARDS, 4),
                             rtol=1e-6, atol=1e-7)


# Two sequences of up to 3 tokens; row 0 has 3 real tokens, row 1 has 2.
LOGP = np.log(np.array([[0.5, 0.3, 0.2], [0.4, 0.9, 0.7]]))
OLD = np.log(np.array([[0.4, 0.3, 0.3], [0.6, 0.6, 0.1]]))
MASK = np.array([[True, True, True], [True, True, False]])
ADV = np.array([1.0, -2.0])


def _per_token(logp, old, adv, eps_low, eps_high):
  """-min(rho A, clip(rho) A) and whether the clip removed the gradient, token by token."""
  losses, clipped = np.zeros(logp.shape), np.zeros(logp.shape, bool)
  for i in range(logp.shape[0]):
    for t in range(logp.shape[1]):
      rho = np.exp(logp[i, t] - old[i, t])
      unclipped, bounded = rho * adv[i], min(max(rho, 1 - eps_low), 1 + eps_high) * adv[i]
      losses[i, t] = -min(unclipped, bounded)
      clipped[i, t] = bounded < unclipped
  return losses, clipped


@pytest.mark.parametrize("eps_low, eps_high", [(0.2, 0.2), (0.2, 0.28), (0.1, 0.5)])
def test_clipped_policy_loss_and_clip_fraction_by_hand(eps_low, eps_high):
  losses, clipped = _per_token(LOGP, OLD, ADV, eps_low, eps_high)
  # Ratios: row 0 1.25, 1, 0.667 (A > 0: 1.25 is clipped when 1 + eps_high < 1.25);
  # row 1 0.667, 1.5 (A < 0: 1.5 is not clipped; 0.667 is, below 1 - eps_low).
  expected = {
      "token_mean": np.sum(losses * MASK) / 5,
      "sequence_mean": np.mean([np.sum(losses[0]) / 3, np.sum(losses[1, :2]) / 2]),
      "constant": np.sum(losses * MASK) / (2 * 3),
  }
  for aggregation, value in expected.items():
    loss, clip_fraction = clipped_policy_loss(jnp.asarray(LOGP), jnp.asarray(OLD), jnp.asarray(ADV),
                                              jnp.asarray(MASK), eps_low, eps_high, aggregation)
    assert float(loss) == pytest.approx(value, rel=1e-5), aggregation
    assert float(clip_fraction) == pytest.approx(np.sum(clipped & MASK) / 5), aggregation
  assert np.sum(clipped & MASK) == {(0.2, 0.2): 2, (0.2, 0.28): 1, (0.1, 0.5): 1}[eps_low, eps_high]


def test_clipped_tokens_get_no_gradient_and_ratio_one_is_the_policy_gradient():
  grad = jax.grad(lambda lp: clipped_policy_loss(lp, jnp.asarray(OLD), jnp.asarray(ADV),
                                                 jnp.asarray(MASK), 0.2, 0.2, "token_mean")[0])(
      jnp.asarray(LOGP))
  rho = np.exp(LOGP - OLD)
  # d/dlogp of -rho A / 5 where unclipped; 0 where clipped ([0, 0], [1, 0]) or masked ([1, 2]).
  expected = np.where(MASK, -rho * ADV[:, None] / 5, 0.0)
  expected[0, 0] = expected[1, 0] = 0.0
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
  # On-policy (old = logp): the loss is -A aggregated and its gradient the REINFORCE one.
  logp = jnp.asarray(LOGP)
  for aggregation, weights in (("token_mean", np.full((2, 3), 1 / 5)),
                               ("sequence_mean", np.array([[1 / 6] * 3, [1 / 4] * 3])),
                               ("constant", np.full((2, 3), 1 / 6))):
    fn = lambda lp: clipped_policy_loss(lp, jax.lax.stop_gradient(lp), jnp.asarray(ADV),
                                        jnp.asarray(MASK), 0.2, 0.2, aggregation)
    (loss, clip_fraction), grad = jax.value_and_grad(fn, has_aux=True)(logp)
    assert float(clip_fraction) == 0.0
    assert float(loss) == pytest.approx(-np.sum(ADV[:, None] * weights * MASK), rel=1e-6)
    np.testing.assert_allclose(grad, -ADV[:, None] * weights * MASK, rtol=1e-6)


def test_aggregations_by_hand_and_unknown_name():
  values = jnp.array([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [5.0, 5.0, 5.0, 5.0]])
  mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
  assert float(aggregate_token_losses(values, mask, "token_mean")) == pytest.approx(103 / 6)
  assert float(aggregate_token_losses(values, mask, "sequence_mean")) == pytest.approx(
      (1.5 + 25 + 0) / 3)
  assert float(aggregate_token_losses(values, mask, "constant")) == pytest.approx(103 / 12)
  assert float(aggregate_token_losses(values, jnp.zeros_like(mask), "token_mean")) == 0.0
  with pytest.raises(ValueError, match="aggregation must be one of"):
    aggregate_token_losses(values, mask, "sum")
