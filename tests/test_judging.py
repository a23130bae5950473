"""Self-judges on distributions we control, against hand computation and the model's logits."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from selfimprove import judging
from selfimprove.encoding import TextEncoder
from selfimprove.objectives import token_logprobs
from selfimprove.sampling import SamplingConfig, make_sampler
from selfimprove.tokenizers import ByteTokenizer, CharTokenizer
from tests.pipelines.helpers import tiny_model


def _logits(probs, shift=0.0):
  """Logits whose softmax is `probs` (rows normalised), plus a per-row constant."""
  probs = np.asarray(probs, np.float64)
  return jnp.asarray(np.log(probs / probs.sum(-1, keepdims=True)) + shift, jnp.float32)


# ---- P(True), rubric, pairwise -------------------------------------------------------

def test_yes_no_probability_is_yes_mass_over_yes_plus_no_mass():
  probs = [[0.1, 0.2, 0.05, 0.15, 0.3, 0.2],
           [0.5, 0.0001, 0.0001, 0.2, 0.0998, 0.2],
           [0.1, 0.3, 0.3, 0.1, 0.1, 0.1]]
  expected = [0.25 / 0.55, 0.0002 / 0.1000, 0.6 / 0.7]
  for shift in (0.0, np.array([[3.0], [-40.0], [7.5]])):
    got = judging.yes_no_probability(_logits(probs, shift), yes_ids=(1, 2), no_ids=(4,))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
  # One id each: P(yes) / (P(yes) + P(no)) with the rest of the vocabulary ignored.
  np.testing.assert_allclose(judging.yes_no_probability(_logits(probs), (3,), (0,)),
                             [0.15 / 0.25, 0.2 / 0.7, 0.1 / 0.2], rtol=1e-5)


def test_rubric_score_is_the_expected_score_over_the_score_tokens():
  probs = [[0.3, 0.1, 0.2, 0.1, 0.3],     # scores 1..3 at ids 1..3: (0.1 + 0.4 + 0.3) / 0.4
           [0.9, 0.0, 0.0, 0.1, 0.0]]     # all score mass on 3
  logits = _logits(np.asarray(probs) + 1e-12)
  np.testing.assert_allclose(judging.rubric_score(logits, (1, 2, 3)), [2.0, 3.0], rtol=1e-5)
  # Self-J's 0..k values, and a score written by two tokens (their mass summed).
  np.testing.assert_allclose(judging.rubric_score(logits, (1, 2, 3), score_values=(0, 5, 10)),
                             [(0.2 * 5 + 0.1 * 10) / 0.4, 10.0], rtol=1e-5)
  np.testing.assert_allclose(judging.rubric_score(logits, ((1, 4), 2, 3))[0],
                             (1 * 0.4 + 2 * 0.2 + 3 * 0.1) / 0.7, rtol=1e-5)


def test_pairwise_preference_by_hand_and_antisymmetric():
  # A judge that always says "first" (1.0 in both orders) is neutral.
  got = judging.pairwise_preference(jnp.array([0.8, 1.0]), jnp.array([0.4, 1.0]))
  np.testing.assert_allclose(got, [0.7, 0.5], rtol=1e-6)
  x, y = jax.random.uniform(jax.random.key(0), (2, 1000))
  forward, backward = judging.pairwise_preference(x, y), judging.pairwise_preference(y, x)
  np.testing.assert_allclose(forward + backward, np.ones(1000), atol=1e-7)
  assert np.all((forward >= 0) & (forward <= 1))


# ---- Self-certainty ------------------------------------------------------------------

def _kl_uniform(probs):
  probs = np.asarray(probs, np.float64)
  return np.sum(np.log((1 / probs.shape[-1]) / probs), axis=-1) / probs.shape[-1]


def test_token_self_certainty_is_kl_from_uniform():
  probs = np.random.default_rng(0).dirichlet(np.ones(11), size=(3, 4))
  np.testing.assert_allclose(judging.token_self_certainty(_logits(probs, 5.0)), _kl_uniform(probs),
                             rtol=1e-5)
  uniform = judging.token_self_certainty(jnp.full((2, 50), 3.3))
  np.testing.assert_allclose(uniform, [0, 0], atol=1e-6)


def test_self_certainty_grows_from_uniform_toward_one_hot():
  vocab = 7
  sharpness = np.linspace(0, 30, 31)
  logits = jnp.asarray(sharpness[:, None, None] * np.eye(vocab)[0], jnp.float32)   # [31, 1, V]
  certainty = np.asarray(judging.self_certainty(logits, jnp.ones((31, 1), bool)))
  assert certainty[0] == pytest.approx(0.0, abs=1e-6)
  assert np.all(np.diff(certainty) > 0)
  # logsumexp(t e_0) - t / V - log V, approaching t (V - 1) / V - log V.
  expected = np.logaddexp(sharpness, np.log(vocab - 1)) - sharpness / vocab - np.log(vocab)
  np.testing.assert_allclose(certainty, expected, rtol=1e-5, atol=1e-6)


def test_self_certainty_averages_masked_tokens_only():
  probs = np.random.default_rng(1).dirichlet(np.ones(5), size=(3, 4))
  logits = np.log(probs)
  logits[0, 2:] = 1e4 * np.arange(5)            # padding: anything at all
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
  per_token = _kl_uniform(probs)
  got = judging.self_certainty(jnp.asarray(logits, jnp.float32), mask)
  np.testing.assert_allclose(got, [per_token[0, :2].mean(), per_token[1].mean(), 0.0], rtol=1e-5)


def test_judges_compile_once():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def judge(logits, mask):
    return (judging.yes_no_probability(logits[:, 0], (1,), (2, 3)),
            judging.rubric_score(logits[:, 0], (1, 2, 3)),
            judging.self_certainty(logits, mask),
            judging.borda_vote(judging.self_certainty(logits, mask).reshape(2, 2),
                               jnp.arange(4).reshape(2, 2) % 2, jnp.ones((2, 2), bool)))

  for seed in range(3):
    logits = jax.random.normal(jax.random.key(seed), (4, 3, 9))
    outputs = judge(logits, jax.random.bernoulli(jax.random.key(seed), 0.5, (4, 3)))
    assert [o.shape for o in outputs] == [(4,), (4,), (4,), (2,)]


# ---- Best-of-N and Borda voting ------------------------------------------------------

def _reference_borda(certainty, answers, valid, power):
  """A port of the Self-Certainty repository's voting_from_list.py for one prompt."""
  n = len(certainty)
  order = sorted(range(n), key=lambda k: certainty[k], reverse=True)
  votes_map = {order[r]: (n - r) ** power for r in range(n)}
  votes = [0.0] * n
  for i in range(n):
    if not valid[i]:
      continue
    for j in range(i):
      if valid[j] and answers[j] == answers[i]:
        votes[j] += votes_map[i]
        break
    else:
      votes[i] += votes_map[i]
  return votes.index(max(votes))


