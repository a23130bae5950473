"""A "bring your own model and data" folder, built locally: word problems and a tiny HF chat model.

`word_problem_records` makes two-digit addition and subtraction questions in
plain English ("What is 12 plus 34?" -> "46"); `make_byo_hf_folder` writes what
a user would bring from the Hugging Face Hub: a tiny random Llama or Qwen2
causal LM (float32 safetensors) together with a byte-level BPE tokenizer
trained here on those problems, ChatML special tokens, a Qwen-style chat
template and a generation config. Nothing is downloaded; building a folder
takes well under a second.

The model's vocabulary is exactly the tokenizer's (`VOCAB_SIZE` ids, the three
special tokens first), there is no bos token, `<|im_end|>` is eos and
`<|endoftext|>` pads, as in Qwen's instruct models.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence

import numpy as np
import tokenizers
import torch
import transformers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from tests.models.hf_models import perturb_norms_and_biases

PAD_TOKEN, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)   # ids 0, 1, 2
VOCAB_SIZE = 300   # the 3 special tokens, the 256 byte symbols and 41 merges

# Qwen2-Instruct's ChatML template, without its default system message (short prompts).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Qwen2's pre-tokenizer regex (one token per digit; words keep one leading non-letter).
# transformers 5 rebuilds every "qwen2" folder's tokenizer with this pipeline whatever
# tokenizer.json says, so a Qwen2 folder must use it to agree with transformers (as real
# Qwen checkpoints do).
QWEN2_PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                           r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# The tokenizer class transformers should use for each family's tokenizer.json.
TOKENIZER_CLASSES = {"llama": "PreTrainedTokenizerFast", "qwen2": "Qwen2Tokenizer"}

_MODEL_SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
                    max_position_embeddings=256)

FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(rope_theta=10_000.0)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(rope_theta=1_000_000.0, tie_word_embeddings=False)),
}


def word_problem_records(n: int, seed: int) -> list[dict[str, str]]:
  """`n` records {"question": "What is 12 plus 34?", "answer": "46"}, the same for the same seed.

  Operands are two-digit numbers in [10, 49]; "minus" is used (half the time)
  only when the first operand is at least the second, so every answer is
  non-negative.
  """
  rng = np.random.default_rng(seed)
  records = []
  for _ in range(n):
    a, b = (int(x) for x in rng.integers(10, 50, size=2))
    if a >= b and rng.random() < 0.5:
      operation, answer = "minus", a - b
    else:
      operation, answer = "plus", a + b
    records.append({"question": f"What is {a} {operation} {b}?", "answer": str(answer)})
  return records


def write_jsonl(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> str:
  """Writes one JSON object per line to `path` and returns the path as a string."""
  with open(path, "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  return str(path)


def _write_json(path: str, data: dict[str, Any]) -> None:
  with open(path, "w") as f:
    json.dump(data, f, indent=2)


def _corpus(seed: int) -> Iterator[str]:
  """Word problems with answers, a chat's words and bare numbers: the text the BPE learns from.

  No chat markup: its special tokens are whole tokens already, and the few
  merges a small vocabulary allows are better spent on numbers and words.
  """
  for i, record in enumerate(word_problem_records(2000, seed)):
    yield f"{record['question']} {record['answer']}"
    if i % 20 == 0:   # rarer than the problems: a few merges for a chat's words
      yield "system\nAnswer with a number.\nuser\nassistant\nThe answer is"
  for number in range(100):
    yield f"{number} {number:02d}"


def train_tokenizer(family: str = "llama", seed: int = 0,
                    vocab_size: int = VOCAB_SIZE) -> tokenizers.Tokenizer:
  """A byte-level BPE with the ChatML special tokens (ids 0, 1, 2), trained on word problems.

  Byte-level, so decode(encode(text)) == text: for any text with "llama"
  (GPT-2's pre-tokenizer; a number can be one token), for NFC-normalized text
  with "qwen2" (Qwen2's NFC normalizer and pre-tokenizer; one token per digit).
  """
  if family not in TOKENIZER_CLASSES:
    raise ValueError(f"family {family!r} is not one of {sorted(TOKENIZER_CLASSES)}.")
  tokenizer = tokenizers.Tokenizer(models.BPE())
  if family == "qwen2":
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  else:
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator(_corpus(seed), trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return tokenizer


def _write_tokenizer_files(folder: str, family: str, tokenizer: tokenizers.Tokenizer) -> None:
  """tokenizer.json plus the transformers-side files that name the special tokens and template."""
  tokenizer.save(os.path.join(folder, "tokenizer.json"))
  added = {str(tokenizer.token_to_id(token)): {
      "content": token, "lstrip": False, "normalized": False, "rstrip": False,
      "single_word": False, "special": True} for token in SPECIAL_TOKENS}
  _write_json(os.path.join(folder, "tokenizer_config.json"), {
      "tokenizer_class": TOKENIZER_CLASSES[family], "added_tokens_decoder": added,
      "additional_special_tokens": [IM_START, IM_END], "bos_token": None, "eos_token": IM_END,
      "pad_token": PAD_TOKEN, "unk_token": None, "clean_up_tokenization_spaces": False,
      "model_max_length": _MODEL_SIZES["max_position_embeddings"],
      "chat_template": CHAT_TEMPLATE})
  _write_json(os.path.join(folder, "special_tokens_map.json"), {
      "additional_special_tokens": [IM_START, IM_END], "eos_token": IM_END,
      "pad_token": PAD_TOKEN})


def _make_model(family: str, vocab_size: int, eos_id: int, pad_id: int,
                seed: int) -> torch.nn.Module:
  """A random float32 `family` model whose norms are perturbed too (HF sets them to ones)."""
  config_class, model_class, extra = FAMILIES[family]
  config = config_class(vocab_size=vocab_size, bos_token_id=None, eos_token_id=eos_id,
                        pad_token_id=pad_id, **_MODEL_SIZES, **extra)
  torch.manual_seed(seed)
  return perturb_norms_and_biases(model_class(config).eval(), seed + 1)


def make_byo_hf_folder(folder: str | os.PathLike, family: str = "llama", seed: int = 0) -> str:
  """Writes a tiny random HF causal LM with its own trained tokenizer to `folder`; returns the path.

  Args:
    folder: created if missing; receives config.json, model.safetensors,
      generation_config.json, tokenizer.json, tokenizer_config.json and
      special_tokens_map.json.
    family: "llama" or "qwen2" (2 layers, hidden 64, 4 heads, 2 kv heads,
      intermediate 128, weights drawn with std 0.1, untied embeddings).
    seed: seeds the tokenizer's corpus and the model's weights.
  """
  if family not in FAMILIES:
    raise ValueError(f"family {family!r} is not one of {sorted(FAMILIES)}.")
  folder = str(folder)
  os.makedirs(folder, exist_ok=True)
  tokenizer = train_tokenizer(family, seed)
  vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
  eos_id, pad_id = tokenizer.token_to_id(IM_END), tokenizer.token_to_id(PAD_TOKEN)
  _write_tokenizer_files(folder, family, tokenizer)
  model = _make_model(family, vocab_size, eos_id, pad_id, seed)
  model.save_pretrained(folder, safe_serialization=True)
  # save_pretrained may write its own generation config; ours states greedy decoding outright.
  _write_json(os.path.join(folder, "generation_config.json"), {
      "eos_token_id": eos_id, "pad_token_id": pad_id, "do_sample": False,
      "transformers_version": transformers.__version__})
  return folder
