"""End to end with a real tokenizer, as a user with their own model and data would run it.

A tiny random Hugging Face Llama folder with a byte-level BPE tokenizer and a chat template
(built here) -> launch/convert.py -> SFT through launch/train.py on a JSONL of word problems
("What is 12 plus 34?" -> "46") with the numeric host verifier -> SCoRe from it with a
plain-English correction instruction -> launch/convert.py --to=hf -> transformers loads the
result, and its greedy generations are exactly our sampler's, token for token and as text.
These are the README's "Real models in and out" commands.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers

from selfimprove.encoding import PromptFormat, TextEncoder
from selfimprove.models.orbax_params import load_orbax_params
from selfimprove.run_tokenizer import build_tokenizer, stop_token_ids, TokenizerSpec
from selfimprove.sampling import SamplingConfig, make_sampler
from tests.byo_fixtures import make_byo_hf_folder, word_problem_records, write_jsonl
from tests.train_helpers import ROOT, read_metrics

NEW_TOKENS = 12


def _run(*args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)   # one CPU device, as a user's laptop
  result = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  return result


@pytest.fixture(scope="module")
def pipeline_dirs(tmp_path_factory):
  """Runs the README's commands once: convert, SFT, SCoRe, export."""
  root = tmp_path_factory.mktemp("byo")
  hf_dir = make_byo_hf_folder(str(root / "hf_model"), family="llama", seed=0)
  train_path = write_jsonl(root / "train.jsonl", word_problem_records(96, seed=0))
  eval_path = write_jsonl(root / "eval.jsonl", word_problem_records(16, seed=1))
  data = [f"--config.task.train_path={train_path}", f"--config.task.eval_path={eval_path}",
          "--config.task.prompt_field=question", "--config.tokenizer.chat_template=True"]
  orbax_dir, sft_dir, score_dir, out_dir = (str(root / name) for name in
                                            ("orbax", "sft", "score", "exported"))
  _run("launch/convert.py", f"--hf_dir={hf_dir}", f"--orbax_dir={orbax_dir}")
  # A small learning rate: 8 steps at the preset's 1e-3 teach this random model to answer
  # every prompt with <eos> at once, which would make the generation comparison vacuous.
  _run("launch/train.py", "--config=configs/sft_jsonl.py:test", f"--workdir={sft_dir}",
       f"--config.init_from={orbax_dir}", "--config.optimizer.learning_rate=1e-4", *data)
  score = _run("launch/train.py", "--config=configs/score_jsonl.py:test", f"--workdir={score_dir}",
               f"--config.init_from={sft_dir}/params", *data)
  _run("launch/convert.py", "--to=hf", f"--orbax_dir={score_dir}/params", f"--hf_dir={out_dir}")
  return dict(hf=hf_dir, orbax=orbax_dir, sft=sft_dir, score=score_dir, out=out_dir,
              eval_path=eval_path, score_log=score.stdout + score.stderr)


def test_the_runs_use_the_models_own_tokenizer_and_log_their_figures(pipeline_dirs):
  # convert.py kept the tokenizer; each run saved it beside its params for the next one.
  for folder in ("orbax", "sft", "score"):
    sub = "tokenizer" if folder == "orbax" else "params/tokenizer"
    assert os.path.exists(os.path.join(pipeline_dirs[folder], sub, "tokenizer.json")), folder
  sft_rows = read_metrics(pipeline_dirs["sft"])
  assert sft_rows[-1]["step"] == 8 and "eval/accuracy" in sft_rows[-1]
  score_rows = read_metrics(pipeline_dirs["score"])
  for key in ("eval/acc_t1", "eval/acc_t2", "eval/delta"):
    assert [r["step"] for r in score_rows if key in r] == [0, 4, 8]
  assert all(np.isfinite(r["train/loss"]) for r in score_rows if "train/loss" in r)
  assert "recompiled" not in pipeline_dirs["score_log"]   # host verifier: still one compile


def test_exported_model_generates_exactly_our_greedy_strings(pipeline_dirs):
  tokenizer, _ = build_tokenizer(TokenizerSpec(kind="hf"), None, pipeline_dirs["score"] + "/params")
  encoder = TextEncoder(tokenizer, PromptFormat(chat_template=True))
  with open(pipeline_dirs["eval_path"]) as f:
    questions = [json.loads(line)["question"] for line in f][:6]
  prompts = [encoder.prompt_ids(q) for q in questions]
  length = max(map(len, prompts))
  tokens = np.full((len(prompts), length), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(prompts), length), bool)
  for row, ids in enumerate(prompts):
    tokens[row, length - len(ids):], mask[row, length - len(ids):] = ids, True
  stops = stop_token_ids(tokenizer)
  _, graphdef, params = load_orbax_params(pipeline_dirs["score"] + "/params")
  sampling = SamplingConfig(max_new_tokens=NEW_TOKENS, greedy=True, stop_token_ids=stops,
                            pad_token_id=tokenizer.pad_id)
  rollout = jax.device_get(make_sampler(graphdef, sampling)(params, tokens, mask,
                                                            jax.random.key(0)))

  model = transformers.AutoModelForCausalLM.from_pretrained(pipeline_dirs["out"],
                                                            dtype=torch.float32).eval()
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(pipeline_dirs["out"])
  distinct = set()
  for row, ids in enumerate(prompts):
    ours = [int(t) for t in rollout.tokens[row][rollout.completion_mask[row]]]
    with torch.no_grad():
      out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=list(stops),
                           pad_token_id=tokenizer.pad_id)
    theirs = out[0, len(ids):].tolist()
    theirs = theirs[:next((i + 1 for i, t in enumerate(theirs) if t in stops), len(theirs))]
    assert ours == theirs, (questions[row], ours, theirs)
    assert tokenizer.decode(ours) == hf_tokenizer.decode(theirs, skip_special_tokens=True)
    distinct.add(tuple(ours))
  assert len(distinct) > 1   # the prompts matter: not one fixed output