def test_borda_vote_by_hand():
  certainty = jnp.array([[0.9, 0.2, 0.3, 0.8]] * 3)
  answers = jnp.array([[5, 7, 7, 3]] * 3)
  valid = jnp.array([[True] * 4, [True] * 4, [False, True, True, True]])
  # Votes by rank with power 1: c0 4, c3 3, c2 2, c1 1 -> answer 5: 4, 7: 3, 3: 3.
  assert judging.borda_vote(certainty[:1], answers[:1], valid[:1], power=1.0).tolist() == [0]
  # power 0 is majority voting: answer 7 (candidates 1 and 2) has two votes; 1 is its first.
  assert judging.borda_vote(certainty[:1], answers[:1], valid[:1], power=0.0).tolist() == [1]
  # Without candidate 0, answers 7 and 3 tie at 3: the answer whose first candidate comes first.
  assert judging.borda_vote(certainty, answers, valid, power=1.0).tolist() == [0, 0, 1]
  assert judging.borda_vote(certainty[:1], answers[:1], jnp.zeros((1, 4), bool)).tolist() == [0]


def test_borda_vote_matches_the_reference_code_on_random_data():
  rng = np.random.default_rng(0)
  certainty = rng.integers(0, 4, (200, 6)).astype(np.float32)      # many ties
  answers = rng.integers(0, 3, (200, 6))
  valid = rng.random((200, 6)) < 0.8
  for power in (0.0, 0.5, 1.0, 2.0):
    got = judging.borda_vote(jnp.asarray(certainty), jnp.asarray(answers), jnp.asarray(valid),
                             power)
    expected = [_reference_borda(*row, power) for row in zip(certainty, answers, valid)]
    np.testing.assert_array_equal(got, expected)
  # Answers as padded token rows compare along the trailing axis.
  token_answers = jnp.asarray(np.stack([answers, answers * 0], axis=-1))
  np.testing.assert_array_equal(
      judging.borda_vote(jnp.asarray(certainty), token_answers, jnp.asarray(valid)),
      judging.borda_vote(jnp.asarray(certainty), jnp.asarray(answers), jnp.asarray(valid)))


def test_best_of_n_and_take_selected():
  scores = jnp.array([[0.1, 0.7, 0.7], [0.9, 0.2, 0.3]])
  index = judging.best_of_n(scores)
  assert index.tolist() == [1, 0]
  assert judging.take_selected(jnp.array([[0, 1, 0], [1, 0, 0]]), index).tolist() == [1, 1]
  assert judging.take_selected(jnp.arange(12).reshape(2, 3, 2), index).tolist() == [[2, 3], [6, 7]]


# ---- Running the model ---------------------------------------------------------------

def _forward(graphdef, params, ids):
  """Logits [len, vocab] of one unpadded row."""
  tokens = jnp.asarray([ids], jnp.int32)
  return nnx.merge(graphdef, params)(tokens, jnp.ones_like(tokens, bool))[0][0]


