"""Text to fixed-shape arrays with the run's tokenizer: prompts, answers, instructions.

A row of a batch (what every pipeline reads):

  prompt_tokens int32 [P]  left-padded: <bos> (if the tokenizer has one) and
                           the prompt, or the chat template's rendering of it
  prompt_mask   bool  [P]
  answer_tokens int32 [A]  right-padded: the reference answer then <eos>
  answer_mask   bool  [A]
  record_id     int32 []   which example (host verifiers look it up by this)
  ...                      the task's `example_arrays` (e.g. target int32 [])

P and A are static (`max_prompt_len` / `max_answer_len`; 0 = the longest in
the data, measured once over every example, which also checks that each one
encodes: errors name the example's file:line).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from selfimprove.problems import Problems
from selfimprove.tasks.base import describe_example
from selfimprove.tokenizers import Tokenizer, pad_ids


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """How prompt text becomes the model's input.

  Attributes:
    chat_template: render the prompt as one user message with the tokenizer's
      chat template (it writes any <bos> itself) and the assistant header after it.
    system_prompt: with chat_template, a system message first ("" = none).
    add_bos: without a chat template, start with the tokenizer's <bos> if it has one.
  """

  chat_template: bool = False
  system_prompt: str = ""
  add_bos: bool = True


class TextEncoder:
  """The run's tokenizer applied to a task's text."""

  def __init__(self, tokenizer: Tokenizer, prompt_format: PromptFormat = PromptFormat()):
    if prompt_format.chat_template and not hasattr(tokenizer, "apply_chat_template"):
      raise ValueError("chat_template=True needs a Hugging Face tokenizer (kind='hf') with a "
                       "chat template.")
    self.tokenizer = tokenizer
    self.format = prompt_format

  def prompt_text(self, prompt: str) -> str:
    if not self.format.chat_template:
      return prompt
    messages = ([{"role": "system", "content": self.format.system_prompt}]
                if self.format.system_prompt else [])
    return self.tokenizer.apply_chat_template(messages + [{"role": "user", "content": prompt}],
                                              add_generation_prompt=True)

  def follow_up_text(self, message: str) -> str:
    """Text that puts a new user `message` after a completed answer (e.g. SCoRe's instruction).

    Without a chat template, `message` itself. With one, what the template writes
    between the assistant's answer and the next assistant turn (ChatML:
    "\\n<|im_start|>user\\n{message}<|im_end|>\\n<|im_start|>assistant\\n"), less the
    end-of-turn token the answer already ends with (the sampler keeps it).
    """
    if not self.format.chat_template:
      return message
    user, answer = "[[selfimprove user]]", "[[selfimprove answer]]"
    text = self.tokenizer.apply_chat_template(
        [{"role": "user", "content": user}, {"role": "assistant", "content": answer},
         {"role": "user", "content": message}], add_generation_prompt=True)
    if answer not in text or message not in text:
      raise ValueError("the chat template does not render a second user turn after an answer.")
    after = text[text.index(answer) + len(answer):]
    end_of_turn = getattr(self.tokenizer, "special_tokens", {}).get("eos", "")
    return after[len(end_of_turn):] if end_of_turn and after.startswith(end_of_turn) else after

  def prompt_ids(self, prompt: str) -> list[int]:
    ids = list(self.tokenizer.encode(self.prompt_text(prompt)))
    if not self.format.chat_template and self.format.add_bos and self.tokenizer.bos_id is not None:
      ids = [self.tokenizer.bos_id] + ids
    return ids

  def answer_ids(self, answer: str) -> list[int]:
    eos = [] if self.tokenizer.eos_id is None else [self.tokenizer.eos_id]
    return list(self.tokenizer.encode(answer)) + eos

  def text_ids(self, text: str, what: str) -> tuple[int, ...]:
    """Ids of a fixed piece of text (e.g. a correction instruction); `what` names it in errors."""
    try:
      ids = tuple(int(i) for i in self.tokenizer.encode(text))
    except ValueError as error:
      raise ValueError(f"{what}={text!r} cannot be encoded by the run's tokenizer: {error}") from None
    if text and not ids:
      raise ValueError(f"{what}={text!r} encodes to no tokens.")
    return ids


def check_alphabet(tokenizer: Tokenizer, alphabet: str | None) -> None:
  """Raises naming the characters of a task's alphabet the tokenizer cannot encode and decode back."""
  if not alphabet:
    return
  missing = []
  for char in alphabet:
    try:
      ids = tokenizer.encode(char)
    except ValueError:
      ids = []
    if not ids or tokenizer.decode(ids) != char:
      missing.append(char)
  if missing:
    raise ValueError(f"the tokenizer cannot encode the task's characters {''.join(missing)!r} "
                     f"(the task's alphabet is {alphabet!r}).")


def measure_lengths(encoder: TextEncoder, examples_by_split: dict[str, Sequence[dict]],
                    max_prompt_len: int, max_answer_len: int) -> tuple[int, int]:
  """(prompt_len, answer_len) for the batches: the configured maxima, or the data's longest (0).

  Encodes every example once; examples that cannot be encoded or are longer
  than a configured maximum raise one ValueError naming each (file:line for JSONL).
  """
  problems = Problems()
  longest = {"prompt": 0, "answer": 0}
  limits = {"prompt": max_prompt_len, "answer": max_answer_len}
  fields = {"prompt": "max_prompt_len", "answer": "max_answer_len"}
  for split, examples in examples_by_split.items():
    for index, example in enumerate(examples):
      for part, ids_of in (("prompt", encoder.prompt_ids), ("answer", encoder.answer_ids)):
        try:
          length = len(ids_of(example[part]))
        except ValueError as error:
          problems.add(f"{describe_example(example, index, split)}: {part}: {error}")
          continue
        if limits[part] and length > limits[part]:
          problems.add(
              f"{describe_example(example, index, split)}: the {part} is {length} tokens, more "
              f"than config.data.{fields[part]}={limits[part]}; raise it (0 = the longest in the "
              f"data) or shorten the {part}.")
        longest[part] = max(longest[part], length)
  problems.raise_if_any()
  return limits["prompt"] or longest["prompt"], limits["answer"] or longest["answer"]


class RowEncoder:
  """(record_id, example) -> one batch row (see the module docstring); picklable for Grain."""

  def __init__(self, encoder: TextEncoder, prompt_len: int, answer_len: int,
               example_arrays: Callable[[dict], dict[str, np.ndarray]]):
    self.encoder = encoder
    self.prompt_len = prompt_len
    self.answer_len = answer_len
    self.example_arrays = example_arrays

  def __call__(self, item: tuple[int, dict]) -> dict[str, np.ndarray]:
    record_id, example = item
    prompt_ids, answer_ids = self.encoder.prompt_ids(example["prompt"]), self.encoder.answer_ids(
        example["answer"])
    for part, ids, length in (("prompt", prompt_ids, self.prompt_len),
                              ("answer", answer_ids, self.answer_len)):
      if len(ids) > length:
        raise ValueError(f"{describe_example(example, record_id, 'record')}: the {part} is "
                         f"{len(ids)} tokens, more than the batches' {length}.")
    pad = self.encoder.tokenizer.pad_id
    prompt_tokens, prompt_mask = pad_ids(prompt_ids, self.prompt_len, pad, "left")
    answer_tokens, answer_mask = pad_ids(answer_ids, self.answer_len, pad, "right")
    return {"prompt_tokens": prompt_tokens, "prompt_mask": prompt_mask,
            "answer_tokens": answer_tokens, "answer_mask": answer_mask,
            "record_id": np.int32(record_id), **self.example_arrays(example)}
