"""The run owns the tokenizer: how config.tokenizer picks it, and the early errors that name the cause."""

import json
import os

import numpy as np
import pytest

from selfimprove import run_setup, train as train_lib
from selfimprove.config_checks import ConfigError, DataError
from selfimprove.encoding import PromptFormat, RowEncoder, TextEncoder, measure_lengths
from selfimprove.models.hf_tokenizer import HFTokenizer
from selfimprove.run_tokenizer import TokenizerSpec, build_tokenizer, save_tokenizer
from selfimprove.tasks import ArithmeticConfig, ArithmeticTask
from selfimprove.tokenizers import ByteTokenizer, CharTokenizer
from tests.byo_fixtures import make_byo_hf_folder
from tests.train_helpers import make_test_config


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
  return make_byo_hf_folder(str(tmp_path_factory.mktemp("hf") / "model"), family="llama")


def test_auto_is_the_task_alphabet_the_saved_tokenizer_or_bytes(tmp_path, hf_folder):
  tokenizer, _ = build_tokenizer(TokenizerSpec(), "0123456789+-*=")
  assert isinstance(tokenizer, CharTokenizer) and tokenizer.alphabet == "0123456789+-*="
  # The arithmetic demos' ids are unchanged: the task's own tokenizer is the run's.
  task = ArithmeticTask(ArithmeticConfig())
  assert tokenizer.encode("12+34=") == task.tokenizer.encode("12+34=")
  assert isinstance(build_tokenizer(TokenizerSpec(), None)[0], ByteTokenizer)   # open text
  for saved in (CharTokenizer("ab"), ByteTokenizer(), HFTokenizer(hf_folder)):
    model_dir = str(tmp_path / type(saved).__name__)
    save_tokenizer(saved, model_dir)
    loaded, source = build_tokenizer(TokenizerSpec(), "0123456789", init_from=model_dir)
    assert type(loaded) is type(saved) and "init_from" in source
    assert loaded.encode("ab") == saved.encode("ab")
  explicit, _ = build_tokenizer(TokenizerSpec(kind="hf", path=hf_folder), "0123")
  assert explicit.encode("What is 1 plus 2?") == HFTokenizer(hf_folder).encode("What is 1 plus 2?")
  assert isinstance(build_tokenizer(TokenizerSpec(kind="byte"), "0123")[0], ByteTokenizer)


