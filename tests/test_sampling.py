"""The sampler against full forward passes: greedy, log-probs, filters, stops, keys."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from selfimprove.models import init_model
from selfimprove.models.transformer import Transformer
from selfimprove.objectives import token_logprobs
from selfimprove.sampling import SamplingConfig, decode_phase_ends, make_sampler, sample


@pytest.fixture
def model_and_prompts(small_config):
  graphdef, params = init_model(small_config, seed=1)
  prompts = np.random.default_rng(0).integers(3, small_config.vocab_size, (3, 6)).astype(np.int32)
  mask = np.ones_like(prompts, bool)
  mask[1, :2] = False   # left-padded
  mask[2, :4] = False   # shorter still
  prompts[~mask] = 0
  return graphdef, params, prompts, mask


def _full_logits(graphdef, params, tokens, mask):
  return jax.jit(lambda p, t, m: nnx.merge(graphdef, p)(t, m)[0])(params, tokens, mask)


def _rescored(graphdef, params, rollout):
  """Log-softmax of one full forward pass over prompt + completion, at the completion's tokens."""
  tokens = jnp.concatenate([rollout.prompt_tokens, rollout.tokens], axis=1)
  mask = jnp.concatenate([rollout.prompt_mask, rollout.completion_mask], axis=1)
  logits = _full_logits(graphdef, params, tokens, mask)
  prompt_len = rollout.prompt_tokens.shape[1]
  return logits[:, prompt_len - 1:-1], token_logprobs(logits[:, prompt_len - 1:-1], rollout.tokens)


def test_greedy_equals_argmax_of_full_forward_passes(model_and_prompts):
  graphdef, params, prompts, mask = model_and_prompts
  rollout = make_sampler(graphdef, SamplingConfig(max_new_tokens=7, greedy=True))(
      params, prompts, mask, jax.random.key(0))
  tokens, token_mask = prompts, mask
  for step in range(7):
    next_token = jnp.argmax(_full_logits(graphdef, params, tokens, token_mask)[:, -1], axis=-1)
    np.testing.assert_array_equal(rollout.tokens[:, step], next_token)
    tokens = jnp.concatenate([tokens, next_token[:, None]], axis=1)
    token_mask = jnp.concatenate([token_mask, jnp.ones((3, 1), bool)], axis=1)


def test_top_k_one_equals_greedy(model_and_prompts):
  graphdef, params, prompts, mask = model_and_prompts
  greedy = make_sampler(graphdef, SamplingConfig(max_new_tokens=6, greedy=True))
  top1 = make_sampler(graphdef, SamplingConfig(max_new_tokens=6, top_k=1, temperature=1.7))
  for seed in range(3):
    np.testing.assert_array_equal(greedy(params, prompts, mask, jax.random.key(seed)).tokens,
                                  top1(params, prompts, mask, jax.random.key(seed)).tokens)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_full_forward_log_softmax(model_and_prompts, temperature):
  graphdef, params, prompts, mask = model_and_prompts
  config = SamplingConfig(max_new_tokens=6, temperature=temperature, num_samples_per_prompt=2)
  rollout = make_sampler(graphdef, config)(params, prompts, mask, jax.random.key(3))
  logits, _ = _rescored(graphdef, params, rollout)
  expected = token_logprobs(logits / temperature, rollout.tokens)
  np.testing.assert_allclose(rollout.logprobs, expected, atol=1e-5, rtol=1e-5)


def test_top_k_and_top_p_sample_only_inside_their_sets(model_and_prompts):
  graphdef, params, prompts, mask = model_and_prompts
  for config in [SamplingConfig(max_new_tokens=6, top_k=3, num_samples_per_prompt=4),
                 SamplingConfig(max_new_tokens=6, top_p=0.3, temperature=0.5,
                                num_samples_per_prompt=4)]:
    rollout = make_sampler(graphdef, config)(params, prompts, mask, jax.random.key(5))
    logits, _ = _rescored(graphdef, params, rollout)
    probs = jax.nn.softmax(logits / config.temperature, axis=-1)
    chosen = jnp.take_along_axis(probs, rollout.tokens[..., None], -1)
    rank = jnp.sum(probs > chosen, axis=-1)                  # tokens strictly more likely
    mass_above = jnp.sum(jnp.where(probs > chosen, probs, 0.0), axis=-1)
    if config.top_k:
      assert int(rank.max()) < config.top_k
    else:
      assert float(mass_above.max()) < config.top_p + 1e-6
    # Log-probs are under the renormalised, filtered distribution: >= the unfiltered ones.
    assert bool(jnp.all(rollout.logprobs >= jnp.log(chosen[..., 0]) - 1e-5))


