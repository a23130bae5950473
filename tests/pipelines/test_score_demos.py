"""Two-turn correction demos for the SCoRe warm start: layout, draft choice, determinism."""

import numpy as np
import pytest

from selfimprove.encoding import RowEncoder, TextEncoder
from selfimprove.multiturn import build_turn2_context
from selfimprove.pipelines.score_demos import CorrectionDemoConfig, CorrectionDemoEncoder
from selfimprove.tasks import ArithmeticConfig, ArithmeticTask


@pytest.fixture(scope="module")
def task():
  return ArithmeticTask(ArithmeticConfig(min_digits=1, max_digits=2, operations="+-"))


def _demos(task, config):
  rows = RowEncoder(TextEncoder(task.tokenizer), task.prompt_len, task.answer_len,
                    task.example_arrays)
  return CorrectionDemoEncoder(rows, task, config)


def _text(task, tokens, mask):
  names = {task.tokenizer.bos_id: "<bos>", task.tokenizer.eos_id: "<eos>"}
  return "".join(names.get(int(t), None) or task.tokenizer.decode([int(t)])
                 for t in np.asarray(tokens)[np.asarray(mask)])


def test_wrong_answers_are_one_digit_off_and_never_right(task):
  rng = np.random.default_rng(0)
  for target in [0, 7, 9, 10, 19, 95, 100, 999, 1998, -5, -90, -899]:
    for _ in range(50):
      wrong = task.wrong_answer(target, rng)
      assert int(wrong) != target and wrong.lstrip("-") == str(abs(int(wrong)))  # no leading 0
      assert wrong.startswith("-") == (target < 0) and len(wrong) == len(str(target))
      differing = [a != b for a, b in zip(wrong, str(target))]
      assert sum(differing) == 1
      position = differing.index(True)
      assert (int(wrong[position]) - int(str(target)[position])) % 10 in (1, 9)


def test_demo_rows_match_the_turn2_context_scores_builds(task):
  """A demo row's prompt is SCoRe's [x, y1, p] with the padding holes removed."""
  encode = _demos(task, CorrectionDemoConfig(fraction=1.0, wrong_draft_fraction=0.5,
                                             instruction="="))
  assert encode.prompt_len == task.prompt_len + task.answer_len + 1
  kinds = set()
  for index, record in enumerate(task.examples("train")[:64]):
    row = encode((index, record))
    draft = encode.draft(record)
    kinds.add(draft == record["answer"])
    assert row["prompt_tokens"].shape == row["prompt_mask"].shape == (encode.prompt_len,)
    assert not row["prompt_mask"][0] or row["prompt_mask"].all()                 # left-padded
    assert _text(task, row["prompt_tokens"], row["prompt_mask"]) == (
        f"<bos>{record['prompt']}{draft}<eos>=")
    assert _text(task, row["answer_tokens"], row["answer_mask"]) == f"{record['answer']}<eos>"
    # The same real tokens, in order, as the sampler-side context of that draft.
    plain = task.encode(record)
    drafted = task.encode({"prompt": record["prompt"], "answer": draft})
    context, mask = build_turn2_context(plain["prompt_tokens"][None], plain["prompt_mask"][None],
                                        drafted["answer_tokens"][None], drafted["answer_mask"][None],
                                        (task.tokenizer.encode("=")[0],))
    np.testing.assert_array_equal(np.asarray(context)[np.asarray(mask)],
                                  row["prompt_tokens"][row["prompt_mask"]])
  assert kinds == {True, False}                         # both right and wrong drafts occur


def test_fraction_and_determinism(task):
  records = task.examples("train")[:2000]
  config = CorrectionDemoConfig(fraction=0.3, wrong_draft_fraction=0.5, instruction="=", seed=3)
  drafts = [_demos(task, config).draft(r) for r in records]
  assert drafts == [_demos(task, config).draft(r) for r in records]
  demos = [d for d in drafts if d is not None]
  assert abs(len(demos) / len(records) - 0.3) < 0.04
  wrong = sum(d != r["answer"] for d, r in zip(drafts, records) if d is not None)
  assert abs(wrong / len(demos) - 0.5) < 0.06
  other_seed = CorrectionDemoConfig(fraction=0.3, wrong_draft_fraction=0.5, instruction="=", seed=4)
  assert drafts != [_demos(task, other_seed).draft(r) for r in records]
  # Single-turn rows keep their prompt, left-padded to the common length.
  encode = _demos(task, config)
  record = records[drafts.index(None)]
  row = encode((drafts.index(None), record))
  assert _text(task, row["prompt_tokens"], row["prompt_mask"]) == f"<bos>{record['prompt']}"


@pytest.mark.parametrize("fields, message", [
    (dict(fraction=1.5), "fraction must be in"),
    (dict(wrong_draft_fraction=-0.1), "wrong_draft_fraction must be in"),
    (dict(instruction=""), "instruction must be non-empty"),
])
def test_bad_settings_name_the_field(fields, message):
  with pytest.raises(ValueError, match=message):
    CorrectionDemoConfig(**{"fraction": 0.5, "wrong_draft_fraction": 0.5, "instruction": "=",
                            **fields})
