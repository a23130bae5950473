"""Warm-start SFT rows in SCoRe's two-turn format: [x, draft, p] -> the right answer.

SCoRe starts from a model that already follows the two-turn format (the paper
starts from instruction-tuned Gemini models that answer a correction request).
A model trained only on single-turn (x -> y*) pairs has never seen a second
turn: attempt 2 comes out as noise and Stage II's shaped reward punishes it
with -alpha on every problem attempt 1 got right. These rows teach the format,
and nothing more than a verifier could: some training rows become

    <bos> x  draft <eos>  p   ->   y* <eos>

where the draft is y* itself (so "keep a right answer" is a demonstrated
behaviour) or a plausible wrong answer from the task (a digit off by one),
never the model's own attempts (those are what SCoRe's on-policy RL is for).
The token layout is exactly the one `multiturn.build_turn2_context` builds, with
the padding compacted away (the model is padding-invariant, so this is the
same input).

Which rows become demos, and their drafts, are a pure function of
(seed, prompt): the data iterator stays resumable and runs are reproducible.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np

from selfimprove.encoding import RowEncoder
from selfimprove.tokenizers import pad_ids


@dataclasses.dataclass(frozen=True)
class CorrectionDemoConfig:
  """How many training rows become two-turn demos and what their drafts are.

  Attributes:
    fraction: share of training rows turned into two-turn demos, in [0, 1].
    wrong_draft_fraction: share of demos whose draft is wrong, in [0, 1].
    instruction: the correction instruction p (SCoRe's `correction_instruction`).
    seed: picks the rows and the drafts.
  """

  fraction: float
  wrong_draft_fraction: float
  instruction: str
  seed: int = 0

  def __post_init__(self):
    for name in ("fraction", "wrong_draft_fraction"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"CorrectionDemoConfig.{name} must be in [0, 1], got {value!r}.")
    if self.fraction > 0 and not self.instruction:
      raise ValueError("CorrectionDemoConfig.instruction must be non-empty when fraction > 0 "
                       "(set it to the SCoRe run's correction_instruction).")


class CorrectionDemoEncoder:
  """Wraps the run's row encoder: some training rows become two-turn correction demos.

  `task` needs `wrong_answer(target, rng) -> str`. Every row (demo or not) has
  prompt length `prompt_len` = rows.prompt_len + rows.answer_len +
  len(instruction ids), left-padded, so batches have one static shape.
  """

  def __init__(self, rows: RowEncoder, task: Any, config: CorrectionDemoConfig):
    if not hasattr(task, "wrong_answer"):
      raise ValueError(f"correction demos need wrong drafts: the task ({type(task).__name__}) "
                       f"has no wrong_answer(target, rng) method.")
    self.rows = rows
    self.task = task
    self.config = config
    self.instruction_ids = np.asarray(
        rows.encoder.text_ids(config.instruction, "correction_instruction"), np.int32)
    self.prompt_len = rows.prompt_len + rows.answer_len + len(self.instruction_ids)
    self.answer_len = rows.answer_len

  def draft(self, record: dict) -> str | None:
    """The record's draft answer: None (single-turn row), the answer, or a wrong answer."""
    rng = np.random.default_rng([self.config.seed, zlib.crc32(record["prompt"].encode())])
    if rng.random() >= self.config.fraction:
      return None
    if rng.random() >= self.config.wrong_draft_fraction:
      return str(record["answer"])
    return self.task.wrong_answer(int(record.get("target", record["answer"])), rng)

  def __call__(self, item: tuple[int, dict]) -> dict[str, np.ndarray]:
    row = self.rows(item)
    real_prompt = row["prompt_tokens"][row["prompt_mask"]]
    draft = self.draft(item[1])
    if draft is not None:
      draft_ids = np.asarray(self.rows.encoder.answer_ids(draft), np.int32)
      real_prompt = np.concatenate([real_prompt, draft_ids, self.instruction_ids])
    if len(real_prompt) > self.prompt_len:
      raise ValueError(f"the correction demo of {item[1].get('source', item[0])} is "
                       f"{len(real_prompt)} tokens, more than {self.prompt_len}.")
    row["prompt_tokens"], row["prompt_mask"] = pad_ids(
        real_prompt.astype(np.int32), self.prompt_len, self.rows.encoder.tokenizer.pad_id, "left")
    return row


def demo_rows(rows: RowEncoder, data: dict, task: Any, seed: int) -> CorrectionDemoEncoder:
  """The training rows of a run whose config.data.correction_demos > 0 (e.g. SCoRe's warm start)."""
  demos = CorrectionDemoConfig(fraction=data["correction_demos"],
                               wrong_draft_fraction=data["wrong_draft_fraction"],
                               instruction=data["correction_instruction"], seed=seed)
  return CorrectionDemoEncoder(rows, task, demos)
