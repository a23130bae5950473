"""Text verifiers: number extraction, numeric and exact matching, and loading by name."""

import pytest

from selfimprove.tasks.text_verifiers import (
    BUILTIN_VERIFIERS, exact_match, extract_final_number, load_verifier, normalize_text,
    numeric_match, verifier_name)

NOT_CALLABLE = 42


def always_one(completion: str, example: dict) -> float:
  """A user verifier for the 'module:function' form."""
  return 1.0


def _example(answer: str) -> dict:
  return {"prompt": "What is it?", "answer": answer}


@pytest.mark.parametrize("text, expected", [
    ("42", "42"),
    ("The answer is 46.", "46"),
    ("The answer is 46.5.", "46.5"),
    ("x = -4", "-4"),
    ("so we get (-4)", "-4"),
    ("\u22127 degrees", "-7"),
    ("+46", "46"),
    ("046", "46"),
    ("46.0", "46"),
    ("2.50", "2.5"),
    ("2.5", "2.5"),
    ("-0", "0"),
    ("-0.0", "0"),
    ("1000", "1000"),
    ("1,000,000", "1000000"),
    ("It costs $1,200.50 in total", "1200.5"),
    ("$-5", "-5"),
    ("a refund of -$5", "-5"),
    ("45%", "45"),
    ("3-4", "4"),
    ("pages 10-20 of the book", "20"),
    ("a-4", "4"),
    ("1,2", "2"),
    ("3,4", "4"),
    ("1,2345", "2345"),
    ("1,234 apples, 56 pears", "56"),
    (".5", "0.5"),
    ("about .75 of it", "0.75"),
    ("-.5", "-0.5"),
    ("no number here", None),
    ("", None),
    ("step 1: 3 + 4 = 7\n#### 7", "7"),
    ("#### 42", "42"),
    ("####42", "42"),
    ("#### 1,234", "1234"),
    ("#### -3 then 9 more", "-3"),
    ("#### 5 ... #### 6", "6"),
    ("#### 5 #### none", None),
    ("12345678901234567890123456789012345", "12345678901234567890123456789012345"),
    ("0.000000000000000000000000000000001", "0.000000000000000000000000000000001"),
])
def test_extract_final_number(text, expected):
  assert extract_final_number(text) == expected


@pytest.mark.parametrize("completion, answer, expected", [
    ("The answer is 42.", "Janet has 40 + 2 = 42 eggs.\n#### 42", 1.0),
    ("42.0", "#### 42", 1.0),
    ("So she pays $1,200.", "#### 1200", 1.0),
    ("#### 42", "42", 1.0),
    ("\u221242", "-42", 1.0),
    ("-42", "#### 42", 0.0),
    ("41", "#### 42", 0.0),
    ("I don't know", "#### 42", 0.0),
    ("", "42", 0.0),
    ("4.2", "42", 0.0),
])
def test_numeric_match(completion, answer, expected):
  assert numeric_match(completion, _example(answer)) == expected


def test_numeric_match_rejects_reference_without_number():
  with pytest.raises(ValueError, match=r"'forty-two'.*holds no number.*exact_match"):
    numeric_match("42", _example("forty-two"))


@pytest.mark.parametrize("completion, answer, expected", [
    ("Paris", "Paris", 1.0),
    ("  paris.  ", "Paris", 1.0),
    ('"Paris."', "Paris", 1.0),
    ("New   York\ncity!", "new york city", 1.0),
    ("STRASSE", "stra\u00dfe", 1.0),   # casefold, not lower
    ("Paris, France", "Paris", 0.0),
    ("London", "Paris", 0.0),
    ("", "Paris", 0.0),
])
def test_exact_match(completion, answer, expected):
  assert exact_match(completion, _example(answer)) == expected


def test_normalize_text():
  assert normalize_text("  \u201cHello,\t World?!\u201d ") == "hello, world"
  assert normalize_text("3.14") == "3.14"


def test_load_verifier_builtins():
  assert load_verifier("exact_match") is exact_match
  assert load_verifier("numeric") is numeric_match
  assert set(BUILTIN_VERIFIERS) == {"exact_match", "numeric"}


def test_load_verifier_module_function():
  fn = load_verifier("tests.tasks.test_text_verifiers:always_one")
  assert fn("anything", _example("1")) == 1.0
  assert verifier_name(fn) == "tests.tasks.test_text_verifiers:always_one"


@pytest.mark.parametrize("spec, message", [
    ("numerik", r"Unknown verifier 'numerik'.*'exact_match', 'numeric'.*'module:function'"),
    ("no_such_module_xyz:fn", r"cannot import module 'no_such_module_xyz'.*No module named"),
    ("tests.tasks.test_text_verifiers:missing", r"has no attribute 'missing'"),
    ("tests.tasks.test_text_verifiers:NOT_CALLABLE", r"NOT_CALLABLE is not callable \(type int\)"),
    ("tests.tasks.test_text_verifiers:", r"not of the form 'module:function'"),
    (":always_one", r"not of the form 'module:function'"),
    ("tests.tasks.test_text_verifiers:always_one.x", r"not of the form 'module:function'"),
])
def test_load_verifier_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    load_verifier(spec)


def test_verifier_name():
  assert verifier_name(numeric_match) == "selfimprove.tasks.text_verifiers:numeric_match"
  assert verifier_name(NOT_CALLABLE) == "42"
