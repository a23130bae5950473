"""HF tokenizers (tokenizer.json and SentencePiece) against transformers.AutoTokenizer and sentencepiece."""

import json
import os

import pytest
import sentencepiece
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from selfimprove.models.hf_tokenizer import load_tokenizer
from selfimprove.tokenizers import Tokenizer, encode_batch

CORPUS = ["hello world, this is a tiny corpus.", "the quick brown fox jumps over the lazy dog",
          "12+34=46 and 7*8=56", "héllo wörld ✓ unicode too"] * 10
TEXTS = ["hello world", "the lazy fox: 12+34=46", "héllo ✓", "  two  spaces\nand a newline",
         "<|im_start|>user\nhi<|im_end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]


def _write_json(path, data):
  with open(path, "w") as f:
    json.dump(data, f)


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
  """A byte-level BPE tokenizer.json with chat special tokens, a chat template and two stop ids."""
  folder = tmp_path_factory.mktemp("bpe")
  tokenizer = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
  tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=300, special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tokenizer.save(str(folder / "tokenizer.json"))
  _write_json(folder / "tokenizer_config.json", {
      "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
      "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False,
                    "normalized": False, "rstrip": False, "single_word": False, "special": True},
      "pad_token": "<pad>",
      "unk_token": "<unk>", "chat_template": CHAT_TEMPLATE})
  _write_json(folder / "generation_config.json", {"eos_token_id": [2, 5]})
  return str(folder)


@pytest.fixture(scope="module")
def wordlevel_folder(tmp_path_factory):
  """A WordLevel tokenizer.json whose special tokens come only from config.json, chat template in chat_template.jinja."""
  folder = tmp_path_factory.mktemp("wordlevel")
  vocab = {w: i for i, w in enumerate(["[UNK]", "[BOS]", "[EOS]", "hello", "world", "the", "fox",
                                       "user", "assistant", ":"])}
  tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tokenizer.decoder = decoders.WordPiece()   # joins words with spaces
  tokenizer.add_special_tokens(["[BOS]", "[EOS]"])
  tokenizer.save(str(folder / "tokenizer.json"))
  _write_json(folder / "config.json", {"bos_token_id": 1, "eos_token_id": 2})
  (folder / "chat_template.jinja").write_text(
      "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}")
  return str(folder)


@pytest.fixture(scope="module")
def sentencepiece_folder(tmp_path_factory):
  """A tokenizer.model trained here, with bos/eos named in tokenizer_config.json."""
  folder = tmp_path_factory.mktemp("sentencepiece")
  (folder / "corpus.txt").write_text("\n".join(CORPUS))
  sentencepiece.SentencePieceTrainer.train(
      input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"), vocab_size=70,
      model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
  os.remove(folder / "corpus.txt")
  os.remove(folder / "tokenizer.vocab")
  _write_json(folder / "tokenizer_config.json",
              {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
  return str(folder)


def test_tokenizer_json_matches_auto_tokenizer(bpe_folder):
  ours, theirs = load_tokenizer(bpe_folder), transformers.AutoTokenizer.from_pretrained(bpe_folder)
  assert isinstance(ours, Tokenizer)
  for text in TEXTS:
    ids = theirs.encode(text, add_special_tokens=False)
    assert ours.encode(text) == ids, text
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text
  assert ours.decode([ours.bos_id] + ours.encode("hello") + [ours.eos_id, ours.pad_id]) == "hello"
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
      theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (1, 2, 0)
  assert ours.vocab_size == len(theirs)
  assert ours.stop_ids == (2, 5)     # tokenizer eos, then generation_config's extra eos


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_renders_like_transformers(bpe_folder, add_generation_prompt):
  ours, theirs = load_tokenizer(bpe_folder), transformers.AutoTokenizer.from_pretrained(bpe_folder)
  text = ours.apply_chat_template(MESSAGES, add_generation_prompt=add_generation_prompt)
  assert text == theirs.apply_chat_template(MESSAGES, tokenize=False,
                                            add_generation_prompt=add_generation_prompt)
  assert text.startswith("<s><|im_start|>system\nBe brief.<|im_end|>\n")
  assert text.endswith("<|im_start|>assistant\n") == add_generation_prompt
  ids = theirs.apply_chat_template(MESSAGES, tokenize=True,
                                   add_generation_prompt=add_generation_prompt)
  ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
  assert ours.encode_chat(MESSAGES, add_generation_prompt) == list(ids)


def test_wordlevel_with_ids_from_config_json_and_a_jinja_file(wordlevel_folder):
  ours = load_tokenizer(wordlevel_folder)
  theirs = transformers.AutoTokenizer.from_pretrained(wordlevel_folder)
  for text in ["hello world", "the fox", "hello unknown fox"]:
    assert ours.encode(text) == theirs.encode(text, add_special_tokens=False)
  assert ours.encode("hello unknown fox") == [3, 0, 6]
  assert (ours.bos_id, ours.eos_id) == (1, 2)
  assert ours.pad_id == 2 and not ours.has_pad_token   # no pad token: eos pads (masked anyway)
  assert ours.decode([1, 3, 4, 2]) == "hello world"
  messages = [{"role": "user", "content": "hello"}]
  assert ours.apply_chat_template(messages) == "user : hello "


def test_sentencepiece_matches_sentencepiece_and_auto_tokenizer(sentencepiece_folder):
  ours = load_tokenizer(sentencepiece_folder)
  processor = sentencepiece.SentencePieceProcessor(
      model_file=os.path.join(sentencepiece_folder, "tokenizer.model"))
  theirs = transformers.AutoTokenizer.from_pretrained(sentencepiece_folder)
  assert isinstance(ours, Tokenizer)
  for text in ["hello world", "the lazy fox: 12+34=46", "héllo wörld ✓", "quick brown dog"]:
    ids = ours.encode(text)
    assert ids == processor.encode(text) == theirs.encode(text, add_special_tokens=False), text
    # ":" is not in the vocabulary: its unk id is skipped like every special id.
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text
    if 0 not in ids:
      assert ours.decode(ids) == processor.decode(ids) == text
  assert (ours.bos_id, ours.eos_id) == (1, 2) == (theirs.bos_token_id, theirs.eos_token_id)
  assert ours.vocab_size == processor.get_piece_size() == 70
  assert ours.decode([1] + ours.encode("hello") + [2]) == "hello"
  tokens, mask = encode_batch(ours, ["hello", "the quick brown fox"], 20, add_bos=True)
  assert tokens[0, mask[0]][0] == 1 and ours.decode(tokens[1]) == "the quick brown fox"


def test_tokenizer_errors_name_the_file(bpe_folder, tmp_path):
  with pytest.raises(ValueError, match="neither tokenizer.json nor tokenizer.model"):
    load_tokenizer(str(tmp_path))
  (tmp_path / "tokenizer.json").write_text(open(os.path.join(bpe_folder, "tokenizer.json")).read())
  _write_json(tmp_path / "tokenizer_config.json", {"eos_token": "<end>"})
  with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token '<end>' is not in"):
    load_tokenizer(str(tmp_path))
  _write_json(tmp_path / "tokenizer_config.json", {})
  with pytest.raises(ValueError, match="no chat template"):
    load_tokenizer(str(tmp_path)).apply_chat_template(MESSAGES)
