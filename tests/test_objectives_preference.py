"""DPO, SPIN (logistic and hinge), IPO and SPPO losses against hand computation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfimprove import objectives as obj

# Two pairs: summed log-probs of chosen / rejected under the policy and the reference.
CHOSEN, REJECTED = np.array([-3.0, -5.0]), np.array([-4.0, -2.0])
REF_CHOSEN, REF_REJECTED = np.array([-3.5, -4.0]), np.array([-3.0, -2.5])
MARGINS = [(-3.0 + 3.5) - (-4.0 + 3.0), (-5.0 + 4.0) - (-2.0 + 2.5)]   # [1.5, -1.5]


def _args():
  return tuple(jnp.asarray(x) for x in (CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED))


def test_sequence_logprobs_sum_completion_tokens_only():
  logp = jnp.asarray([[-1.0, -2.0, -9.0], [-0.5, -7.0, -0.25]])
  mask = jnp.asarray([[True, True, False], [True, False, True]])
  np.testing.assert_allclose(obj.sequence_logprobs(logp, mask), [-3.0, -0.75])


def test_dpo_and_spin_logistic_by_hand():
  beta = 0.1
  np.testing.assert_allclose(obj.preference_margin(*_args()), MARGINS)
  want = np.mean([math.log1p(math.exp(-beta * m)) for m in MARGINS])
  np.testing.assert_allclose(obj.dpo_loss(*_args(), beta), want, rtol=1e-6)
  # At h = 0 the loss is log 2 and its gradient pushes chosen up, rejected down, equally.
  zero = (jnp.zeros(1),) * 4
  np.testing.assert_allclose(obj.dpo_loss(*zero, beta), math.log(2), rtol=1e-6)
  grads = jax.grad(lambda c, r: obj.dpo_loss(c, r, zero[2], zero[3], beta), argnums=(0, 1))(
      *zero[:2])
  np.testing.assert_allclose([grads[0][0], grads[1][0]], [-beta / 2, beta / 2], rtol=1e-6)


def test_spin_hinge_and_ipo_by_hand():
  beta = 0.5
  want_hinge = np.mean([max(0.0, 1 - beta * m) for m in MARGINS])
  np.testing.assert_allclose(obj.spin_hinge_loss(*_args(), beta), want_hinge, rtol=1e-6)
  want_ipo = np.mean([(m - 1 / (2 * beta)) ** 2 for m in MARGINS])
  np.testing.assert_allclose(obj.ipo_loss(*_args(), beta), want_ipo, rtol=1e-6)


def test_sppo_regresses_log_ratios_onto_centred_win_rates():
  beta = 0.01   # eta = 100
  win_w, win_l = jnp.asarray([0.7, 0.5]), jnp.asarray([0.2, 0.6])
  want = np.mean([0.5 * ((c - rc - 100 * (pw - 0.5)) ** 2 + (r - rr - 100 * (pl - 0.5)) ** 2)
                  for c, r, rc, rr, pw, pl in zip(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED,
                                                  [0.7, 0.5], [0.2, 0.6])])
  np.testing.assert_allclose(obj.sppo_loss(*_args(), win_w, win_l, beta), want, rtol=1e-5)
  # Zero exactly when each log-ratio equals eta (P - 1/2).
  ref = jnp.zeros(2)
  at_target = obj.sppo_loss(100 * (win_w - 0.5), 100 * (win_l - 0.5), ref, ref, win_w, win_l, beta)
  assert float(at_target) == pytest.approx(0.0, abs=1e-9)


def test_preference_metrics_by_hand():
  beta = 0.1
  metrics = obj.preference_metrics(*_args(), beta)
  np.testing.assert_allclose(metrics["train/reward_margin"], beta * np.mean(MARGINS), atol=1e-7)
  assert float(metrics["train/reward_accuracy"]) == 0.5
  np.testing.assert_allclose(metrics["train/chosen_logp"], -4.0)
  np.testing.assert_allclose(metrics["train/rejected_logp"], -3.0)


def test_chosen_nll_is_the_per_token_negative_log_likelihood_of_the_valid_chosen():
  lengths = jnp.asarray([3, 4])
  assert float(obj.chosen_nll_loss(jnp.asarray(CHOSEN), lengths)) == pytest.approx(
      (3.0 / 3 + 5.0 / 4) / 2)
  assert float(obj.chosen_nll_loss(jnp.asarray(CHOSEN), lengths, jnp.asarray([0.0, 1.0]))
               ) == pytest.approx(5.0 / 4)
