"""Tokenizers: round trips, special ids, padded batch encoding and its errors."""

import numpy as np
import pytest

from selfimprove.tokenizers import ByteTokenizer, CharTokenizer, Tokenizer, encode_batch


def test_byte_tokenizer_round_trips_unicode():
  tokenizer = ByteTokenizer()
  assert isinstance(tokenizer, Tokenizer)
  text = "37+85=122 ✓ héllo"
  ids = tokenizer.encode(text)
  assert min(ids) >= 3 and max(ids) < tokenizer.vocab_size == 259
  assert tokenizer.decode(ids) == text
  # Special ids are skipped when decoding.
  assert tokenizer.decode([tokenizer.bos_id] + ids + [tokenizer.eos_id, tokenizer.pad_id]) == text


def test_char_tokenizer_round_trips_and_names_unknown_characters():
  tokenizer = CharTokenizer("0123456789+-*= ")
  assert isinstance(tokenizer, Tokenizer)
  assert tokenizer.vocab_size == 18
  assert tokenizer.encode("12+3=") == [4, 5, 13, 6, 16]
  assert tokenizer.decode(tokenizer.encode("98*7=686")) == "98*7=686"
  with pytest.raises(ValueError, match=r"'x' at position 2 of '12x3'"):
    tokenizer.encode("12x3")
  with pytest.raises(ValueError, match="repeated"):
    CharTokenizer("aab")


def test_encode_batch_left_and_right_padding():
  tokenizer = CharTokenizer("0123456789+=")
  tokens, mask = encode_batch(tokenizer, ["1+2=", "10+20="], length=8, add_bos=True)
  np.testing.assert_array_equal(mask[0], [0, 0, 0, 1, 1, 1, 1, 1])
  assert tokens[0, 3] == tokenizer.bos_id and tokens[0, 0] == tokenizer.pad_id
  assert tokenizer.decode(tokens[1]) == "10+20="
  tokens, mask = encode_batch(tokenizer, ["3"], length=4, add_eos=True, padding_side="right")
  np.testing.assert_array_equal(tokens[0], [6, tokenizer.eos_id, 0, 0])
  np.testing.assert_array_equal(mask[0], [1, 1, 0, 0])


def test_encode_batch_refuses_to_truncate():
  with pytest.raises(ValueError, match="Text 1 .* is 6 tokens long, more than the configured length 5"):
    encode_batch(ByteTokenizer(), ["ab", "abcdef"], length=5)
