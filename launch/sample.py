"""Samples completions for a few prompts and prints them.

    python launch/sample.py --config=configs/sample.py:tiny --prompts="12+34=,7*8="
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from selfimprove import sharding  # noqa: E402
from selfimprove.models import Transformer, get_preset  # noqa: E402
from selfimprove.models.hf_tokenizer import load_tokenizer  # noqa: E402
from selfimprove.models.orbax_params import load_orbax_params  # noqa: E402
from selfimprove.sampling import SamplingConfig, make_sampler  # noqa: E402
from selfimprove.tokenizers import ByteTokenizer, encode_batch  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sample.py:tiny")
_PROMPTS = flags.DEFINE_list("prompts", ["Hello"], "Comma-separated prompts.")


def main(argv):
  del argv
  config = _CONFIG.value
  if config.tokenizer == "byte":
    tokenizer, stop_ids = ByteTokenizer(), (ByteTokenizer.EOS,)
  elif os.path.isdir(config.tokenizer):
    tokenizer = load_tokenizer(config.tokenizer)
    stop_ids = tokenizer.stop_ids
  else:
    raise ValueError(f"config.tokenizer={config.tokenizer!r}: expected 'byte' or a Hugging Face "
                     f"model/tokenizer folder.")
  mesh = sharding.make_mesh(**config.mesh)
  if config.init_from:
    model_config, graphdef, params = load_orbax_params(config.init_from, mesh)
  else:
    model_config = get_preset(config.model)
    graphdef, params = sharding.init_sharded(
        lambda: Transformer(model_config, rngs=nnx.Rngs(params=config.seed)), mesh,
        model_config.sharding_rules)
  rules = model_config.sharding_rules
  if tokenizer.vocab_size > model_config.vocab_size:
    raise ValueError(f"The model's vocab_size {model_config.vocab_size} is smaller than the "
                     f"tokenizer's {tokenizer.vocab_size}.")
  sampling = SamplingConfig(stop_token_ids=stop_ids, pad_token_id=tokenizer.pad_id,
                            **config.sampling)
  prompts = list(_PROMPTS.value)
  tokens, mask = encode_batch(tokenizer, prompts, config.prompt_len, add_bos=True)
  with jax.set_mesh(mesh):
    rollout = make_sampler(graphdef, sampling)(
        params, *sharding.shard_batch((tokens, mask), mesh, rules), jax.random.key(config.seed))
  rollout = jax.device_get(rollout)
  for row in range(rollout.tokens.shape[0]):
    prompt = prompts[row // sampling.num_samples_per_prompt]
    completion = tokenizer.decode(rollout.tokens[row][rollout.completion_mask[row]])
    print(f"[{row}] {prompt!r} -> {completion!r}  ({int(rollout.lengths[row])} tokens, "
          f"sum logprob {float(rollout.logprobs[row].sum()):.2f})")


if __name__ == "__main__":
  app.run(main)
