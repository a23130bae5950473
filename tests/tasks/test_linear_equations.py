"""Linear equations: hand-written proofs, host vs in-graph checkers on thousands of proofs, data."""

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfimprove.tasks import linear_equations as le
from selfimprove.tasks.base import check_examples
from selfimprove.tokenizers import ByteTokenizer, CharTokenizer, encode_batch
from selfimprove.verifiers import HostVerifier

CONFIG = le.LinearEquationsConfig(min_terms=2, max_terms=6, max_terms_per_side=4,
                                  max_coefficient=20, max_solution=12, max_proof_steps=14,
                                  max_proof_len=220, num_seed=64, num_train=600, num_eval=100)
PROOF_COLUMNS = 448   # > max_proof_len: longer texts must be rejected by the length rule
STATEMENT = "3x+5=-2x+20"   # x = 3

# (proof of STATEMENT, None if valid else the number of the step the reason names, or 0: no step)
HAND_WRITTEN = [
    ("3x+5+2x=20;3x+2x=20-5;5x=20-5;5x=15;x=3", None),          # canonical
    ("3x=-2x+20-5;3x=-2x+15;3x+2x=15;5x=15;x=3", None),         # constants first
    ("5=-2x+20-3x;5+2x=20-3x;2x=20-3x-5;2x+3x=20-5;5x=20-5;5x=15;x=3", None),  # 3x away first
    ("3x+5+2x=20;3x+5+2x-20=0;3x+2x-20=-5;3x+2x=-5+20;5x=-5+20;5x=15;x=3", None),  # via "0"
    ("3x+2x=20-5;5x=15;x=3", 1),                   # two moves in one step
    ("3x+5+2x=20;5x+5=20;5x=20-5;5x=15;x=3", None),  # a combine of 3x, 2x: legal
    ("3x+5+2x=20;5x=20-5;5x=15;x=3", 2),            # combine and move in one step
    ("3x+5+2x=20;3x+2x=20-5;5x=20-5;5x=16;x=3", 4),  # wrong arithmetic in a combine
    ("3x+5+2x=20;3x+2x=20-5;6x=20-5;5x=15;x=3", 3),
    ("3x+5-2x=20;1x+5=20;1x=20-5;1x=15;x=15", 1),   # moved without negating
    ("3x+5+2x=20;3x+2x=20-5;5x=20-5;5x=15;x=4", 5),  # wrong quotient
    ("3x+5+2x=20;3x+2x=20-5;5x=20-5;x=3", 4),       # divides before the right side is one number
    ("3x+5+2x=20;x=3", 2),                          # divides a non-"kx=m" equation
    ("x=3", 1),                                      # answer only
    ("4x=12;x=3", 1),                                # a proof of another statement
    ("3x+5+2x=20;3x+2x=20-5;5x=20-5;5x=15", 0),     # no final "x=q"
    ("3x+5+2x=20;3x+2x=20-5;5x=20-5;5x=15;x=3;", 5),  # trailing ";"
    ("3x+5+2x=20;3x+2x=20-5;5x=20-5;5x=15;x=3;x=3", 5),  # "x=q" not last
    ("3x+5+2x=20;3x+2x=20-5;5x=20-5;5x=15;x=3x", 5),  # trailing garbage
    ("3x+5+2x=20;3x+2x=20-5;5x=20-5;5x=15;x=3|", 5),
    ("3x+5+2x=20;3x+2x=20-5;5x=20-5;5x=15;x=", 5),
    ("3x++5+2x=20;3x+2x=20-5;5x=20-5;5x=15;x=3", 1),  # malformed
    ("3x+5+2x=20;3x+2x=20-5;5x=20+-5;5x=15;x=3", 3),
    ("3x+05+2x=20;3x+2x=20-5;5x=20-5;5x=15;x=3", 1),   # leading zero
    ("3x+5+2x=20;3x+2x=20-5;5x=20-5;5x=15+0;x=3", 4),  # a written 0 term
    ("3x+5+2x=20;3x+2x=20-5;5x=20-5;5x=15;x=-0", 5),
    ("3x+5+2x=20;3x+2x=20-5;x+2x=20-5", 3),          # bare x outside the last step
    ("3x+5+2x=20=20", 1),
    ("", 0),                                          # empty
    ("3x+5+2x=20;3x+5=20-2x;" * 6 + "3x+5+2x=20;3x+2x=20-5;5x=20-5;5x=15;x=3", 0),  # too many steps
]


