"""Policy-gradient loss pieces against hand-computed values on small arrays."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfimprove import objectives


def test_kl_estimators_by_hand():
  logp = jnp.array([[-1.0, -2.0], [-0.5, -3.0]])
  ref = jnp.array([[-1.5, -2.0], [-0.2, -1.0]])
  np.testing.assert_allclose(objectives.kl_k1(logp, ref), [[0.5, 0.0], [-0.3, -2.0]], atol=1e-6)
  # k3 = exp(d) - d - 1 with d = ref - logp.
  expected = [[math.exp(-0.5) + 0.5 - 1, 0.0], [math.exp(0.3) - 0.3 - 1, math.exp(2.0) - 2.0 - 1]]
  np.testing.assert_allclose(objectives.kl_k3(logp, ref), expected, rtol=1e-6, atol=1e-7)
  assert np.all(np.asarray(objectives.kl_k3(logp, ref)) >= 0)
  np.testing.assert_array_equal(objectives.per_token_kl(logp, ref, "k1"), objectives.kl_k1(logp, ref))
  np.testing.assert_array_equal(objectives.per_token_kl(logp, ref, "k3"), objectives.kl_k3(logp, ref))
  with pytest.raises(ValueError, match="k2"):
    objectives.per_token_kl(logp, ref, "k2")


def test_kl_estimators_are_unbiased_for_the_exact_kl():
  """Averaged over the policy's own distribution, k1 and k3 both give KL(pi || ref)."""
  p = np.array([0.5, 0.3, 0.2])
  q = np.array([0.2, 0.5, 0.3])
  exact = float(np.sum(p * np.log(p / q)))
  for estimator in ("k1", "k3"):
    per_outcome = objectives.per_token_kl(jnp.log(p), jnp.log(q), estimator)
    assert float(np.sum(p * np.asarray(per_outcome))) == pytest.approx(exact, rel=1e-5)


def test_exact_kl_by_hand_and_zero_for_identical_policies():
  p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
  q = np.array([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
  kl = objectives.exact_kl(jnp.log(p), jnp.log(q))
  np.testing.assert_allclose(kl, [np.sum(p[0] * np.log(p[0] / q[0])), 0.0], rtol=1e-5, atol=1e-7)
  logits = jax.random.normal(jax.random.key(0), (4, 5, 7))
  same = jax.nn.log_softmax(logits, axis=-1)
  np.testing.assert_allclose(objectives.exact_kl(same, same), np.zeros((4, 5)), atol=1e-7)
  grad = jax.grad(lambda x: objectives.exact_kl(jax.nn.log_softmax(x), same[0, 0]))(logits[0, 0])
  np.testing.assert_allclose(grad, np.zeros(7), atol=1e-6)   # a minimum at pi = ref


def test_advantages_by_hand():
  rewards = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])     # 2 prompts x 3 samples
  np.testing.assert_allclose(objectives.reinforce_advantages(rewards), rewards)
  np.testing.assert_allclose(objectives.reinforce_advantages(rewards, 0.5), rewards - 0.5)
  # Group 1: others' means are 0, 0.5, 0.5; group 2: all ones.
  np.testing.assert_allclose(objectives.rloo_advantages(rewards, 3), [1, -0.5, -0.5, 0, 0, 0],
                             atol=1e-6)
  np.testing.assert_allclose(objectives.group_mean_advantages(rewards, 3),
                             [2 / 3, -1 / 3, -1 / 3, 0, 0, 0], atol=1e-6)
  np.testing.assert_allclose(objectives.advantages(rewards, 3, "rloo"),
                             objectives.rloo_advantages(rewards, 3))
  np.testing.assert_allclose(objectives.advantages(rewards, 3, "group_mean"),
                             objectives.group_mean_advantages(rewards, 3))
  np.testing.assert_allclose(objectives.advantages(rewards, 3, "reinforce"), rewards)
  # Rows are grouped by prompt (contiguous), not interleaved.
  np.testing.assert_allclose(objectives.group_mean_advantages(jnp.array([1.0, 3.0, 10.0, 20.0]), 2),
                             [-1, 1, -5, 5])


def test_advantage_errors_name_the_field():
  with pytest.raises(ValueError, match="num_samples_per_prompt >= 2"):
    objectives.rloo_advantages(jnp.ones(4), 1)
  with pytest.raises(ValueError, match="num_samples_per_prompt=3"):
    objectives.group_mean_advantages(jnp.ones(4), 3)
  with pytest.raises(ValueError, match="advantage estimator"):
    objectives.advantages(jnp.ones(4), 2, "ppo")


def test_score_shaped_rewards_match_the_paper_table():
  r1 = jnp.array([0.0, 1.0, 1.0, 0.0])
  r2 = jnp.array([1.0, 1.0, 0.0, 0.0])
  turn1, turn2 = objectives.score_shaped_rewards(r1, r2, 10.0)
  np.testing.assert_array_equal(turn1, r1)
  np.testing.assert_array_equal(turn2, [11.0, 1.0, -10.0, 0.0])
  _, no_shaping = objectives.score_shaped_rewards(r1, r2, 0.0)
  np.testing.assert_array_equal(no_shaping, r2)


def test_policy_gradient_loss_by_hand():
  logp = jnp.array([[-1.0, -2.0, -9.0], [-0.5, -0.25, -0.25]])
  mask = jnp.array([[True, True, False], [True, True, True]])
  adv = jnp.array([2.0, -1.0])
  kl = jnp.array([[0.1, 0.2, 5.0], [0.3, 0.0, 0.1]])
  # Sequence log-probs: -3 and -1; sequence KLs: 0.3 and 0.4 (masked tokens ignored).
  expected = -((2.0 * -3.0) + (-1.0 * -1.0)) / 2 + 0.5 * (0.3 + 0.4) / 2
  loss = objectives.policy_gradient_loss(logp, mask, adv, kl, 0.5)
  assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_policy_gradient_loss_gradient_is_reinforce():
  """d loss / d logp[i, t] = -A_i / rows at real tokens (plus kl_coef / rows for k1), 0 elsewhere."""
  logp = jnp.array([[-1.0, -2.0], [-0.5, -0.7]])
  ref = jnp.array([[-1.2, -2.0], [-0.1, -0.7]])
  mask = jnp.array([[True, False], [True, True]])
  adv = jnp.array([3.0, -2.0])

  def loss(logp, adv):
    return objectives.policy_gradient_loss(logp, mask, adv, objectives.kl_k1(logp, ref), 0.1)

  grad_logp, grad_adv = jax.grad(loss, argnums=(0, 1))(logp, adv)
  np.testing.assert_allclose(grad_logp, [[(-3.0 + 0.1) / 2, 0.0], [(2.0 + 0.1) / 2] * 2], atol=1e-6)
  np.testing.assert_array_equal(grad_adv, [0.0, 0.0])   # advantages are constants
