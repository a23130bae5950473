"""Host-side reward functions of decoded completion text, in the style of TRL reward functions.

Every verifier is `fn(completion: str, example: dict) -> float`: `completion` is the decoded
text, `example` a training record with at least "prompt" and "answer" (the reference); it
returns 1.0 for a correct completion and 0.0 otherwise. These run in plain Python on the
host, after decoding; in-graph verifiers live with their tasks (e.g. `arithmetic.py`).

`load_verifier` turns a config string into a verifier: a name in `BUILTIN_VERIFIERS` or
"module:function" for a user's own.
"""

from __future__ import annotations

import decimal
import importlib
import re
from typing import Callable

Verifier = Callable[[str, dict], float]

_SENTENCE_END = ".!?"
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
_GSM8K_MARKER = "####"
# A sign counts only where it cannot be a hyphen or minus between operands ("3-4", "a-4").
# A comma separates thousands only before exactly three digits ("1,234" but "3,4" and "1,2345").
# A currency sign may sit between sign and digits ("-$5").
# The decimal part needs digits after the point, so a sentence-final period is left out ("46.").
_NUMBER = re.compile(
    r"(?:(?<![\w.])(?P<sign>[-+\u2212])[$\u20ac\u00a3]?)?"
    r"(?<![0-9])(?P<body>[0-9]+(?:,[0-9]{3}(?![0-9]))*(?:\.[0-9]+)?|\.[0-9]+)")


def normalize_text(text: str) -> str:
  """Casefolds, collapses whitespace, strips trailing . ! ? and surrounding quotes."""
  text = " ".join(text.casefold().split())
  previous = None
  while text != previous:   # '"Paris."' and 'Paris".' both need two passes
    previous = text
    text = text.rstrip(_SENTENCE_END).strip().strip(_QUOTES).strip()
  return text


def exact_match(completion: str, example: dict) -> float:
  """1.0 iff the completion equals example["answer"] after `normalize_text`."""
  return float(normalize_text(completion) == normalize_text(example["answer"]))


def _canonical_number(sign: str | None, body: str) -> str:
  """'-', '1,200.50' -> '-1200.5': no separators, leading or trailing zeros, '+' or '-0'."""
  value = decimal.Decimal(body.replace(",", ""))
  if value == 0:
    return "0"
  digits = format(value, "f")   # exact, never exponent notation (unlike normalize())
  if "." in digits:
    digits = digits.rstrip("0").rstrip(".")
  return ("-" if sign in ("-", "\u2212") else "") + digits


def extract_final_number(text: str) -> str | None:
  """The final numeric answer of `text` as a canonical decimal string, or None.

  After the last "####" (GSM8K style), the first number there; otherwise the last number in
  the text. Currency and percent signs are ignored: "$1,200.50" -> "1200.5", "45%" -> "45".
  """
  if _GSM8K_MARKER in text:
    match = _NUMBER.search(text.rsplit(_GSM8K_MARKER, 1)[1])
  else:
    matches = list(_NUMBER.finditer(text))
    match = matches[-1] if matches else None
  if match is None:
    return None
  return _canonical_number(match["sign"], match["body"])


def numeric_match(completion: str, example: dict) -> float:
  """1.0 iff the completion's final number equals that of example["answer"].

  Raises:
    ValueError: the reference answer holds no number (a data error, not a wrong completion).
  """
  reference = extract_final_number(example["answer"])
  if reference is None:
    raise ValueError(
        f"numeric verifier: the reference answer {example['answer']!r} (prompt "
        f"{example.get('prompt', '')[:80]!r}) holds no number; fix the data set or use "
        f"the 'exact_match' verifier.")
  return float(extract_final_number(completion) == reference)


BUILTIN_VERIFIERS: dict[str, Verifier] = {"exact_match": exact_match, "numeric": numeric_match}


def load_verifier(spec: str) -> Verifier:
  """The verifier named by `spec`: a key of BUILTIN_VERIFIERS or "module:function".

  Raises:
    ValueError: unknown builtin, module not importable, function missing or not callable.
  """
  if ":" not in spec:
    if spec in BUILTIN_VERIFIERS:
      return BUILTIN_VERIFIERS[spec]
    raise ValueError(
        f"Unknown verifier {spec!r}; builtins are {sorted(BUILTIN_VERIFIERS)}, or give your "
        f"own as 'module:function' (e.g. 'my_package.rewards:is_correct').")
  module_name, _, attribute = spec.partition(":")
  if not module_name or not attribute or "." in attribute or ":" in attribute:
    raise ValueError(
        f"Verifier {spec!r} is not of the form 'module:function' (one module path, one "
        f"top-level function name, e.g. 'my_package.rewards:is_correct').")
  try:
    module = importlib.import_module(module_name)
  except ImportError as error:
    raise ValueError(
        f"Verifier {spec!r}: cannot import module {module_name!r}: {error}") from error
  if not hasattr(module, attribute):
    raise ValueError(
        f"Verifier {spec!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) has "
        f"no attribute {attribute!r}.")
  fn = getattr(module, attribute)
  if not callable(fn):
    raise ValueError(
        f"Verifier {spec!r}: {module_name}.{attribute} is not callable (type "
        f"{type(fn).__name__}); give a fn(completion: str, example: dict) -> float.")
  return fn


def verifier_name(fn: Callable) -> str:
  """'module:qualname' of a verifier, for error messages; repr() for objects without them."""
  module = getattr(fn, "__module__", None)
  qualname = getattr(fn, "__qualname__", None)
  if module is None or qualname is None:
    return repr(fn)
  return f"{module}:{qualname}"