def _corrupt(proof: str, rng: np.random.Generator) -> str:
  if not proof:
    return le.ALPHABET[int(rng.integers(len(le.ALPHABET)))]
  steps = proof.split(";")
  kind = int(rng.integers(8))
  if kind == 0 and any(c.isdigit() for c in proof):    # a digit changed
    i = int(rng.choice([i for i, c in enumerate(proof) if c.isdigit()]))
    return proof[:i] + str((int(proof[i]) + int(rng.integers(1, 10))) % 10) + proof[i + 1:]
  if kind == 1 and len(steps) > 1:                      # a step dropped
    del steps[int(rng.integers(len(steps)))]
  elif kind == 2 and len(steps) > 1:                    # two steps swapped
    i, j = rng.choice(len(steps), 2, replace=False)
    steps[i], steps[j] = steps[j], steps[i]
  elif kind == 3 and any(c in "+-" for c in proof):     # a sign flipped
    i = int(rng.choice([i for i, c in enumerate(proof) if c in "+-"]))
    return proof[:i] + {"+": "-", "-": "+"}[proof[i]] + proof[i + 1:]
  elif kind == 4:                                       # a step duplicated
    i = int(rng.integers(len(steps)))
    steps.insert(i, steps[i])
  elif kind == 5:                                       # truncated
    return proof[:int(rng.integers(len(proof)))]
  elif kind == 6:                                       # random characters
    chars = list(proof)
    for i in rng.integers(0, len(chars), int(rng.integers(1, 3))):
      chars[i] = le.ALPHABET[int(rng.integers(len(le.ALPHABET)))]
    return "".join(chars)
  elif kind == 7:                                       # a random character inserted
    i = int(rng.integers(len(proof) + 1))
    return proof[:i] + le.ALPHABET[int(rng.integers(len(le.ALPHABET)))] + proof[i:]
  return ";".join(steps)


def _detour(statement: str, pairs: int, task) -> str:
  """A legal proof that first moves the last left term right and back `pairs` times."""
  equation, lines = le.parse_equation(statement, task.limits)[0], []
  for _ in range(pairs):
    (c, x), rest = equation.left[-1], equation.left[:-1]
    lines += [le.render(le.Equation(rest, equation.right + ((-c, x),))), statement]
  return ";".join(lines + [task.reference_proof(statement)])


@pytest.fixture(scope="module")
def task():
  return le.LinearEquationsTask(CONFIG)


@pytest.fixture(scope="module")
def cases(task):
  """~3,300 (statement, proof): hand-written, reference, random legal, corrupted, mismatched."""
  rng = np.random.default_rng(1)
  statements = [e["statement"] for e in task.examples("train") + task.examples("eval")]
  found = [(STATEMENT, proof) for proof, _ in HAND_WRITTEN]
  for statement in statements:
    reference = task.reference_proof(statement)
    legal = le.random_legal_proof(statement, rng, task.limits)
    found += [(statement, reference), (statement, legal), (statement, _corrupt(reference, rng)),
              (statement, _corrupt(legal, rng)), (statement, _corrupt(_corrupt(legal, rng), rng))]
  for statement in statements[:300]:   # legal detours: long proofs, some too long or too many steps
    found.append((statement, _detour(statement, int(rng.integers(0, 5)), task)))
  for _ in range(200):    # a valid proof of another statement, and ill-formed statements
    a, b = rng.choice(len(statements), 2, replace=False)
    found.append((statements[a], task.reference_proof(statements[b])))
    found.append((_corrupt(statements[a], rng), task.reference_proof(statements[a])))
  return found


def _in_graph(task, tokenizer, statements, proofs, columns=PROOF_COLUMNS):
  rows = [task.example_arrays({"statement": s}) for s in statements]
  batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
  tokens, mask = encode_batch(tokenizer, proofs, columns, add_eos=True, padding_side="right")
  verify = jax.jit(task.in_graph_verifier(tokenizer))
  return np.asarray(verify(tokens, mask, batch))


@pytest.fixture(scope="module")
def verdicts(task, cases):
  """In-graph rewards of every case (statements that do not fit get a placeholder row)."""
  fits = [len(s) <= task.limits.statement_len for s, _ in cases]
  statements = [s if ok else "1x=1" for (s, _), ok in zip(cases, fits)]
  rewards = _in_graph(task, task.tokenizer, statements, [p for _, p in cases])
  return np.where(fits, rewards, 0.0)