def test_judge_logits_are_the_unpadded_prompts_last_logits():
  graphdef, params = tiny_model()
  prompts = [[1, 5, 6, 7, 8], [1, 9, 4], [1, 3]]
  tokens = np.zeros((3, 6), np.int32)
  mask = np.zeros((3, 6), bool)
  for row, ids in enumerate(prompts):
    tokens[row, 6 - len(ids):], mask[row, 6 - len(ids):] = ids, True
  got = jax.jit(lambda p, t, m: judging.judge_logits(nnx.merge(graphdef, p), t, m))(
      params, tokens, mask)
  for row, ids in enumerate(prompts):
    np.testing.assert_allclose(got[row], _forward(graphdef, params, ids)[-1], rtol=1e-5, atol=1e-5)
  # P(True) of the judge's own next-token distribution.
  p_true = judging.yes_no_probability(got, (4,), (5, 6))
  probs = jax.nn.softmax(got, axis=-1)
  np.testing.assert_allclose(p_true, probs[:, 4] / (probs[:, 4] + probs[:, 5] + probs[:, 6]),
                             rtol=1e-5)


def test_completion_logits_give_the_samplers_distributions():
  """The sampler's temperature-1 log-probs are log-softmax of completion_logits at its tokens."""
  graphdef, params = tiny_model()
  prompts = np.array([[0, 0, 1, 5, 6], [1, 9, 4, 4, 3]], np.int32)
  mask = prompts > 0
  rollout = make_sampler(graphdef, SamplingConfig(max_new_tokens=6, stop_token_ids=(2,)))(
      params, prompts, mask, jax.random.key(3))
  logits = jax.jit(lambda p, *arrays: judging.completion_logits(nnx.merge(graphdef, p), *arrays))(
      params, rollout.prompt_tokens, rollout.prompt_mask, rollout.tokens, rollout.completion_mask)
  assert logits.shape == (2, 6, 17)
  logp = token_logprobs(logits, rollout.tokens) * rollout.completion_mask
  np.testing.assert_allclose(logp, rollout.logprobs, rtol=1e-5, atol=1e-5)
  for row in range(2):
    n = int(rollout.lengths[row])
    ids = [int(t) for t, m in zip(prompts[row], mask[row]) if m] + rollout.tokens[row, :n].tolist()
    reference = _forward(graphdef, params, ids)[-n - 1:-1]
    np.testing.assert_allclose(logits[row, :n], reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        judging.self_certainty(logits, rollout.completion_mask)[row],
        np.mean(_kl_uniform(jax.nn.softmax(reference, axis=-1))), rtol=1e-4)


# ---- Templates -----------------------------------------------------------------------

def test_templates_render_text_and_encode_answers_with_the_runs_tokenizer():
  template = judging.JudgeTemplate("Q:{problem} A:{candidate} ok?", yes=("y", "Y"), no="n")
  assert template.no == ("n",)
  assert template.render(problem="1+{x}", candidate="{problem}") == "Q:1+{x} A:{problem} ok?"
  encoder = TextEncoder(CharTokenizer("yYnQA:ok? 0123456789+"))
  assert template.answer_ids(encoder) == ((3, 4), (5,))
  with pytest.raises(ValueError, match=r"fields \['candidate', 'problem'\]"):
    template.render(problem="1")
  with pytest.raises(ValueError, match="both start with token ids"):
    judging.JudgeTemplate("{problem}", yes="yn", no="yY").answer_ids(encoder)
  with pytest.raises(ValueError, match="cannot be encoded"):
    judging.JudgeTemplate("{problem}", yes="x", no="n").answer_ids(encoder)

  pairwise = judging.JudgeTemplate("{problem} 1:{first} 2:{second}", yes="1", no="2")
  assert pairwise.render(problem="Q", first="a", second="b") == "Q 1:a 2:b"

  rubric = judging.RubricTemplate("{problem}{candidate}", scores=("1", "2", "3"))
  assert rubric.values == (1.0, 2.0, 3.0)
  assert rubric.score_ids(encoder) == (14, 15, 16)
  zero_based = judging.RubricTemplate("{candidate}", scores=tuple("0123"), values=range(4))
  assert zero_based.values == (0, 1, 2, 3)
  with pytest.raises(ValueError, match="2 entries for 3 scores"):
    judging.RubricTemplate("{candidate}", scores=("1", "2", "3"), values=(1, 2))
  with pytest.raises(ValueError, match="tuple of two or more"):
    judging.RubricTemplate("{candidate}", scores="0123")

  byte_encoder = TextEncoder(ByteTokenizer())
  text = judging.P_TRUE_TEMPLATE.render(problem="2+2?", candidate="4")
  assert text.startswith("Question: 2+2?\nProposed Answer: 4\n") and text.endswith("is: (")
  assert judging.P_TRUE_TEMPLATE.answer_ids(byte_encoder) == ((ord("A") + 3,), (ord("B") + 3,))
