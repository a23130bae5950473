"""Sample completions from a model and print them.

    python launch/sample.py --config=configs/sample.py:tiny --prompts="12+34=,7*8="
    python launch/sample.py --config=configs/sample.py:tiny --config.sampling.temperature=0.7

    python launch/sample.py --config=configs/sample.py --config.init_from=/runs/x/params \
        --config.tokenizer=/models/Qwen2.5-0.5B --prompts="Hello"

The `:arg` picks the model preset. With `init_from` empty the model is freshly
initialised from `seed` (useful to check an install or time a preset); the
output is then random bytes. `init_from` takes a saved model (a run's DIR/params
or launch/convert.py output); `tokenizer` is "byte" or a Hugging Face folder.
"""

import ml_collections


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = arg                  # preset name, see selfimprove/models/config.py
  config.init_from = ""               # saved model to load; "" = random init from `seed`
  config.seed = 0
  config.tokenizer = "byte"           # "byte" or a Hugging Face model/tokenizer folder
  config.prompt_len = 64
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sampling = ml_collections.ConfigDict(dict(
      max_new_tokens=32, temperature=1.0, greedy=False, top_k=0, top_p=1.0,
      num_samples_per_prompt=2,
      decode_phases=0))                 # 0: one decode phase per 16 new tokens, at most 4
  return config.lock()