def test_same_key_same_samples_different_key_different(model_and_prompts):
  graphdef, params, prompts, mask = model_and_prompts
  sampler = make_sampler(graphdef, SamplingConfig(max_new_tokens=8, num_samples_per_prompt=2))
  a = sampler(params, prompts, mask, jax.random.key(0))
  b = sampler(params, prompts, mask, jax.random.key(0))
  c = sampler(params, prompts, mask, jax.random.key(1))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


def test_samples_are_grouped_by_prompt(model_and_prompts):
  graphdef, params, prompts, mask = model_and_prompts
  rollout = make_sampler(graphdef, SamplingConfig(max_new_tokens=4, num_samples_per_prompt=3))(
      params, prompts, mask, jax.random.key(0))
  np.testing.assert_array_equal(rollout.prompt_tokens, np.repeat(prompts, 3, axis=0))
  np.testing.assert_array_equal(rollout.prompt_mask, np.repeat(mask, 3, axis=0))
  assert rollout.tokens.shape == (9, 4)


def test_each_prompt_is_prefilled_once_not_once_per_sample(model_and_prompts, monkeypatch):
  """The model sees the prompts once ([batch, prompt_len]); decoding runs on batch * n rows."""
  graphdef, params, prompts, mask = model_and_prompts
  calls = []
  original = Transformer.__call__

  def recording_call(self, tokens, input_mask, cache=None, **kwargs):
    calls.append(tuple(tokens.shape))
    return original(self, tokens, input_mask, cache, **kwargs)

  monkeypatch.setattr(Transformer, "__call__", recording_call)
  config = SamplingConfig(max_new_tokens=4, num_samples_per_prompt=3)
  jax.make_jaxpr(lambda p: sample(nnx.merge(graphdef, p), prompts, mask, jax.random.key(0),
                                  config))(params)
  assert calls == [(3, 6), (9, 1)]   # one prefill of the 3 prompts, one traced decode step