def test_hand_written_proofs(task, verdicts):
  assert task.is_well_formed(STATEMENT)
  for index, (proof, bad_step) in enumerate(HAND_WRITTEN):
    ok, reason = task.check_proof(STATEMENT, proof)
    assert ok == (bad_step is None), (proof, reason)
    assert verdicts[index] == float(ok), proof
    if bad_step:
      assert reason.startswith(f"step {bad_step} "), (proof, reason)
  assert task.check_proof(STATEMENT, "")[1] == "empty proof"
  assert task.check_proof(STATEMENT, "3x+5+2x=20;5x+5=20")[1] == (
      "the last step '5x+5=20' is not 'x=q'")
  assert task.check_proof(STATEMENT, HAND_WRITTEN[-1][0])[1] == "17 steps, more than 14"
  assert task.check_proof(STATEMENT, "x=3")[1] == (
      "step 1 'x=3': not R3 (divide 'kx=m' by k) of '3x+5=-2x+20'")
  assert task.check_proof(STATEMENT, "3x+2x=20-5;5x=15;x=3")[1] == (
      "step 1 '3x+2x=20-5': not one legal rewrite of '3x+5=-2x+20'")
  assert "not well formed" in task.check_proof("3x=15", "x=5")[1]   # trivial statement
  assert le.divide(le.Equation(((3, True),), ((10, False),))) is None     # 3 does not divide 10
  assert le.divide(le.Equation(((-3, True),), ())) == 0                  # "-3x=0"


def test_in_graph_and_host_checkers_agree(task, cases, verdicts):
  checked = [task.check_proof(s, p) for s, p in cases]
  host = np.array([ok for ok, _ in checked], np.float32)
  assert verdicts.dtype == np.float32 and verdicts.shape == (len(cases),)
  assert len(cases) >= 3000
  mismatches = [(cases[i], task.check_proof(*cases[i])) for i in np.flatnonzero(host != verdicts)]
  assert not mismatches, mismatches[:5]
  assert host.sum() >= 1000 and (1 - host).sum() >= 1000, host.mean()
  count = lambda text: sum(text in why for _, why in checked)
  assert count("not one legal rewrite") > 300 and count("malformed") > 300   # kinds of rejection
  assert count("not well formed") > 100 and count("not R3") > 30 and count("not 'x=q'") > 20
  assert sum("longer than 220" in why for _, why in checked) >= 5     # the max_proof_len rule
  assert sum("steps, more than 14" in why for _, why in checked) >= 5


def test_byte_tokenizer_in_graph_matches_host_verifier_decoding(task, cases):
  """eos, masked-out tails, pad/bos inside the text, non-alphabet bytes: read as the run does."""
  tokenizer, rng = ByteTokenizer(), np.random.default_rng(2)
  picked = [cases[i] for i in rng.choice(len(cases), 512, replace=False)
            if len(cases[i][0]) <= task.limits.statement_len]
  columns = 256
  tokens = np.zeros((len(picked), columns), np.int32)
  mask = np.zeros((len(picked), columns), bool)
  for row, (_, proof) in enumerate(picked):
    ids = tokenizer.encode(proof[:200])
    if rng.random() < 0.3:     # pad or bos inside the text: decode drops them
      ids.insert(int(rng.integers(len(ids) + 1)), int(rng.integers(2)))
    if rng.random() < 0.2:     # a character outside the alphabet
      i = int(rng.integers(len(ids) + 1))
      ids[i:i + 1] = tokenizer.encode(str(rng.choice(["a", " ", "é"])))
    ids = ids + [tokenizer.eos_id] + tokenizer.encode("5;x=1")
    tokens[row, :min(len(ids), columns)] = ids[:columns]
    mask[row, :min(len(ids), columns) - int(rng.integers(0, 3))] = True   # maybe cut earlier
  records = [{"statement": s} for s, _ in picked]
  host = HostVerifier(task.host_verifier, tokenizer, records, (tokenizer.eos_id,))
  expected = host.rewards_on_host(tokens, mask, np.arange(len(picked)))
  arrays = [task.example_arrays(r) for r in records]
  batch = {k: jnp.asarray(np.stack([a[k] for a in arrays])) for k in arrays[0]}
  rewards = np.asarray(jax.jit(task.in_graph_verifier(tokenizer))(tokens, mask, batch))
  np.testing.assert_array_equal(rewards, expected)
  assert 50 <= expected.sum() <= len(picked) - 50


