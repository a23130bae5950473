"""Arithmetic task: verifier vs hand-written cases and a Python reference, split, generator, encoding."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfimprove.tasks import ArithmeticConfig, ArithmeticTask
from selfimprove.tokenizers import CharTokenizer

ALL_OPS = ArithmeticConfig(min_digits=2, max_digits=2, operations="+-*")


@pytest.fixture(scope="module")
def task():
  return ArithmeticTask(ALL_OPS)


def _completion(task, text, length=14, masked_from=None):
  """Token ids / mask for a completion written as text; '$' is <eos>, '_' is pad."""
  ids = [task.tokenizer.eos_id if c == "$" else task.tokenizer.pad_id if c == "_"
         else task.tokenizer.encode(c)[0] for c in text]
  tokens = np.full(length, task.tokenizer.pad_id, np.int32)
  tokens[:len(ids)] = ids
  mask = np.zeros(length, bool)
  mask[:len(ids)] = True
  if masked_from is not None:
    mask[masked_from:] = False
  return tokens, mask


# (completion, position from which the mask is False or None, target, expected value, valid)
HAND_WRITTEN = [
    ("122$", None, 122, 122, True),          # correct
    ("123$", None, 122, 123, True),          # wrong
    ("-35$", None, -35, -35, True),          # negative, correct
    ("35$", None, -35, 35, True),            # sign missing
    ("-35$", None, 35, -35, True),           # spurious sign
    ("0122$", None, 122, 122, True),         # leading zeros read as the value
    ("-007$", None, -7, -7, True),
    ("-0$", None, 0, 0, True),
    ("", None, 0, 0, False),                 # empty: malformed, never rewarded even for target 0
    ("-$", None, 0, 0, False),               # "-" alone
    ("-", None, 0, 0, False),
    ("=5$", None, 5, 0, False),              # starts with a non-digit
    ("$12", None, 12, 0, False),
    ("123$", 2, 12, 12, True),               # digits after a masked-out position are ignored
    ("123$", 2, 123, 12, True),
    ("5", 0, 5, 0, False),                   # first position masked out
    ("12+3$", None, 12, 12, True),           # stops at '+'
    ("7=7$", None, 7, 7, True),              # stops at '='
    ("4_4$", None, 4, 4, True),              # stops at pad
    ("999999999$", None, 999999999, 999999999, True),   # 9 digits: largest readable
    ("-999999999$", None, -999999999, -999999999, True),
    ("1234567890$", None, 1234567890, 0, False),        # 10 digits: too many for int32
    ("000000000012$", None, 12, 0, False),              # 12 digits, even though the value is small
    ("12345678901234", None, 0, 0, False),              # fills every column
    ("42", None, 42, 42, True),                         # no eos, ends at the last column
]


def test_verifier_on_hand_written_completions(task):
  rows = [_completion(task, text, masked_from=m) for text, m, *_ in HAND_WRITTEN]
  tokens = jnp.asarray(np.stack([r[0] for r in rows]))
  mask = jnp.asarray(np.stack([r[1] for r in rows]))
  target = jnp.asarray([case[2] for case in HAND_WRITTEN], jnp.int32)
  value, valid = jax.jit(task.parse_leading_integer)(tokens, mask)
  rewards = jax.jit(task.verify)(tokens, mask, target)
  assert rewards.dtype == jnp.float32 and rewards.shape == (len(HAND_WRITTEN),)
  for i, (text, masked_from, target_i, expected_value, expected_valid) in enumerate(HAND_WRITTEN):
    case = f"{text!r} masked from {masked_from}"
    assert int(value[i]) == expected_value, case
    assert bool(valid[i]) == expected_valid, case
    assert float(rewards[i]) == float(expected_valid and expected_value == target_i), case


def _reference_parse(task, tokens, mask):
  """Plain-Python statement of the rule: optional '-', then digits, up to the first non-digit."""
  chars = []
  for token, real in zip(tokens.tolist(), mask.tolist()):
    text = task.tokenizer.decode([token]) if real else ""
    if len(text) != 1:
      break
    chars.append(text)
  match = re.match(r"-?([0-9]+)", "".join(chars))
  if not match or len(match.group(1)) > 9:
    return 0, False
  return int(match.group(0)), True


def test_parse_matches_python_reference_on_random_tokens(task):
  rng = np.random.default_rng(0)
  n_rows, length = 3000, 12
  # Mostly digits and '-' so that long numbers, signs and stops all occur often.
  alphabet = np.array([task.tokenizer.encode(c)[0] for c in "0123456789" * 3 + "--+*="] +
                      [task.tokenizer.eos_id, task.tokenizer.pad_id, task.tokenizer.bos_id])
  tokens = rng.choice(alphabet, size=(n_rows, length)).astype(np.int32)
  # Half the rows have a sampler-style prefix mask, half an arbitrary one.
  prefix = np.arange(length)[None, :] < rng.integers(0, length + 1, (n_rows, 1))
  mask = np.where(rng.random((n_rows, 1)) < 0.5, prefix, rng.random((n_rows, length)) < 0.9)
  value, valid = jax.jit(task.parse_leading_integer)(tokens, mask)
  expected = [_reference_parse(task, tokens[i], mask[i]) for i in range(n_rows)]
  np.testing.assert_array_equal(np.asarray(value), [e[0] for e in expected])
  np.testing.assert_array_equal(np.asarray(valid), [e[1] for e in expected])
  assert 0.2 < np.mean(valid) < 0.9   # the random cases exercise both outcomes


def test_examples_split_is_disjoint_complete_and_consistent(task):
  train, held_out = task.examples("train"), task.examples("eval")
  train_prompts = {e["prompt"] for e in train}
  eval_prompts = {e["prompt"] for e in held_out}
  everything = {f"{a}{op}{b}=" for a in range(10, 100) for op in "+-*" for b in range(10, 100)}
  assert len(train_prompts) == len(train) and len(eval_prompts) == len(held_out)
  assert not train_prompts & eval_prompts
  assert train_prompts | eval_prompts == everything == set().union(train_prompts, eval_prompts)
  assert task.num_problems == len(everything) == 3 * 90 * 90
  assert abs(len(held_out) / len(everything) - 0.1) < 0.01
  for example in train[::97] + held_out[::13]:
    a, op, b = re.fullmatch(r"(\d+)([-+*])(\d+)=", example["prompt"]).groups()
    expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    assert example["target"] == expected and example["answer"] == str(expected)
  # Deterministic, and a problem's split does not depend on which operations are enabled.
  assert task.examples("eval") == held_out
  # The fixed order is shuffled, so a prefix is a fair sample (not just the smallest operands).
  prefix = held_out[:100]
  assert {e["prompt"][2] for e in prefix} == set("+-*")
  first_operands = [int(e["prompt"][:2]) for e in prefix]
  assert min(first_operands) < 30 and max(first_operands) > 80
  addition_only = ArithmeticTask(ArithmeticConfig(operations="+")).examples("eval")
  assert {e["prompt"] for e in addition_only} == {p for p in eval_prompts if "+" in p}


def test_eval_fraction_and_split_seed():
  config = ArithmeticConfig(min_digits=1, max_digits=2, operations="+-", eval_fraction=0.3)
  held_out = ArithmeticTask(config).examples("eval")
  assert abs(len(held_out) / (2 * 100 * 100) - 0.3) < 0.02
  reseeded = ArithmeticTask(ArithmeticConfig(min_digits=1, max_digits=2, operations="+-",
                                             eval_fraction=0.3, split_seed=1)).examples("eval")
  assert {e["prompt"] for e in held_out} != {e["prompt"] for e in reseeded}


def test_is_eval_problem_same_in_numpy_and_jax(task):
  rng = np.random.default_rng(1)
  a = rng.integers(0, 10**9, 5000)
  b = rng.integers(0, 10**9, 5000)
  op = rng.integers(0, 3, 5000)
  in_numpy = task.is_eval_problem(a, op, b)
  assert isinstance(in_numpy, np.ndarray) and in_numpy.dtype == bool
  in_jax = jax.jit(task.is_eval_problem)(jnp.asarray(a, jnp.int32), jnp.asarray(op, jnp.int32),
                                         jnp.asarray(b, jnp.int32))
  np.testing.assert_array_equal(in_numpy, np.asarray(in_jax))
  assert bool(task.is_eval_problem(int(a[0]), int(op[0]), int(b[0]))) == in_numpy[0]


def _check_generated(task, batch, num_full_checks):
  """Every row is a training problem whose arrays equal `encode` of its decoded text."""
  eval_prompts = {e["prompt"] for e in task.examples("eval")}
  batch = jax.tree.map(np.asarray, batch)
  low, high = task.config.operand_range
  prompts = []
  for i in range(len(batch["target"])):
    prompt = task.tokenizer.decode(batch["prompt_tokens"][i])
    a, op, b = re.fullmatch(r"(\d+)([-+*])(\d+)=", prompt).groups()
    assert op in task.config.operations and low <= int(a) <= high and low <= int(b) <= high
    assert str(int(a)) == a and str(int(b)) == b     # no leading zeros
    expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    assert batch["target"][i] == expected, prompt
    assert prompt not in eval_prompts, prompt
    prompts.append(prompt)
    if i < num_full_checks:
      encoded = task.encode({"prompt": prompt, "answer": str(expected), "target": expected})
      for key, value in encoded.items():
        np.testing.assert_array_equal(batch[key][i], value, err_msg=f"{key} of {prompt}")
  return prompts


def test_generate_under_jit_yields_only_training_problems(task):
  generate = jax.jit(task.generate, static_argnums=1)
  batch = generate(jax.random.key(0), 20_000)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      "prompt_tokens": ((20_000, 7), jnp.int32), "prompt_mask": ((20_000, 7), jnp.bool_),
      "answer_tokens": ((20_000, 5), jnp.int32), "answer_mask": ((20_000, 5), jnp.bool_),
      "target": ((20_000,), jnp.int32)}
  prompts = _check_generated(task, batch, num_full_checks=300)
  assert {p[2] for p in prompts} == set("+-*")
  assert len(set(prompts)) > 10_000   # draws spread over the ~21.9k training problems
  assert np.any(np.asarray(batch["target"]) < 0)
  # The key decides the batch.
  np.testing.assert_array_equal(generate(jax.random.key(0), 20_000)["target"], batch["target"])
  assert not np.array_equal(generate(jax.random.key(1), 20_000)["target"], batch["target"])


def test_in_graph_generator_writes_the_runs_rows_for_its_own_tokenizer_only(task):
  from selfimprove.encoding import RowEncoder, TextEncoder
  from selfimprove.tokenizers import ByteTokenizer
  run_tokenizer = CharTokenizer(task.alphabet)   # what config.tokenizer kind="auto" builds
  generate = task.in_graph_generator(run_tokenizer)
  assert task.in_graph_generator(ByteTokenizer()) is None
  assert task.in_graph_generator(CharTokenizer(task.alphabet + "x")) is None
  batch = jax.device_get(jax.jit(generate, static_argnums=1)(jax.random.key(5), 64))
  rows = RowEncoder(TextEncoder(run_tokenizer), task.prompt_len, task.answer_len,
                    task.example_arrays)
  for i in range(64):
    prompt = run_tokenizer.decode(batch["prompt_tokens"][i])
    row = rows((0, {"prompt": prompt, "answer": str(batch["target"][i])}))
    for key in batch:
      np.testing.assert_array_equal(batch[key][i], row[key], err_msg=f"{key} of {prompt}")


def test_generate_with_mostly_held_out_problems_uses_only_training_ones():
  # 100 problems, ~90% held out: candidates are often all held out, so the fallback runs too.
  task = ArithmeticTask(ArithmeticConfig(min_digits=1, max_digits=1, eval_fraction=0.9))
  train_prompts = {e["prompt"] for e in task.examples("train")}
  assert 0 < len(train_prompts) < 30
  batch = jax.jit(task.generate, static_argnums=1)(jax.random.key(3), 20_000)
  prompts = _check_generated(task, batch, num_full_checks=100)
  assert set(prompts) == train_prompts
  # With a single candidate per row ~90% of rows take the fallback path: still training only.
  task._num_candidates = 1
  batch = jax.jit(task.generate, static_argnums=1)(jax.random.key(4), 2_000)
  assert set(_check_generated(task, batch, num_full_checks=100)) == train_prompts


def test_encode_round_trips_through_the_tokenizer(task):
  tokenizer = task.tokenizer
  for example in [{"prompt": "37+85=", "answer": "122", "target": 122},
                  {"prompt": "12-97=", "answer": "-85", "target": -85},
                  {"prompt": "99*99=", "answer": "9801", "target": 9801},
                  {"prompt": "10+10=", "answer": "20"}]:      # target read from the answer
    encoded = task.encode(example)
    prompt_tokens, prompt_mask = encoded["prompt_tokens"], encoded["prompt_mask"]
    assert prompt_tokens.dtype == np.int32 and prompt_tokens.shape == (task.prompt_len,)
    first = int(np.argmax(prompt_mask))
    assert prompt_mask[first:].all() and not prompt_mask[:first].any()
    assert prompt_tokens[first] == tokenizer.bos_id
    assert (prompt_tokens[:first] == tokenizer.pad_id).all()
    assert tokenizer.decode(prompt_tokens) == example["prompt"]
    answer_tokens, answer_mask = encoded["answer_tokens"], encoded["answer_mask"]
    n = len(example["answer"])
    assert answer_tokens.shape == (task.answer_len,) and answer_mask.sum() == n + 1
    assert tokenizer.decode(answer_tokens) == example["answer"]
    assert answer_tokens[n] == tokenizer.eos_id and (answer_tokens[n + 1:] == tokenizer.pad_id).all()
    assert task.decode_completion(answer_tokens) == example["answer"]
    assert encoded["target"].dtype == np.int32 and int(encoded["target"]) == int(example["answer"])


def test_verify_accepts_every_encoded_answer(task):
  examples = task.examples("eval")
  encoded = [task.encode(e) for e in examples]
  tokens = np.stack([e["answer_tokens"] for e in encoded])
  mask = np.stack([e["answer_mask"] for e in encoded])
  target = np.array([e["target"] for e in examples], np.int32)
  verify = jax.jit(task.verify)
  assert np.all(np.asarray(verify(tokens, mask, target)) == 1.0)
  assert np.all(np.asarray(verify(tokens, mask, target + 1)) == 0.0)


def test_subtraction_and_multiplication_shapes():
  subtraction = ArithmeticTask(ArithmeticConfig(min_digits=1, max_digits=2, operations="-"))
  assert subtraction.prompt_len == 7 and subtraction.answer_len == 4      # "-99<eos>"
  negatives = [e for e in subtraction.examples("train") if e["target"] < 0]
  assert negatives and all(e["answer"].startswith("-") for e in negatives)
  multiplication = ArithmeticTask(ArithmeticConfig(min_digits=3, max_digits=3, operations="*"))
  assert multiplication.prompt_len == 9 and multiplication.answer_len == 7  # "998001<eos>"
  batch = jax.jit(multiplication.generate, static_argnums=1)(jax.random.key(0), 500)
  _check_generated(multiplication, batch, num_full_checks=50)
  assert ArithmeticTask(ArithmeticConfig()).answer_len == 4                 # "198<eos>"


@pytest.mark.parametrize("kwargs, message", [
    ({"operations": "+/"}, r"operations='\+/' contains '/'"),
    ({"operations": ""}, "operations must be a non-empty"),
    ({"operations": "++"}, "repeats"),
    ({"min_digits": 3, "max_digits": 2}, "max_digits must be an integer >= min_digits=3, got 2"),
    ({"min_digits": 0}, "min_digits must be an integer >= 1, got 0"),
    ({"eval_fraction": 0.0}, r"eval_fraction must be in \(0, 1\), got 0.0"),
    ({"eval_fraction": 1.0}, r"eval_fraction must be in \(0, 1\), got 1.0"),
    ({"max_digits": 5, "operations": "*"}, "max_digits=5 with operation '\\*' gives answers of 10"),
])
def test_config_errors_name_the_field(kwargs, message):
  with pytest.raises(ValueError, match=message):
    ArithmeticConfig(**kwargs)


def test_bad_split_and_oversized_enumeration_errors(task):
  with pytest.raises(ValueError, match="split must be 'train' or 'eval', got 'test'"):
    task.examples("test")
  huge = ArithmeticTask(ArithmeticConfig(min_digits=4, max_digits=4, operations="+-*"))
  with pytest.raises(ValueError, match="243000000 problems .* too many to enumerate"):
    huge.examples("eval")
  big = ArithmeticTask(ArithmeticConfig(min_digits=3, max_digits=3, operations="+-"))
  with pytest.raises(ValueError, match="'train' split has 14[0-9]{5} problems.*max_examples_per_split"):
    big.examples("train")
  with pytest.raises(ValueError, match="'answer'"):
    task.encode({"prompt": "1+1="})


def test_max_examples_per_split_samples_distinct_problems_of_each_split():
  """A space too big to list: each split is a uniform sample of distinct problems of that split."""
  config = ArithmeticConfig(min_digits=4, max_digits=4, operations="+-*",
                            max_examples_per_split=20_000, split_seed=3)
  task = ArithmeticTask(config)
  train, held_out = task.examples("train"), task.examples("eval")
  assert len(train) == len(held_out) == 20_000
  assert train == ArithmeticTask(config).examples("train")               # reproducible
  prompts = [e["prompt"] for e in train]
  assert len(set(prompts)) == len(prompts)
  assert not set(prompts) & {e["prompt"] for e in held_out}
  for examples, is_eval in ((train, False), (held_out, True)):
    for example in examples[:500]:
      a, op, b = re.fullmatch(r"([0-9]+)([-+*])([0-9]+)=", example["prompt"]).groups()
      assert 1000 <= int(a) <= 9999 and 1000 <= int(b) <= 9999
      assert example["target"] == eval(f"{a}{op}{b}") and example["answer"] == str(example["target"])
      assert bool(task.is_eval_problem(int(a), "+-*".index(op), int(b))) == is_eval
  shares = [sum(e["prompt"].count(op) for e in train) / len(train) for op in "+-*"]
  assert all(abs(share - 1 / 3) < 0.02 for share in shares)
  # Another split_seed is another sample; a limit the split fits in changes nothing.
  assert ArithmeticTask(dataclasses.replace(config, split_seed=4)).examples("train") != train
  small = ArithmeticConfig(min_digits=2, max_digits=2)
  assert (ArithmeticTask(dataclasses.replace(small, max_examples_per_split=10_000)).examples("train")
          == ArithmeticTask(small).examples("train"))
  with pytest.raises(ValueError, match="max_examples_per_split must be an integer in"):
    ArithmeticConfig(max_examples_per_split=-1)
