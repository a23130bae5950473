"""Peer worker for bench/rl_iteration.py: Tunix's GRPO learner (JAX) at the RL row's shape.

    /tmp/tunix_venv/bin/python bench/peers/rl_tunix.py --steps 8

Runs in its own virtual environment (google-tunix; see bench/rl_iteration.md) with Tunix's and
JAX's defaults except what the shape fixes: Tunix's own Llama3 model class at the `tiny`
preset's shape with random weights (the reference a copy of them, as tunix/cli/grpo_main.py
does), its vanilla rollout engine, GRPOConfig(num_generations=8, num_iterations=1,
beta=0.04), 8 prompts per step (64 samples), 16 new tokens, max_prompt_length = the prompt
length (9 with <bos>) and kv_cache_size = prompt + completion, and a rule-based reward (the
arithmetic answer checked from the text). Tunix wants a classic `jax.sharding.Mesh` with
Auto axis types: `jax.make_mesh`'s explicit axes break its gathers.

Each global step (rollout, reward, reference and policy log-probs, one update) is timed from
the start of one `_run_global_step` to the start of the next (so weight sync and metric
buffering count); the first, which compiles, is reported separately. Prints `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import random
import statistics
import time

import jax
import numpy as np
import optax
from flax import nnx
from tunix.models.llama3 import model as llama3
from tunix.rl import rl_cluster as rl_cluster_lib
from tunix.rl.grpo import grpo_learner
from tunix.rl.rollout import base_rollout

from shapes import addition_reward  # noqa: E402  (bench/peers/, the script's directory)

ALPHABET = "0123456789+-*="
NUM_PROMPTS, GROUP_SIZE, MAX_NEW_TOKENS, BETA = 8, 8, 16, 0.04
PAD, BOS, EOS = 0, 1, 2


class CharTokenizer:
  """One id per character of the task's alphabet (like our char tokenizer); ids 17..511 unused.
  Tunix's TokenizerAdapter accepts any object with these five methods."""

  def __init__(self):
    self._ids = {c: i + 3 for i, c in enumerate(ALPHABET)}
    self._chars = {i: c for c, i in self._ids.items()}

  def encode(self, text: str, **kwargs) -> list[int]:
    return [self._ids[c] for c in text]

  def decode(self, ids, **kwargs) -> str:
    return "".join(self._chars.get(int(i), "") for i in ids)

  def bos_id(self) -> int:
    return BOS

  def eos_id(self) -> int:
    return EOS

  def pad_id(self) -> int:
    return PAD




def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=8, help="timed steps after the first")
  args = parser.parse_args()
  rng = random.Random(0)
  num_global_steps = args.steps + 2   # the last step's end is not timed (see the docstring)
  # One array of strings per batch (a pytree leaf: the learner np.repeat-s it G times).
  batches = [{"prompts": np.array([f"{rng.randint(100, 999)}+{rng.randint(100, 999)}="
                                   for _ in range(NUM_PROMPTS)])} for _ in range(num_global_steps)]
  prompt_len = 1 + len(str(batches[0]["prompts"][0]))   # <bos> + characters

  devices = np.array(jax.devices()[:1]).reshape(1, 1)
  mesh = jax.sharding.Mesh(devices, ("fsdp", "tp"),
                           axis_types=(jax.sharding.AxisType.Auto,) * 2)
  config = llama3.ModelConfig(   # selfimprove.models preset "tiny"
      num_layers=4, vocab_size=512, embed_dim=256, hidden_dim=768, num_heads=8, head_dim=32,
      num_kv_heads=4, rope_theta=10_000, norm_eps=1e-6)
  start = time.perf_counter()
  with mesh:
    reference = llama3.Llama3(config, rngs=nnx.Rngs(params=0))
    graphdef, params = nnx.split(reference)
    actor = nnx.merge(graphdef, jax.tree.map(lambda x: x.copy(), params))
    cluster_config = rl_cluster_lib.ClusterConfig(
        role_to_mesh={role: mesh for role in (rl_cluster_lib.Role.ACTOR,
                                              rl_cluster_lib.Role.REFERENCE,
                                              rl_cluster_lib.Role.ROLLOUT)},
        rollout_engine="vanilla",
        training_config=rl_cluster_lib.RLTrainingConfig(
            actor_optimizer=optax.adamw(1e-6), eval_every_n_steps=10**9,
            max_steps=num_global_steps),
        rollout_config=base_rollout.RolloutConfig(
            max_tokens_to_generate=MAX_NEW_TOKENS, max_prompt_length=prompt_len,
            kv_cache_size=prompt_len + MAX_NEW_TOKENS, eos_tokens=[EOS]))
    cluster = rl_cluster_lib.RLCluster(actor=actor, reference=reference,
                                       tokenizer=CharTokenizer(), cluster_config=cluster_config)
    algo_config = grpo_learner.GRPOConfig(num_generations=GROUP_SIZE, num_iterations=1, beta=BETA)
    learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo_config,
                                       reward_fns=[addition_reward])
    setup_s = time.perf_counter() - start

    starts = []
    run_global_step = learner._run_global_step

    def timed_global_step(*a, **k):
      starts.append(time.perf_counter())
      return run_global_step(*a, **k)

    learner._run_global_step = timed_global_step
    learner.train(batches)
  times = list(np.diff(starts))
  result = dict(
      library="tunix", version=f"google-tunix {importlib.metadata.version('google-tunix')}, "
      f"jax {jax.__version__}, flax {importlib.metadata.version('flax')}",
      setup_s=setup_s, compile_s=None, first_step_s=times[0], step_s=times[1:],
      median_step_s=statistics.median(times[1:]), global_steps_started=len(starts),
      prompts=NUM_PROMPTS, prompt_len=prompt_len,
      settings=dict(loss_agg_mode=algo_config.loss_agg_mode, kl_loss_mode=algo_config.kl_loss_mode,
                    rollout_engine="vanilla", temperature=cluster_config.rollout_config.temperature,
                    kv_cache_size=cluster_config.rollout_config.kv_cache_size),
      metrics={}, threads=dict(jax_devices=jax.device_count(), backend=jax.default_backend()))
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
