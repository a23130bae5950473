"""Host-side text grammar and checker of linear-equation proofs, and proof generators.

Parses and renders equations ("3x+5=-2x+20"), checks a statement (`well_formed`)
and a proof (`check_proof`, naming the first bad step), and writes proofs
(`reference_proof`, `random_legal_proof`). The text format and the rules R1-R3
are documented in `selfimprove.tasks.linear_equations`, which re-exports every
public name here; `linear_equations_graph` is the in-graph (jnp) twin.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from selfimprove.tasks import linear_equations_graph as graph


Term = tuple[int, bool]   # (non-zero coefficient, is an x-term)


class Equation(NamedTuple):
  left: tuple[Term, ...]
  right: tuple[Term, ...]


def render_side(terms: tuple[Term, ...]) -> str:
  text = "".join(f"{'+' if c > 0 and i else ''}{c}{'x' if x else ''}"
                 for i, (c, x) in enumerate(terms))
  return text or "0"


def render(equation: Equation) -> str:
  return f"{render_side(equation.left)}={render_side(equation.right)}"


_SIDE = re.compile(r"0|-?[1-9][0-9]*x?(?:[+-][1-9][0-9]*x?)*")
_TERM = re.compile(r"([+-]?)([1-9][0-9]*)(x?)")
_FINAL = re.compile(r"x=(0|-?[1-9][0-9]*)")


def parse_equation(text: str, limits: graph.Limits) -> tuple[Equation | None, str]:
  """(Equation, "") or (None, why not) for one line "LEFT=RIGHT" of explicit terms."""
  sides = text.split("=")
  if len(sides) != 2:
    return None, f"needs exactly one '=', has {len(sides) - 1}"
  parsed = []
  for name, side in zip(("left", "right"), sides):
    if not _SIDE.fullmatch(side):
      return None, f"{name} side {side!r} is not terms like '3x-5+1x' (or '0')"
    terms = tuple((int(sign + digits), x == "x") for sign, digits, x in _TERM.findall(side))
    if any(abs(c) > limits.number_bound for c, _ in terms):
      return None, f"{name} side {side!r} has a number above {limits.number_bound}"
    if len(terms) > limits.max_terms:
      return None, f"{name} side {side!r} has more than {limits.max_terms} terms"
    parsed.append(terms)
  return Equation(*parsed), ""


def well_formed(statement: str, limits: graph.Limits) -> tuple[bool, str]:
  """(True, "") or (False, why): the rules of a statement (module docstring)."""
  if len(statement) > limits.statement_len:
    return False, f"longer than {limits.statement_len} characters"
  equation, why = parse_equation(statement, limits)
  if equation is None:
    return False, why
  written = [max(len(side), 1) for side in equation]
  if max(written) > limits.max_terms_per_side or sum(written) > limits.max_terms:
    return False, (f"has {written[0]}+{written[1]} terms; at most {limits.max_terms_per_side} a "
                   f"side and {limits.max_terms} in all")
  if any(abs(c) > limits.max_coefficient for side in equation for c, _ in side):
    return False, f"a coefficient exceeds {limits.max_coefficient}"
  x_diff = sum(c for c, x in equation.left if x) - sum(c for c, x in equation.right if x)
  constants = sum(c for c, x in equation.right if not x) - sum(c for c, x in equation.left if not x)
  if x_diff == 0 or constants % x_diff or abs(constants // x_diff) > limits.max_solution:
    return False, f"has no integer solution with |x| <= {limits.max_solution}"
  if _is_kx_m(equation):
    return False, "is trivial (already 'kx=m')"
  return True, ""


def _is_kx_m(equation: Equation) -> bool:
  left, right = equation
  return len(left) == 1 and left[0][1] and len(right) <= 1 and not any(x for _, x in right)


def divide(equation: Equation) -> int | None:
  """R3: q for "kx=m" with k | m, else None."""
  if not _is_kx_m(equation):
    return None
  k, m = equation.left[0][0], (equation.right[0][0] if equation.right else 0)
  return m // k if m % k == 0 else None


def _drop(side: tuple[Term, ...], p: int) -> tuple[Term, ...]:
  return side[:p] + side[p + 1:]


def _combine(side: tuple[Term, ...], i: int, j: int) -> tuple[Term, ...]:
  """R2 on one side: term i becomes term i + term j, j is deleted (i too if the sum is 0)."""
  total = side[i][0] + side[j][0]
  return side[:i] + (((total, side[i][1]),) if total else ()) + side[i + 1:j] + side[j + 1:]


def legal_steps(equation: Equation) -> list[Equation]:
  """Every equation one R1 move or R2 combine away from `equation` (possibly repeated)."""
  found = []
  for s in (0, 1):
    side, other = equation[s], equation[1 - s]
    arrange = lambda new_side, new_other: Equation(*((new_side, new_other)[::1 - 2 * s]))
    for p, (c, x) in enumerate(side):
      found.append(arrange(_drop(side, p), other + ((-c, x),)))
    found.extend(arrange(_combine(side, i, j), other) for i in range(len(side))
                 for j in range(i + 1, len(side)) if side[i][1] == side[j][1])
  return found


def check_proof(statement: str, proof: str, limits: graph.Limits) -> tuple[bool, str]:
  """(True, "valid") or (False, why), naming the first illegal step (numbered from 1)."""
  ok, why = well_formed(statement, limits)
  if not ok:
    return False, f"statement {statement!r} is not well formed: {why}"
  if not proof:
    return False, "empty proof"
  if len(proof) > limits.proof_len:
    return False, f"proof longer than {limits.proof_len} characters"
  lines = proof.split(";")
  if len(lines) > limits.max_lines:
    return False, f"{len(lines)} steps, more than {limits.max_lines}"
  current = parse_equation(statement, limits)[0]
  for number, line in enumerate(lines, 1):
    where = f"step {number} {line!r}"
    final = _FINAL.fullmatch(line)
    if final:
      q = int(final.group(1))
      if abs(q) > limits.number_bound:
        return False, f"{where}: a number above {limits.number_bound}"
      if number != len(lines):
        return False, f"{where}: 'x=q' must be the last step"
      if divide(current) != q:
        return False, f"{where}: not R3 (divide 'kx=m' by k) of {render(current)!r}"
      return True, "valid"
    equation, why = parse_equation(line, limits)
    if equation is None:
      return False, f"{where}: malformed: {why}"
    if equation not in legal_steps(current):
      return False, f"{where}: not one legal rewrite of {render(current)!r}"
    current = equation
  return False, f"the last step {lines[-1]!r} is not 'x=q'"


def _canonical_lines(equation: Equation) -> list[str]:
  """Right x-terms to the left, left constants to the right, combine pairwise, divide."""
  lines = []
  def go(new: Equation):
    nonlocal equation
    equation = new
    lines.append(render(new))
  while any(x for _, x in equation.right):
    p = next(p for p, (_, x) in enumerate(equation.right) if x)
    go(Equation(equation.left + ((-equation.right[p][0], True),), _drop(equation.right, p)))
  while any(not x for _, x in equation.left):
    p = next(p for p, (_, x) in enumerate(equation.left) if not x)
    go(Equation(_drop(equation.left, p), equation.right + ((-equation.left[p][0], False),)))
  while len(equation.left) > 1:
    go(Equation(_combine(equation.left, 0, 1), equation.right))
  while len(equation.right) > 1:
    go(Equation(equation.left, _combine(equation.right, 0, 1)))
  q = divide(equation)
  if q is None:
    raise ValueError(f"{render(equation)!r} has no integer solution (cannot end with 'x=q').")
  return lines + [f"x={q}"]


def _parse_or_raise(statement: str, limits: graph.Limits) -> Equation:
  equation, why = parse_equation(statement, limits)
  if equation is None:
    raise ValueError(f"statement {statement!r} does not parse: {why}.")
  return equation


def reference_proof(statement: str, limits: graph.Limits) -> str:
  """The canonical proof of a statement with an integer solution (see `_canonical_lines`)."""
  return ";".join(_canonical_lines(_parse_or_raise(statement, limits)))


def random_legal_proof(statement: str, rng: np.random.Generator, limits: graph.Limits,
                       wander: float = 0.15) -> str:
  """A random legal proof: random steps that make progress, a share `wander` of any legal step.

  Progress = fewer terms or fewer misplaced ones (x-terms right, constants left);
  it may exceed max_proof_steps (the checkers then reject it).
  """
  equation, lines = _parse_or_raise(statement, limits), []
  potential = lambda e: len(e.left) + len(e.right) + sum(x for _, x in e.right) + sum(
      not x for _, x in e.left)
  for _ in range(4 * limits.max_lines):
    if divide(equation) is not None:
      return ";".join(lines + [f"x={divide(equation)}"])
    options = legal_steps(equation)
    progress = [e for e in options if potential(e) < potential(equation)]
    pool = options if rng.random() < wander or not progress else progress
    equation = pool[int(rng.integers(len(pool)))]
    lines.append(render(equation))
  return ";".join(lines + _canonical_lines(equation))
