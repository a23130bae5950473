"""Batched autoregressive sampling with a KV cache, entirely inside jit.

`sample` prefills the prompts, then decodes inside `lax.while_loop`s that stop
as soon as every row has emitted a stop token (or `max_new_tokens` is reached):
one loop per phase of the completion (`SamplingConfig.decode_phases`), each
with a KV cache only as long as the slots it can have filled by its end.
It is a pure function of (model, arrays, key) and is meant to be called inside
another jitted function, e.g. a training step that samples its own data.

Log-probabilities. `Rollout.logprobs[b, t]` is the log-probability of the
sampled token under the distribution it was drawn from: softmax(logits /
temperature), restricted to the top-k / top-p set and renormalised. With
`temperature=1` and no top-k/top-p this is the model's own log-softmax, which
is what on-policy RL losses need as the "old policy" log-prob. For greedy
decoding, where the sampling distribution is a point mass, it is the
log-probability under the unmodified model distribution (temperature 1).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from selfimprove.models.kv_cache import grow, init_cache, repeat_rows
from selfimprove.models.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to sample completions.

  Attributes:
    max_new_tokens: completion length budget (the static completion shape).
    temperature: softmax temperature (> 0); ignored when `greedy`.
    greedy: take the argmax token at every step.
    top_k: keep only the k most likely tokens (0: off).
    top_p: nucleus sampling; keep the smallest set with mass >= top_p (1.0: off).
    num_samples_per_prompt: completions per prompt; rows of the output are
      grouped by prompt (row = prompt_index * num_samples_per_prompt + j).
    stop_token_ids: a row ends after emitting any of these (the stop token is
      kept and masked in; everything after it is padding and masked out).
    pad_token_id: id written after a row has stopped.
    decode_phases: the decode loop runs in this many phases of about equal
      length, each with a KV cache just long enough for the slots it can fill
      (grown between phases): a step attends over the cache it can have
      written, not over the whole completion budget. More phases: less
      attention work, more compiled code (one decode loop per phase).
      0 (default): one phase per 16 new tokens, at most 4 (`tiny`, batch 32,
      512 new tokens: about 20% faster; bench/README.md).
  """

  max_new_tokens: int
  temperature: float = 1.0
  greedy: bool = False
  top_k: int = 0
  top_p: float = 1.0
  num_samples_per_prompt: int = 1
  stop_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0
  decode_phases: int = 0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"SamplingConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}.")
    if not self.greedy and not self.temperature > 0:
      raise ValueError(
          f"SamplingConfig.temperature must be > 0 (use greedy=True for argmax), "
          f"got {self.temperature}.")
    if self.top_k < 0:
      raise ValueError(f"SamplingConfig.top_k must be >= 0 (0 disables it), got {self.top_k}.")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}.")
    if self.num_samples_per_prompt < 1:
      raise ValueError(
          f"SamplingConfig.num_samples_per_prompt must be >= 1, got {self.num_samples_per_prompt}.")
    if self.decode_phases < 0:
      raise ValueError(
          f"SamplingConfig.decode_phases must be >= 0 (0: automatic), got {self.decode_phases}.")
    object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))


class Rollout(NamedTuple):
  """Sampled completions and what RL losses need about them. Rows = prompts x samples."""

  prompt_tokens: jax.Array    # [rows, prompt_len] the prompts, repeated per sample
  prompt_mask: jax.Array      # [rows, prompt_len] bool
  tokens: jax.Array           # [rows, max_new_tokens] completion ids (pad after stop)
  logprobs: jax.Array         # [rows, max_new_tokens] float32, 0 where masked out
  completion_mask: jax.Array  # [rows, max_new_tokens] bool, True up to and incl. the stop token
  lengths: jax.Array          # [rows] int32, number of completion tokens (incl. stop)
  num_decode_steps: jax.Array  # [] int32, sampling steps run (< max_new_tokens if all stopped early)


