"""The bring-your-own-model fixtures load in transformers and in selfimprove, and the two agree."""

import json

import numpy as np
import pytest
import torch
import transformers

from selfimprove.models.hf import load_hf
from selfimprove.models.hf_tokenizer import load_tokenizer
from tests.byo_fixtures import (IM_END, PAD_TOKEN, VOCAB_SIZE, make_byo_hf_folder,
                                word_problem_records, write_jsonl)
from tests.models.hf_models import forward

FAMILIES = ["llama", "qwen2"]
TEXTS = ["What is 12 plus 34?", "What is 49 minus 10? 39",
         "  odd  spacing, ünïcode ✓ 1234567\n"]
MESSAGES = [{"role": "user", "content": "What is 1 plus 2?"}]


@pytest.fixture(scope="module")
def byo_folder(tmp_path_factory):
  """byo_folder(family) -> the family's folder, built once per module."""
  folders = {}

  def get(family: str) -> str:
    if family not in folders:
      folders[family] = make_byo_hf_folder(str(tmp_path_factory.mktemp(f"byo_{family}")), family)
    return folders[family]

  return get


def test_word_problems_are_deterministic_and_correct(tmp_path):
  records = word_problem_records(200, seed=3)
  assert records == word_problem_records(200, seed=3) != word_problem_records(200, seed=4)
  operations = set()
  for record in records:
    _, _, a, operation, b = record["question"].rstrip("?").split()
    a, b = int(a), int(b)
    assert 10 <= a <= 49 and 10 <= b <= 49 and record["question"].endswith("?")
    assert int(record["answer"]) == (a + b if operation == "plus" else a - b) >= 0
    operations.add(operation)
  assert operations == {"plus", "minus"}
  path = write_jsonl(tmp_path / "train.jsonl", records)
  with open(path) as f:
    assert [json.loads(line) for line in f] == records


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_matches_transformers(byo_folder, family):
  folder = byo_folder(family)
  ours, theirs = load_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(folder)
  for text in TEXTS + [r["question"] for r in word_problem_records(5, seed=1)]:
    ids = theirs.encode(text, add_special_tokens=False)
    assert ours.encode(text) == ids, text
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True) == text
  assert ours.eos_id == theirs.convert_tokens_to_ids(IM_END) == theirs.eos_token_id
  assert ours.pad_id == theirs.convert_tokens_to_ids(PAD_TOKEN) == theirs.pad_token_id
  assert ours.bos_id is None and theirs.bos_token_id is None
  assert ours.vocab_size == len(theirs) == VOCAB_SIZE
  prompt = ours.apply_chat_template(MESSAGES, add_generation_prompt=True)
  assert prompt == theirs.apply_chat_template(MESSAGES, tokenize=False,
                                              add_generation_prompt=True)
  assert prompt == "<|im_start|>user\nWhat is 1 plus 2?<|im_end|>\n<|im_start|>assistant\n"
  assert ours.decode(ours.encode_chat(MESSAGES, True)) == "user\nWhat is 1 plus 2?\nassistant\n"


@pytest.mark.parametrize("family", FAMILIES)
def test_model_loads_in_transformers_and_matches_our_logits(byo_folder, family):
  folder = byo_folder(family)
  model, info = transformers.AutoModelForCausalLM.from_pretrained(
      folder, output_loading_info=True)
  model.eval()
  assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  tokenizer = load_tokenizer(folder)
  assert model.config.vocab_size == tokenizer.vocab_size == VOCAB_SIZE
  assert model.config.eos_token_id == tokenizer.eos_id
  assert model.config.bos_token_id is None and model.generation_config.do_sample is False

  config, graphdef, params = load_hf(folder)
  assert config.vocab_size == VOCAB_SIZE
  ids = tokenizer.encode_chat([{"role": "user", "content": "What is 23 minus 17?"}], True)
  tokens = np.asarray([ids], np.int32)
  mask = np.ones_like(tokens, bool)
  ours = np.asarray(forward(graphdef, params, tokens, mask))
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  assert np.abs(ours - theirs).max() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_is_not_degenerate(byo_folder, family):
  folder = byo_folder(family)
  model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
  tokenizer = load_tokenizer(folder)
  ids = tokenizer.encode_chat([{"role": "user", "content": "What is 12 plus 34?"}], True)
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                         max_new_tokens=8, min_new_tokens=8, do_sample=False)
  new = out[0, len(ids):].tolist()
  assert len(new) == 8 and len(set(new)) >= 2, new
