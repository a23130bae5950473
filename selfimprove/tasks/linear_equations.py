"""Linear equations in one variable with step-checked proofs: a proof domain for STP self-play.

Text (alphabet "0123456789x+-=;|"; a `CharTokenizer` over it reads it):

* A term is a signed non-zero integer coefficient, optionally followed by "x":
  "3x", "-12x", "5", "-7"; "1x" is written out, never "x". Within a side the
  first term has no "+", later terms start with "+" or "-"; numbers have no
  leading zeros. A side with no terms is "0" (the only place a 0 is written).
* An equation is "LEFT=RIGHT": "3x+5=-2x+20".
* A statement is an equation that is well formed (`is_well_formed`): it parses;
  each side has 1..max_terms_per_side written terms ("0" counts as one) and at
  most max_terms in all; |coefficient| <= max_coefficient; the x-coefficient
  (left minus right) is non-zero and the solution is an integer with
  |x| <= max_solution; at most statement_len characters; and it is not
  trivial ("kx=m": one x-term left, at most one constant right).
* The prompt is the statement then "|"; the completion is the proof: steps
  separated by ";", "EQ1;EQ2;...;x=q", each step exactly one rule applied to
  the equation before it (the statement before step 1):
    R1 move: delete one term from a side and append its negation as the last
       term of the other side ("3x+5=20" -> "3x=20-5"; an emptied side is "0",
       a "0" side is replaced by the appended term).
    R2 combine: on one side, terms i < j of the same kind (both x or both
       constant): term i becomes their sum, term j is deleted; a zero sum
       deletes term i too ("5x=20-5" -> "5x=15").
    R3 divide: from "kx=m" (m may be the side "0") with k | m, the step "x=q",
       q = m / k; the only bare "x", and always the last step.
  A proof is valid iff the statement is well formed, every step is legal, the
  last is "x=q", there are at most max_proof_steps steps, every number is at
  most number_bound = max_terms * max_coefficient (int32-safe; a legal step
  never writes more) and the text has at most proof_len characters. Answer-only
  proofs ("x=5" for "3x+5=20") and proofs of another statement are rejected.

Two checkers with the same verdicts (tests compare them on thousands of
proofs): `check_proof` (`linear_equations_text`, re-exported here), host
Python that names the first bad step, and
`linear_equations_graph.check_proof_ids`, pure jnp on token ids, which the
task's `in_graph_verifier` runs inside the compiled step. The host path is how
an external checker (Lean, Isabelle) would plug in: a `host_verifier(completion
text, example) -> float` that the run calls through `jax.pure_callback`
(`selfimprove.verifiers.HostVerifier`); this task's host verifier is used
whenever the run's tokenizer is not one character per token.

Data: train and eval statements spread over min_terms..max_terms terms (weight
growing with the number of terms: many hard ones), plus a warm-start seed set
(`seed_examples`, at most seed_max_terms terms), all deterministic in `seed`
and disjoint by statement text. Each example's answer is `reference_proof`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from selfimprove.tasks import linear_equations_graph as graph
from selfimprove.tasks.linear_equations_graph import ALPHABET
from selfimprove.tasks.linear_equations_text import (
    Equation, Term, check_proof, divide, legal_steps, parse_equation, random_legal_proof,
    reference_proof, render, render_side, well_formed)
from selfimprove.tokenizers import CharTokenizer, Tokenizer

__all__ = ["ALPHABET", "MAX_NUMBER_BOUND", "Equation", "LinearEquationsConfig",
           "LinearEquationsTask", "Term", "check_proof", "divide", "legal_steps", "parse_equation",
           "random_legal_proof", "reference_proof", "render", "render_side", "well_formed"]


MAX_NUMBER_BOUND = 10**8   # max_terms * max_coefficient; sums of two stay far below 2**31


@dataclasses.dataclass(frozen=True)
class LinearEquationsConfig:
  """Which statements exist, how hard they are, and the static bounds of the checkers.

  Attributes:
    min_terms / max_terms: fewest / most terms of a generated statement (the
      difficulty knob); max_terms also bounds every statement and proof line.
    max_terms_per_side: most terms on one side of a statement.
    max_coefficient: largest |coefficient| in a statement.
    max_solution: largest |x| of a statement's solution.
    max_proof_steps: most steps of a proof (>= 2 * max_terms: the reference fits).
    max_statement_len: most characters of a statement; 0 = the longest possible.
    max_proof_len: most characters of a proof; 0 = the longest legal proof.
    num_seed / num_train / num_eval: statements in each set.
    seed_max_terms: most terms of a seed statement; 0 = midway to max_terms.
    conjecture_examples_per_seed: conjecturing examples per seed statement in
      `warm_start_examples` (STP's warm start teaches both roles).
    seed: seeds the generator of all three sets.
  """

  min_terms: int = 3
  max_terms: int = 6
  max_terms_per_side: int = 4
  max_coefficient: int = 12
  max_solution: int = 12
  max_proof_steps: int = 16
  max_statement_len: int = 0
  max_proof_len: int = 0
  num_seed: int = 256
  num_train: int = 8192
  num_eval: int = 512
  seed_max_terms: int = 0
  conjecture_examples_per_seed: int = 1
  seed: int = 0

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"LinearEquationsConfig.{field.name} must be an integer, got {value!r}.")
    per_side, terms = self.max_terms_per_side, self.max_terms
    for field, ok, what in [
        ("min_terms", self.min_terms >= 2, ">= 2"),
        ("max_terms_per_side", per_side >= 1, ">= 1"),
        ("max_terms", self.min_terms <= terms <= 2 * per_side,
         f"in [min_terms, 2 * max_terms_per_side] = [{self.min_terms}, {2 * per_side}]"),
        ("max_coefficient", 1 <= self.max_coefficient <= MAX_NUMBER_BOUND // terms,
         f">= 1 with max_terms * max_coefficient <= {MAX_NUMBER_BOUND} (int32 arithmetic)"),
        ("max_solution", self.max_solution >= 0, ">= 0"),
        ("max_proof_steps", self.max_proof_steps >= 2 * terms,
         f">= 2 * max_terms = {2 * terms} (the longest reference proof)"),
        ("max_statement_len", self.max_statement_len >= 0, ">= 0"),
        ("max_proof_len", self.max_proof_len >= 0, ">= 0"),
        ("num_seed", self.num_seed >= 0, ">= 0"),
        ("num_train", self.num_train >= 1, ">= 1"),
        ("num_eval", self.num_eval >= 1, ">= 1"),
        ("conjecture_examples_per_seed", self.conjecture_examples_per_seed >= 0, ">= 0"),
        ("seed_max_terms", self.seed_max_terms == 0 or self.min_terms <= self.seed_max_terms
         <= terms, "0 or in [min_terms, max_terms]")]:
      if not ok:
        raise ValueError(
            f"LinearEquationsConfig.{field} must be {what}, got {getattr(self, field)!r}.")

  def limits(self) -> graph.Limits:
    """The static bounds both checkers use (0-valued lengths replaced by their worst case)."""
    bound = self.max_terms * self.max_coefficient
    line_len = self.max_terms * (len(str(bound)) + 2) + 1
    return graph.Limits(
        max_terms=self.max_terms, max_terms_per_side=self.max_terms_per_side,
        max_coefficient=self.max_coefficient, max_solution=self.max_solution, number_bound=bound,
        max_lines=self.max_proof_steps,
        statement_len=self.max_statement_len or
        self.max_terms * (len(str(self.max_coefficient)) + 2) + 1,
        proof_len=self.max_proof_len or self.max_proof_steps * (line_len + 1) - 1)


def _draw_statement(rng: np.random.Generator, num_terms: int, config: LinearEquationsConfig,
                    limits: graph.Limits) -> str | None:
  """A random well-formed statement of `num_terms` terms, or None (the caller draws again)."""
  per_side, c_max, s_max = config.max_terms_per_side, config.max_coefficient, config.max_solution
  num_left = int(rng.integers(max(1, num_terms - per_side), min(per_side, num_terms - 1) + 1))
  is_x = rng.random(num_terms) < 0.5
  is_x[rng.integers(num_terms)] = True
  coef = rng.integers(1, c_max + 1, num_terms) * rng.choice([-1, 1], num_terms)
  side_sign = np.where(np.arange(num_terms) < num_left, 1, -1)     # +1 left, -1 right
  x_diff = int(np.sum((coef * side_sign)[is_x]))
  constants = np.flatnonzero(~is_x)
  if x_diff == 0:
    return None
  if len(constants):   # fix one constant so that the solution is a chosen integer
    j = int(rng.choice(constants))
    rest = int(np.sum(-(coef * side_sign)[~is_x])) + int(coef[j] * side_sign[j])
    solutions = np.arange(-s_max, s_max + 1)
    fixed = -side_sign[j] * (x_diff * solutions - rest)
    allowed = fixed[(fixed != 0) & (np.abs(fixed) <= c_max)]
    if not len(allowed):
      return None
    coef[j] = rng.choice(allowed)
  terms = [(int(c), bool(x)) for c, x in zip(coef, is_x)]
  text = render(Equation(tuple(terms[:num_left]), tuple(terms[num_left:])))
  return text if well_formed(text, limits)[0] else None


class LinearEquationsTask:
  """Statements "LEFT=RIGHT|" with step-checked proofs; in-graph and host verifiers agree.

  Attributes:
    config: the LinearEquationsConfig; limits: its `graph.Limits`.
    tokenizer: CharTokenizer over ALPHABET: the ids of `example_arrays`.
    host_verifier: `proof_reward`.
  """

  alphabet = ALPHABET

  def __init__(self, config: LinearEquationsConfig):
    self.config = config
    self.limits = config.limits()
    self.tokenizer = CharTokenizer(ALPHABET)
    self.reader = graph.id_reader(self.tokenizer)
    self.host_verifier = self.proof_reward
    self._sets: dict[str, list[dict]] | None = None

  def is_well_formed(self, statement: str) -> bool:
    return well_formed(statement, self.limits)[0]

  def well_formed_reason(self, statement: str) -> tuple[bool, str]:
    return well_formed(statement, self.limits)

  def check_proof(self, statement: str, proof: str) -> tuple[bool, str]:
    return check_proof(statement, proof, self.limits)

  def reference_proof(self, statement: str) -> str:
    return reference_proof(statement, self.limits)

  def random_legal_proof(self, statement: str, rng: np.random.Generator) -> str:
    return random_legal_proof(statement, rng, self.limits)

  def proof_reward(self, completion: str, example: dict) -> float:
    """Host verifier: 1.0 iff the completion is a valid proof of example["statement"]."""
    return float(check_proof(example["statement"], completion, self.limits)[0])

  def _build_sets(self) -> dict[str, list[dict]]:
    """Eval, then seed, then train statements, each new text unseen before (disjoint sets)."""
    cfg, used, sets = self.config, set(), {}
    seed_max = cfg.seed_max_terms or (cfg.min_terms + cfg.max_terms + 1) // 2
    for index, (name, count, low, high) in enumerate([
        ("eval", cfg.num_eval, cfg.min_terms, cfg.max_terms),
        ("seed", cfg.num_seed, cfg.min_terms, seed_max),
        ("train", cfg.num_train, cfg.min_terms, cfg.max_terms)]):
      rng = np.random.default_rng([cfg.seed % 2**32, index])
      terms = np.arange(low, high + 1)
      weights = (terms - low + 1.0) if name != "seed" else np.ones(len(terms))
      sets[name], attempts = [], 0
      while len(sets[name]) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
          raise ValueError(
              f"LinearEquationsConfig.num_{name}={count}: found only {len(sets[name])} new "
              f"distinct statements; lower num_{name} or raise max_coefficient / max_solution.")
        num_terms = int(rng.choice(terms, p=weights / weights.sum()))
        text = _draw_statement(rng, num_terms, cfg, self.limits)
        if text is None or text in used:
          continue
        proof = reference_proof(text, self.limits)
        if len(proof) > self.limits.proof_len:
          continue
        used.add(text)
        sides = parse_equation(text, self.limits)[0]
        sets[name].append({"prompt": text + "|", "answer": proof, "statement": text,
                           "solution": int(proof.rsplit("=", 1)[1]),
                           "num_terms": sum(max(len(side), 1) for side in sides)})
    return sets

  def _set(self, name: str) -> list[dict]:
    if self._sets is None:
      self._sets = self._build_sets()
    return self._sets[name]

  def examples(self, split: str) -> list[dict]:
    """Every example of "train" or "eval": prompt "STATEMENT|", answer its reference proof."""
    if split not in ("train", "eval"):
      raise ValueError(f"LinearEquationsTask.examples: split must be 'train' or 'eval', "
                       f"got {split!r}.")
    return self._set(split)

  def seed_examples(self) -> list[dict]:
    """Easy-to-medium statements with reference proofs for a warm start; not in train or eval."""
    return self._set("seed")

  # -- STP's proof-domain interface (selfimprove/pipelines/stp.py) ----------------------------
  statement_suffix = "|"     # the prover's prompt: statement + "|"
  conjecture_suffix = "|"    # the conjecturer's prompt: statement + "|" + proof + "|"

  def conjecturer_prompt(self, statement: str, proof: str) -> str:
    return statement + self.statement_suffix + proof + self.conjecture_suffix

  def difficulty(self, statement: str) -> int:
    """The number of written terms of a well-formed statement."""
    sides = parse_equation(statement, self.limits)[0]
    return sum(max(len(side), 1) for side in sides)

  def warm_start_examples(self) -> list[dict]:
    """Both roles on the seed set: each seed's reference proof ("STATEMENT|" -> proof), and
    `conjecture_examples_per_seed` conjecturing examples ("STATEMENT|PROOF|" -> another seed
    statement with as many terms or one more, drawn deterministically in `seed`)."""
    seeds = self.seed_examples()
    rng = np.random.default_rng([self.config.seed % 2**32, 3])
    by_terms: dict[int, list[dict]] = {}
    for seed in seeds:
      by_terms.setdefault(seed["num_terms"], []).append(seed)
    conjecturing = []
    for seed in seeds:
      related = by_terms.get(seed["num_terms"], []) + by_terms.get(seed["num_terms"] + 1, [])
      related = [other for other in related if other is not seed] or [seed]
      for _ in range(self.config.conjecture_examples_per_seed):
        other = related[int(rng.integers(len(related)))]
        conjecturing.append(dict(seed, prompt=self.conjecturer_prompt(seed["statement"],
                                                                      seed["answer"]),
                                 answer=other["statement"], role="conjecturer"))
    return [dict(seed, role="prover") for seed in seeds] + conjecturing

  def statement_checks(self, tokenizer: Tokenizer) -> graph.StatementChecks | None:
    """The in-graph checks on statements and proofs both in `tokenizer`'s ids (None if it is
    not one token per character)."""
    reader = graph.id_reader(tokenizer)
    if reader is None:
      return None
    return graph.StatementChecks(
        well_formed=lambda ids, mask: graph.well_formed_ids(ids, mask, self.limits, reader),
        check_proof=lambda s, sm, p, pm: graph.check_proof_ids(s, sm, p, pm, self.limits,
                                                               reader, reader),
        difficulty=lambda ids, mask: graph.num_terms_ids(ids, mask, reader))

  def example_arrays(self, example: dict) -> dict[str, np.ndarray]:
    """statement_tokens int32 [statement_len] / statement_mask bool, in this task's char ids."""
    statement = example["statement"]
    ids = self.tokenizer.encode(statement)
    if len(ids) > self.limits.statement_len:
      raise ValueError(f"statement {statement!r} has {len(ids)} characters, more than "
                       f"max_statement_len={self.limits.statement_len}.")
    tokens = np.full(self.limits.statement_len, self.tokenizer.pad_id, np.int32)
    tokens[:len(ids)] = ids
    return {"statement_tokens": tokens, "statement_mask": np.arange(len(tokens)) < len(ids)}

  def check_proof_ids(self, statement_ids: jax.Array, statement_mask: jax.Array,
                      proof_ids: jax.Array, proof_mask: jax.Array) -> jax.Array:
    """bool []: `check_proof` of one row, statement [S] and proof [N] in this task's ids."""
    return graph.check_proof_ids(statement_ids, statement_mask, proof_ids, proof_mask,
                                 self.limits, self.reader, self.reader)

  def well_formed_ids(self, statement_ids: jax.Array, statement_mask: jax.Array) -> jax.Array:
    """bool []: `is_well_formed` of one row [S] in this task's ids."""
    return graph.well_formed_ids(statement_ids, statement_mask, self.limits, self.reader)

  def in_graph_verifier(self, tokenizer: Tokenizer):
    """(tokens [rows, N], mask [rows, N], batch) -> float32 [rows], or None for a tokenizer
    that does not write one token per character (the host verifier then runs)."""
    reader = graph.id_reader(tokenizer)
    if reader is None:
      return None
    check = jax.vmap(lambda s, sm, p, pm: graph.check_proof_ids(
        s, sm, p, pm, self.limits, self.reader, reader))
    return lambda tokens, mask, batch: check(batch["statement_tokens"], batch["statement_mask"],
                                             tokens, mask).astype(jnp.float32)