def _random_statements(task, rng):
  """Generated statements, their mutations, random equations of random terms, random strings."""
  good = [e["statement"] for e in task.examples("train")[:500]]
  found = list(good)
  for _ in range(1500):
    text = list(str(rng.choice(good)))
    for _ in range(int(rng.integers(1, 3))):
      i, char = int(rng.integers(len(text) + 1)), "0123456789x+-="[int(rng.integers(14))]
      operation = int(rng.integers(3))
      if operation == 0 or i == len(text):
        text.insert(i, char)
      elif operation == 1:
        text[i] = char
      else:
        del text[i]
    found.append("".join(text))
  for _ in range(1000):
    sides = [tuple((int(rng.integers(1, 26)) * int(rng.choice([-1, 1])), bool(rng.random() < 0.5))
                   for _ in range(int(rng.integers(0, 5)))) for _ in range(2)]
    found.append(le.render(le.Equation(*sides)))
  for _ in range(500):
    found.append("".join(rng.choice(list("0123456789x+-=;|"), int(rng.integers(0, 28)))))
  return found + ["x=5", "3x=15", "-3x=0", "0=3x", "0=3x-15", "2x+1=4", "3x+5=3x+1", ""]


def test_well_formed_ids_agrees_with_is_well_formed(task):
  statements = _random_statements(task, np.random.default_rng(3))
  tokens, mask = encode_batch(task.tokenizer, statements, task.limits.statement_len + 8,
                              padding_side="right")
  in_graph = np.asarray(jax.jit(jax.vmap(task.well_formed_ids))(tokens, mask))
  host = np.array([task.is_well_formed(s) for s in statements])
  assert len(statements) >= 3000
  mismatches = [statements[i] for i in np.flatnonzero(host != in_graph)]
  assert not mismatches, mismatches[:10]
  assert host.sum() >= 600 and (~host).sum() >= 1000


@pytest.mark.parametrize("statement, reason", [
    ("3x=15", "trivial"), ("-3x=0", "trivial"), ("x=5", "not terms"), ("3x+5=", "not terms"),
    ("2x+1=4", "no integer solution"), ("3x+5=3x+1", "no integer solution"),
    ("21x+1=1", "coefficient exceeds"), ("1x+1x+1x+1x+1x=1", "at most 4 a side"),
    ("1x+1x+1x=1x+1x+1x+1x", "at most 4 a side"), ("3x+5=20|", "not terms"),
    ("3x+5=20;1x=1", "exactly one '='"), ("3x+05=20", "not terms"), ("3x+0=15", "not terms"),
    ("1x+1=14", "no integer solution"), ("3x+5=-2x+20=1", "exactly one '='"),
    ("1x+1x+1x+1=1+1+1", "in all"), ("1" * 30 + "x=5", "longer than")])
def test_ill_formed_statements(task, statement, reason):
  ok, why = task.well_formed_reason(statement)
  assert not ok and reason in why, (statement, why)


def test_well_formed_statements(task):
  for statement in [STATEMENT, "0=3x-15", "3x+5=2x+5", "4=3x+1", "-1x=5-2x", "3x=2x",
                    "1x=13x+12"]:
    assert task.is_well_formed(statement), task.well_formed_reason(statement)


def test_data_layout(task):
  train, evals, seeds = task.examples("train"), task.examples("eval"), task.seed_examples()
  assert (len(train), len(evals), len(seeds)) == (600, 100, 64)
  check_examples(train, "train", "linear_equations")
  texts = [{e["statement"] for e in split} for split in (train, evals, seeds)]
  assert sum(map(len, texts)) == 764 and not (texts[0] & texts[1] or texts[0] & texts[2]
                                               or texts[1] & texts[2])
  for example in train + evals + seeds:
    assert example["prompt"] == example["statement"] + "|"
    assert task.check_proof(example["statement"], example["answer"]) == (True, "valid")
    assert example["answer"].endswith(f"x={example['solution']}")
    assert len(example["answer"]) <= CONFIG.max_proof_len
  terms = collections.Counter(e["num_terms"] for e in train)
  assert set(terms) == set(range(2, 7)) and terms[6] > terms[5] > terms[2]
  assert terms[6] + terms[5] > 0.45 * len(train)
  assert max(e["num_terms"] for e in seeds) <= 4
  again = le.LinearEquationsTask(CONFIG)
  assert again.examples("train") == train and again.seed_examples() == seeds
  other = le.LinearEquationsTask(dataclasses.replace(CONFIG, seed=1))
  assert other.examples("eval") != evals
  with pytest.raises(ValueError, match="split must be"):
    task.examples("test")