def _filter_logits(logits: jax.Array, config: SamplingConfig) -> jax.Array:
  """Applies temperature, top-k and top-p to float32 logits [rows, vocab]."""
  logits = logits / config.temperature
  if config.top_k:
    kth_largest = jax.lax.top_k(logits, config.top_k)[0][:, -1:]
    logits = jnp.where(logits >= kth_largest, logits, -jnp.inf)
  if config.top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    # The most likely token is always kept (its mass_before is 0).
    threshold = jnp.min(jnp.where(mass_before < config.top_p, sorted_logits, jnp.inf),
                        axis=-1, keepdims=True)
    logits = jnp.where(logits >= threshold, logits, -jnp.inf)
  return logits


_AUTO_TOKENS_PER_PHASE = 16
_MAX_AUTO_PHASES = 4


def decode_phase_ends(config: SamplingConfig) -> tuple[int, ...]:
  """The completion lengths at which the decode loop's phases end (the last is max_new_tokens).

  Phase k runs the decode steps that write completion tokens [ends[k-1], ends[k]);
  its cache holds prompt_len + ends[k] - 1 slots (the last token is never fed back)."""
  max_new, phases = config.max_new_tokens, config.decode_phases
  if not phases:
    phases = max(1, min(_MAX_AUTO_PHASES, max_new // _AUTO_TOKENS_PER_PHASE))
  phases = min(phases, max_new)
  return tuple(sorted({-(-max_new * k // phases) for k in range(1, phases + 1)}))


def is_key_per_row(rng: jax.Array) -> bool:
  """True for a [rows] array of typed keys, False for one key (typed [] or raw uint32 [2])."""
  return jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) and rng.ndim == 1


def fold_in(rng: jax.Array, data: int | jax.Array) -> jax.Array:
  """`jax.random.fold_in` of one key, or of each key of a [rows] array of keys."""
  if is_key_per_row(rng):
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(rng, data)
  return jax.random.fold_in(rng, data)


def keys_per_sample(prompt_keys: jax.Array, num_samples_per_prompt: int) -> jax.Array:
  """[batch] prompt keys -> [batch * n] row keys (row = prompt * n + j gets fold_in(key, j))."""
  samples = jnp.arange(num_samples_per_prompt)
  per_prompt = jax.vmap(lambda key: jax.vmap(lambda j: jax.random.fold_in(key, j))(samples))
  return per_prompt(prompt_keys).reshape(-1)


def choose_tokens(logits: jax.Array, rng: jax.Array, config: SamplingConfig
                  ) -> tuple[jax.Array, jax.Array]:
  """Picks one token per row from logits [rows, vocab]; returns (tokens, logprobs).

  `rng` is one key, or [rows] typed keys (row i draws with key i only)."""
  logits = logits.astype(jnp.float32)
  if config.greedy:
    tokens = jnp.argmax(logits, axis=-1)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
  else:
    filtered = _filter_logits(logits, config)
    if is_key_per_row(rng):
      tokens = jax.vmap(jax.random.categorical)(rng, filtered)
    else:
      tokens = jax.random.categorical(rng, filtered, axis=-1)
    log_probs = jax.nn.log_softmax(filtered, axis=-1)
  token_logprobs = jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
  return tokens.astype(jnp.int32), token_logprobs


def _is_stop(tokens: jax.Array, config: SamplingConfig) -> jax.Array:
  if not config.stop_token_ids:
    return jnp.zeros(tokens.shape, bool)
  return jnp.isin(tokens, jnp.asarray(config.stop_token_ids, jnp.int32))


def sample(model: Transformer, prompt_tokens: jax.Array, prompt_mask: jax.Array,
           rng: jax.Array, config: SamplingConfig) -> Rollout:
  """Samples `config.num_samples_per_prompt` completions for each prompt.

  Args:
    model: the transformer (inside jit: `nnx.merge(graphdef, params)`).
    prompt_tokens: [batch, prompt_len] int ids; padding anywhere (left padding
      is the natural layout), but every prompt needs at least one real token.
    prompt_mask: [batch, prompt_len] bool, False at padding.
    rng: a `jax.random` key; the same key gives the same samples. Or one typed
      key per prompt ([batch], `jax.random.key`): then a prompt's samples depend
      on its own key only, not on the rest of the batch (a dataset sampled "once"
      from a frozen model, keyed by problem: selfimprove/pipelines/score_offline.py).
    config: static sampling settings.

  Returns:
    A Rollout with batch * num_samples_per_prompt rows.
  """
  n = config.num_samples_per_prompt
  if is_key_per_row(rng):
    rng = keys_per_sample(rng, n)
  prompt_tokens = prompt_tokens.astype(jnp.int32)
  prompt_mask = prompt_mask.astype(bool)
  batch, prompt_len = prompt_tokens.shape
  max_new = config.max_new_tokens

  # Each prompt is prefilled once; its cache and last logits are then repeated
  # for its n samples (row = prompt * n + j), which diverge from the first token.
  # Per-layer cache buffers and per-layer weights taken once, before the loop:
  # a decode step then reads every weight and cache entry where it lies.
  layers = model.unstacked_layers()
  phase_ends = decode_phase_ends(config)
  cache_len = lambda phase_end: prompt_len + phase_end - 1
  cache = init_cache(model.config, batch, cache_len(phase_ends[0]), per_layer=True)
  logits, cache = model(prompt_tokens, prompt_mask, cache, layers=layers)
  last_real = prompt_len - 1 - jnp.argmax(prompt_mask[:, ::-1], axis=1)
  first_logits = logits[jnp.arange(batch), last_real]         # [batch, vocab]
  if n > 1:
    cache = repeat_rows(cache, n)
    first_logits = jnp.repeat(first_logits, n, axis=0)
    prompt_tokens = jnp.repeat(prompt_tokens, n, axis=0)
    prompt_mask = jnp.repeat(prompt_mask, n, axis=0)
  rows = batch * n

  token, logprob = choose_tokens(first_logits, fold_in(rng, 0), config)
  tokens = jnp.full((rows, max_new), config.pad_token_id, jnp.int32).at[:, 0].set(token)
  logprobs = jnp.zeros((rows, max_new), jnp.float32).at[:, 0].set(logprob)
  completion_mask = jnp.zeros((rows, max_new), bool).at[:, 0].set(True)
  done = _is_stop(token, config)

  def keep_going(carry):
    step, _, _, _, _, done = carry
    return (step < max_new) & ~jnp.all(done)

  def decode_one(carry):
    step, cache, tokens, logprobs, completion_mask, done = carry
    previous = jax.lax.dynamic_index_in_dim(tokens, step - 1, axis=1)            # [rows, 1]
    previous_real = jax.lax.dynamic_index_in_dim(completion_mask, step - 1, axis=1)
    logits, cache = model(previous, previous_real, cache, layers=layers)
    token, logprob = choose_tokens(logits[:, 0], fold_in(rng, step), config)
    token = jnp.where(done, config.pad_token_id, token)
    logprob = jnp.where(done, 0.0, logprob)
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, step, axis=1)
    logprobs = jax.lax.dynamic_update_index_in_dim(logprobs, logprob, step, axis=1)
    completion_mask = jax.lax.dynamic_update_index_in_dim(completion_mask, ~done, step, axis=1)
    done = done | _is_stop(token, config)
    return step + 1, cache, tokens, logprobs, completion_mask, done

  carry = (jnp.int32(1), cache, tokens, logprobs, completion_mask, done)
  for phase_end in phase_ends:
    step, cache, *rest = carry
    carry = (step, grow(cache, cache_len(phase_end)), *rest)
    in_phase = lambda carry, end=phase_end: keep_going(carry) & (carry[0] < end)
    carry = jax.lax.while_loop(in_phase, decode_one, carry)
  steps, _, tokens, logprobs, completion_mask, _ = carry
  return Rollout(
      prompt_tokens=prompt_tokens,
      prompt_mask=prompt_mask,
      tokens=tokens,
      logprobs=logprobs,
      completion_mask=completion_mask,
      lengths=completion_mask.sum(axis=1, dtype=jnp.int32),
      num_decode_steps=steps,
  )


def make_sampler(graphdef: nnx.GraphDef, config: SamplingConfig
                 ) -> Callable[[nnx.State, jax.Array, jax.Array, jax.Array], Rollout]:
  """A jitted `fn(params, prompt_tokens, prompt_mask, rng) -> Rollout` for use outside a step."""

  @jax.jit
  def sample_fn(params, prompt_tokens, prompt_mask, rng):
    return sample(nnx.merge(graphdef, params), prompt_tokens, prompt_mask, rng, config)

  return sample_fn
