"""SFT on a registered seqio Task or Mixture: its text prompts and answers, read by name.

    pip install -e '.[seqio]'   # seqio and TensorFlow: not in the default install
    python launch/train.py --config=configs/sft_seqio.py --workdir=/runs/sft_seqio \
        --config.task.seqio_modules=my_tasks --config.task.seqio_name=my_task \
        --config.init_from=/models/qwen-orbax

`task.seqio_modules` (comma-separated) are imported first so that their TaskRegistry.add /
MixtureRegistry.add calls run; `task.seqio_name` names the Task or Mixture. Prompts are
`task.prompt_feature` ("inputs"), answers `task.answer_feature` ("targets"), read as the text
before tokenization ("<feature>_pretokenized" where the task's tokenize step kept it) from
`task.train_split` ("train") and `task.eval_split` ("validation"); see
selfimprove/tasks/seqio_task.py. Evaluation checks completions with `task.verifier`
("exact_match", "numeric" or "module:function"). The run's tokenizer encodes the text: the
model's own with init_from, UTF-8 bytes for the `tiny` model trained from scratch without it.
Presets (`:arg`): `tiny` (default) and `test` (a 2-layer model and a few steps, for tests).
"""

import ml_collections
from ml_collections import config_dict

from configs.sft_jsonl import get_config as get_jsonl_config


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  config = get_jsonl_config(arg).unlock()
  config.task = ml_collections.ConfigDict(dict(
      name="seqio", seqio_name="", seqio_modules="", train_split="train",
      eval_split="validation", prompt_feature="inputs", answer_feature="targets",
      max_examples_per_split=0, verifier="exact_match", use_cached=False,
      seed=config_dict.placeholder(int)))   # None: seqio's default; an int: repeatable
  return config.lock()