def test_example_arrays_and_tokenizers(task):
  arrays = task.example_arrays({"statement": STATEMENT})
  assert arrays["statement_tokens"].shape == (task.limits.statement_len,)
  assert task.tokenizer.decode(arrays["statement_tokens"][arrays["statement_mask"]]) == STATEMENT
  with pytest.raises(ValueError, match="max_statement_len"):
    task.example_arrays({"statement": "1x+" * 20 + "1=2"})
  assert task.in_graph_verifier(CharTokenizer("0123456789+-=")) is None
  assert task.in_graph_verifier(CharTokenizer(le.ALPHABET + "ab")) is not None
  assert task.proof_reward("x=3", {"statement": STATEMENT}) == 0.0
  assert task.proof_reward(HAND_WRITTEN[0][0], {"statement": STATEMENT}) == 1.0


@pytest.mark.parametrize("fields, field", [
    (dict(min_terms=1), "min_terms"), (dict(max_terms=9), "max_terms"),
    (dict(max_terms=2, min_terms=3), "max_terms"),
    (dict(max_terms_per_side=0), "max_terms_per_side"),
    (dict(max_coefficient=0), "max_coefficient"), (dict(max_coefficient=10**8), "max_coefficient"),
    (dict(max_solution=-1), "max_solution"), (dict(max_proof_steps=11), "max_proof_steps"),
    (dict(max_proof_len=-1), "max_proof_len"), (dict(num_train=0), "num_train"),
    (dict(num_eval=0), "num_eval"), (dict(seed_max_terms=7), "seed_max_terms"),
    (dict(seed="0"), "seed"), (dict(max_statement_len=1.5), "max_statement_len")])
def test_config_errors_name_the_field(fields, field):
  with pytest.raises(ValueError, match=rf"LinearEquationsConfig\.{field} "):
    le.LinearEquationsConfig(**fields)


def test_too_few_statements_is_an_error_naming_the_field():
  config = le.LinearEquationsConfig(min_terms=2, max_terms=2, max_terms_per_side=1,
                                    max_coefficient=1, max_solution=0, num_eval=50)
  with pytest.raises(ValueError, match="num_eval"):
    le.LinearEquationsTask(config).examples("eval")


def test_warm_start_set_teaches_both_roles_on_seeds_only(task):
  seeds, rows = task.seed_examples(), task.warm_start_examples()
  provers = [r for r in rows if r["role"] == "prover"]
  conjecturers = [r for r in rows if r["role"] == "conjecturer"]
  assert len(provers) == len(seeds) and len(conjecturers) == len(seeds) * (
      CONFIG.conjecture_examples_per_seed)
  seed_statements = {s["statement"]: s for s in seeds}
  for row in conjecturers:
    seed = seed_statements[row["statement"]]
    assert row["prompt"] == f"{seed['statement']}|{seed['answer']}|"
    assert row["answer"] in seed_statements and row["answer"] != row["statement"]
    assert seed_statements[row["answer"]]["num_terms"] - seed["num_terms"] in (0, 1)
  assert task.warm_start_examples() == rows   # deterministic in the seed


def test_in_graph_difficulty_and_checks_match_the_host(task):
  """statement_checks (in the run's ids) agree with the host functions on every statement and
  on the reference proofs and a corrupted copy of each."""
  checks = task.statement_checks(task.tokenizer)
  examples = task.examples("train")[:200] + task.seed_examples()
  width, proof_width = task.limits.statement_len, task.limits.proof_len
  def encode(texts, n):
    ids = np.full((len(texts), n), task.tokenizer.pad_id, np.int32)
    for i, text in enumerate(texts):
      ids[i, :len(text)] = task.tokenizer.encode(text)
    return jnp.asarray(ids), jnp.asarray(np.arange(n)[None] < np.asarray([len(t) for t in texts])[:, None])
  statements = [e["statement"] for e in examples]
  proofs = [e["answer"] for e in examples]
  broken = [p[:-1] + ("1" if p[-1] != "1" else "2") for p in proofs]
  s_ids, s_mask = encode(statements + statements, width)
  p_ids, p_mask = encode(proofs + broken, proof_width)
  got = np.asarray(jax.vmap(checks.check_proof)(s_ids, s_mask, p_ids, p_mask))
  want = [task.check_proof(s, p)[0] for s, p in zip(statements + statements, proofs + broken)]
  assert got.tolist() == want and sum(want) == len(examples)
  ids, mask = encode(statements, width)
  assert np.asarray(jax.vmap(checks.difficulty)(ids, mask)).tolist() == [
      task.difficulty(s) for s in statements] == [e["num_terms"] for e in examples]
  assert np.all(np.asarray(jax.vmap(checks.well_formed)(ids, mask)))
