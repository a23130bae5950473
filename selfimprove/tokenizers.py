"""Tokenizers behind one small protocol, plus batch encoding to padded arrays.

The protocol is what the rest of the library uses: encode/decode, vocab size and
the special ids. Byte- and character-level tokenizers live here for synthetic
tasks; Hugging Face `tokenizer.json` and SentencePiece models implement the same
protocol in `selfimprove.models.hf_tokenizer` (`load_tokenizer(folder)`).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Tokenizer(Protocol):
  """What the library needs from a tokenizer."""

  @property
  def vocab_size(self) -> int: ...
  @property
  def pad_id(self) -> int: ...
  @property
  def bos_id(self) -> int | None: ...
  @property
  def eos_id(self) -> int | None: ...

  def encode(self, text: str) -> list[int]:
    """Text to ids, without special tokens."""
    ...

  def decode(self, ids: Sequence[int]) -> str:
    """Ids to text; special ids are skipped."""
    ...


class _FixedSpecialIds:
  """pad/bos/eos are ids 0/1/2, as in both small tokenizers below."""

  PAD, BOS, EOS = 0, 1, 2

  @property
  def pad_id(self) -> int:
    return self.PAD

  @property
  def bos_id(self) -> int:
    return self.BOS

  @property
  def eos_id(self) -> int:
    return self.EOS


class ByteTokenizer(_FixedSpecialIds):
  """UTF-8 bytes: ids 0..2 are pad/bos/eos, byte b is id b + 3 (vocab 259)."""

  _OFFSET = 3

  @property
  def vocab_size(self) -> int:
    return 256 + self._OFFSET

  def encode(self, text: str) -> list[int]:
    return [b + self._OFFSET for b in text.encode("utf-8")]

  def decode(self, ids: Sequence[int]) -> str:
    data = bytes(int(i) - self._OFFSET for i in ids if self._OFFSET <= int(i) < self.vocab_size)
    return data.decode("utf-8", errors="replace")


class CharTokenizer(_FixedSpecialIds):
  """A fixed alphabet, one id per character: pad/bos/eos are 0..2, then the alphabet.

  Small vocabularies keep synthetic-task models tiny. Encoding a character
  outside the alphabet raises a ValueError that names it and its position.
  """

  def __init__(self, alphabet: str):
    if len(set(alphabet)) != len(alphabet):
      raise ValueError(f"CharTokenizer alphabet has repeated characters: {alphabet!r}.")
    self.alphabet = alphabet
    self._ids = {c: i + 3 for i, c in enumerate(alphabet)}

  @property
  def vocab_size(self) -> int:
    return len(self.alphabet) + 3

  def encode(self, text: str) -> list[int]:
    ids = []
    for position, char in enumerate(text):
      if char not in self._ids:
        raise ValueError(
            f"Character {char!r} at position {position} of {text!r} is not in the "
            f"tokenizer alphabet {self.alphabet!r}.")
      ids.append(self._ids[char])
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return "".join(self.alphabet[int(i) - 3] for i in ids if 3 <= int(i) < self.vocab_size)


def pad_ids(ids: Sequence[int], length: int, pad_id: int, padding_side: str = "left"
            ) -> tuple[np.ndarray, np.ndarray]:
  """One row of ids padded to `length`: (tokens int32 [length], mask bool [length]).

  The caller checks that `ids` fits (a longer row would need a name in the error).
  """
  if padding_side not in ("left", "right"):
    raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
  tokens = np.full(length, pad_id, np.int32)
  mask = np.zeros(length, bool)
  start = length - len(ids) if padding_side == "left" else 0
  tokens[start:start + len(ids)] = ids
  mask[start:start + len(ids)] = True
  return tokens, mask


def encode_batch(tokenizer: Tokenizer, texts: Sequence[str], length: int, *,
                 add_bos: bool = False, add_eos: bool = False,
                 padding_side: str = "left") -> tuple[np.ndarray, np.ndarray]:
  """Encodes texts into fixed-length padded arrays (tokens [n, length] int32, mask [n, length] bool).

  Prompts are normally left-padded (their last token is at the same column, the
  layout samplers like); targets are normally right-padded. A text longer than
  `length` raises a ValueError naming its index rather than being truncated.
  """
  if padding_side not in ("left", "right"):
    raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
  tokens = np.full((len(texts), length), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(texts), length), bool)
  for row, text in enumerate(texts):
    ids = tokenizer.encode(text)
    if add_bos and tokenizer.bos_id is not None:
      ids = [tokenizer.bos_id] + ids
    if add_eos and tokenizer.eos_id is not None:
      ids = ids + [tokenizer.eos_id]
    if len(ids) > length:
      raise ValueError(
          f"Text {row} ({text[:40]!r}...) is {len(ids)} tokens long, more than the "
          f"configured length {length}; raise the length or shorten the text.")
    tokens[row], mask[row] = pad_ids(ids, length, tokenizer.pad_id, padding_side)
  return tokens, mask