def test_repeated_prefill_gives_each_sample_the_prompts_own_cache(model_and_prompts):
  """n samples of a prompt decode exactly as n copies of the prompt prefilled one by one would."""
  graphdef, params, prompts, mask = model_and_prompts
  n = 3
  greedy = SamplingConfig(max_new_tokens=5, greedy=True)
  once = make_sampler(graphdef, dataclasses.replace(greedy, num_samples_per_prompt=n))(
      params, prompts, mask, jax.random.key(0))
  copies = make_sampler(graphdef, greedy)(
      params, np.repeat(prompts, n, axis=0), np.repeat(mask, n, axis=0), jax.random.key(0))
  np.testing.assert_array_equal(once.tokens, copies.tokens)
  np.testing.assert_allclose(once.logprobs, copies.logprobs, atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(once.prompt_tokens, copies.prompt_tokens)
  _, rescored = _rescored(graphdef, params, once)
  np.testing.assert_allclose(once.logprobs, rescored, atol=1e-5, rtol=1e-5)


def test_stop_tokens_mask_the_rest_and_end_the_loop_early(model_and_prompts):
  graphdef, params, prompts, mask = model_and_prompts
  unstopped = make_sampler(graphdef, SamplingConfig(max_new_tokens=10, greedy=True))(
      params, prompts, mask, jax.random.key(0))
  assert int(unstopped.num_decode_steps) == 10
  # Stop on whatever each row emits at step 2: every row then ends by step 2.
  stops = tuple(int(t) for t in np.unique(unstopped.tokens[:, 2]))
  config = SamplingConfig(max_new_tokens=10, greedy=True, stop_token_ids=stops, pad_token_id=0)
  rollout = make_sampler(graphdef, config)(params, prompts, mask, jax.random.key(0))
  assert int(rollout.num_decode_steps) == 3   # steps 0, 1, 2, then the loop exits
  for row in range(3):
    first_stop = next(t for t in range(10) if int(unstopped.tokens[row, t]) in stops)
    np.testing.assert_array_equal(rollout.tokens[row, :first_stop + 1],
                                  unstopped.tokens[row, :first_stop + 1])
    assert not rollout.tokens[row, first_stop + 1:].any()
    assert rollout.completion_mask[row, :first_stop + 1].all()
    assert not rollout.completion_mask[row, first_stop + 1:].any()
    assert int(rollout.lengths[row]) == first_stop + 1
    assert not rollout.logprobs[row, first_stop + 1:].any()


@pytest.mark.parametrize("max_new, phases, ends", [
    (64, 0, (16, 32, 48, 64)), (16, 0, (16,)), (15, 0, (15,)), (40, 0, (20, 40)),
    (512, 0, (128, 256, 384, 512)), (7, 3, (3, 5, 7)), (3, 10, (1, 2, 3)), (9, 1, (9,))])
def test_decode_phase_ends(max_new, phases, ends):
  assert decode_phase_ends(SamplingConfig(max_new_tokens=max_new, decode_phases=phases)) == ends


def test_each_decode_phase_attends_over_the_slots_it_can_have_filled(model_and_prompts,
                                                                     monkeypatch):
  graphdef, params, prompts, mask = model_and_prompts
  cache_lengths = []
  original = Transformer.__call__

  def recording_call(self, tokens, input_mask, cache=None, **kwargs):
    cache_lengths.append((tokens.shape[1], cache.max_len))
    return original(self, tokens, input_mask, cache, **kwargs)

  monkeypatch.setattr(Transformer, "__call__", recording_call)
  config = SamplingConfig(max_new_tokens=7, decode_phases=3)   # phases end at 3, 5, 7 tokens
  jax.make_jaxpr(lambda p: sample(nnx.merge(graphdef, p), prompts, mask, jax.random.key(0),
                                  config))(params)
  # The prefill, then one traced decode step per phase; a phase ending at e new tokens
  # feeds back tokens up to e - 2, so it needs prompt_len + e - 1 slots.
  assert cache_lengths == [(6, 6 + 2), (1, 6 + 2), (1, 6 + 4), (1, 6 + 6)]


@pytest.mark.parametrize("greedy, n, stop", [(True, 1, False), (False, 2, False), (False, 2, True)])
def test_decode_phases_give_the_samples_of_one_loop(model_and_prompts, greedy, n, stop):
  """Any number of phases (more than tokens too) samples what one loop over the full cache does."""
  graphdef, params, prompts, mask = model_and_prompts
  base = SamplingConfig(max_new_tokens=9, greedy=greedy, num_samples_per_prompt=n,
                        decode_phases=1)
  reference = make_sampler(graphdef, base)(params, prompts, mask, jax.random.key(3))
  if stop:   # every row stops at its step-4 token: some rows in phase 2 of 3, the loop early
    stops = tuple(int(t) for t in np.unique(reference.tokens[:, 4]))
    base = dataclasses.replace(base, stop_token_ids=stops)
    reference = make_sampler(graphdef, base)(params, prompts, mask, jax.random.key(3))
    assert int(reference.num_decode_steps) <= 5
  for phases in (2, 3, 9, 20):
    rollout = make_sampler(graphdef, dataclasses.replace(base, decode_phases=phases))(
        params, prompts, mask, jax.random.key(3))
    np.testing.assert_array_equal(rollout.tokens, reference.tokens)
    np.testing.assert_array_equal(rollout.completion_mask, reference.completion_mask)
    np.testing.assert_allclose(rollout.logprobs, reference.logprobs, atol=1e-5, rtol=1e-5)
    assert int(rollout.num_decode_steps) == int(reference.num_decode_steps)
  _, rescored = _rescored(graphdef, params, rollout)
  np.testing.assert_allclose(rollout.logprobs, rescored * rollout.completion_mask,
                             atol=1e-5, rtol=1e-5)


def test_sample_runs_inside_another_jitted_function_with_gradients(model_and_prompts):
  """The shape of an RL step: sample, then differentiate the samples' log-likelihood."""
  graphdef, params, prompts, mask = model_and_prompts
  config = SamplingConfig(max_new_tokens=5, num_samples_per_prompt=2)

  @jax.jit
  def step(params, rng):
    rollout = sample(nnx.merge(graphdef, params), prompts, mask, rng, config)
    rollout = jax.tree.map(jax.lax.stop_gradient, rollout)

    def log_likelihood(params):
      tokens = jnp.concatenate([rollout.prompt_tokens, rollout.tokens], axis=1)
      token_mask = jnp.concatenate([rollout.prompt_mask, rollout.completion_mask], axis=1)
      logits, _ = nnx.merge(graphdef, params)(tokens, token_mask)
      logp = token_logprobs(logits[:, prompts.shape[1] - 1:-1], rollout.tokens)
      return jnp.sum(logp * rollout.completion_mask), logp

    (total, logp), grads = jax.value_and_grad(log_likelihood, has_aux=True)(params)
    return rollout, logp, grads

  rollout, logp, grads = step(params, jax.random.key(0))
  np.testing.assert_allclose(rollout.logprobs, logp * rollout.completion_mask, atol=1e-5)
  assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=4, temperature=0.0), "greedy=True"),
    (dict(max_new_tokens=4, top_p=0.0), "top_p"),
    (dict(max_new_tokens=4, top_k=-1), "top_k"),
    (dict(max_new_tokens=4, num_samples_per_prompt=0), "num_samples_per_prompt"),
    (dict(max_new_tokens=4, decode_phases=-1), "decode_phases"),
])
def test_sampling_config_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    SamplingConfig(**kwargs)