def test_chat_template_wraps_prompts_and_answers_end_with_eos(hf_folder):
  tokenizer = HFTokenizer(hf_folder)
  encoder = TextEncoder(tokenizer, PromptFormat(chat_template=True, system_prompt="Be brief."))
  expected = tokenizer.apply_chat_template(
      [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1 plus 2?"}],
      add_generation_prompt=True)
  assert encoder.prompt_ids("What is 1 plus 2?") == tokenizer.encode(expected)
  assert encoder.answer_ids("3") == tokenizer.encode("3") + [tokenizer.eos_id]
  # SCoRe's instruction becomes a user turn after attempt 1 (which ends with <|im_end|>).
  assert encoder.follow_up_text("Check it.") == (
      "\n<|im_start|>user\nCheck it.<|im_end|>\n<|im_start|>assistant\n")
  assert TextEncoder(tokenizer).follow_up_text("Check it.") == "Check it."
  rows = RowEncoder(encoder, 40, 4, lambda example: {})
  row = rows((7, {"prompt": "What is 1 plus 2?", "answer": "3"}))
  assert row["record_id"] == 7 and row["prompt_mask"][-1] and not row["answer_mask"][-1]
  np.testing.assert_array_equal(row["prompt_tokens"][row["prompt_mask"]],
                                encoder.prompt_ids("What is 1 plus 2?"))


@pytest.mark.parametrize("spec, alphabet, message", [
    (TokenizerSpec(kind="char", alphabet="0123456789"), "0123456789+=",
     r"cannot encode the task's characters '\+='"),
    (TokenizerSpec(kind="char"), None, "needs an alphabet"),
    (TokenizerSpec(kind="hf"), None, "needs path="),
    (TokenizerSpec(kind="hf", path="/nonexistent"), None, "is not a folder"),
])
def test_tokenizer_errors(spec, alphabet, message):
  with pytest.raises(ValueError, match=message):
    tokenizer, _ = build_tokenizer(spec, alphabet)
    from selfimprove.encoding import check_alphabet
    check_alphabet(tokenizer, alphabet)


def test_config_errors_name_the_field(tmp_path, hf_folder):
  small_vocab = make_test_config(**{"tokenizer.kind": "hf", "tokenizer.path": hf_folder})
  with pytest.raises(ConfigError, match=r"config.tokenizer \(Hugging Face tokenizer in .*\) has "
                                        r"300 ids but the model has vocab_size=32 \(config.model"):
    train_lib.train(small_vocab, str(tmp_path / "a"))
  missing = make_test_config(**{"tokenizer.kind": "char", "tokenizer.alphabet": "0123456789"})
  with pytest.raises(ConfigError, match=r"config.tokenizer: the tokenizer cannot encode the "
                                        r"task's characters '\+-\*='"):
    train_lib.train(missing, str(tmp_path / "b"))
  with pytest.raises(ConfigError, match="kind='sentencepiece'"):
    train_lib.train(make_test_config(**{"tokenizer.kind": "sentencepiece"}), str(tmp_path / "c"))


def test_a_prompt_longer_than_the_maximum_names_its_file_and_line(tmp_path):
  from configs.sft_jsonl import get_config
  train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
  lines = [json.dumps({"prompt": "What is 1 plus 2?", "answer": "3"})] * 3
  lines.insert(1, "")                                   # blank lines still count as lines
  lines.append(json.dumps({"prompt": "What is 1 plus 2? " * 10, "answer": "3"}))
  train_file.write_text("\n".join(lines) + "\n")
  eval_file.write_text(lines[0] + "\n")
  config = get_config("test").unlock()
  config.task.update(dict(train_path=str(train_file), eval_path=str(eval_file)))
  config.data.max_prompt_len = 40
  with pytest.raises(DataError, match=rf"{train_file}:5: the prompt is 181 tokens, more than "
                                      r"config.data.max_prompt_len=40"):
    train_lib.train(config, str(tmp_path / "run"))
  assert not os.path.exists(os.path.join(tmp_path, "run", "checkpoints"))


def test_lengths_default_to_the_longest_example_and_match_the_arithmetic_task():
  task = ArithmeticTask(ArithmeticConfig(min_digits=3, max_digits=3))
  encoder = TextEncoder(task.tokenizer)
  examples = {"train": task.examples("train")[:2000], "eval": task.examples("eval")}
  assert measure_lengths(encoder, examples, 0, 0) == (task.prompt_len, task.answer_len) == (9, 5)
  config = make_test_config()
  data = run_setup.build_data(config, run_setup.build_task(config), task.tokenizer)
  assert (data.prompt_len, data.answer_len) == (7, 4)   # 2-digit addition: <bos>ab+cd= / abc<eos>


def test_arithmetic_with_a_bpe_tokenizer_encodes_its_text_and_uses_the_host_verifier(hf_folder):
  from selfimprove.verifiers import HostVerifier
  config = make_test_config(**{"tokenizer.kind": "hf", "tokenizer.path": hf_folder})
  task = run_setup.build_task(config)
  tokenizer = HFTokenizer(hf_folder)
  data = run_setup.build_data(config, task, tokenizer)
  verifier = run_setup.build_verifier(task, tokenizer, data)
  assert isinstance(verifier, HostVerifier)   # BPE may merge digits: the jnp reader cannot
  record_id, example = data.train[3]
  row = data.train_rows((record_id, example))
  assert tokenizer.decode(row["prompt_tokens"][row["prompt_mask"]]) == example["prompt"]
  right = tokenizer.encode(example["answer"]) + [tokenizer.eos_id]
  wrong = tokenizer.encode(str(int(example["answer"]) + 1)) + [tokenizer.eos_id]
  width = max(len(right), len(wrong))
  tokens = np.full((2, width), tokenizer.pad_id, np.int32)
  mask = np.zeros((2, width), bool)
  for row_index, ids in enumerate((right, wrong)):
    tokens[row_index, :len(ids)], mask[row_index, :len(ids)] = ids, True
  rewards = verifier.rewards_on_host(tokens, mask, np.asarray([record_id, record_id]))
  assert rewards.tolist() == [1.0, 0.0]
