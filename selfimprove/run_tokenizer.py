"""The run's tokenizer: chosen by `config.tokenizer`, saved with the model, found again from it.

Kinds:
  "char": one id per character of an alphabet (default: the task's), ids 0/1/2
          = pad/bos/eos. Small vocabularies for models trained from scratch.
  "byte": UTF-8 bytes (vocab 259).
  "hf":   a Hugging Face tokenizer folder (tokenizer.json or tokenizer.model).
  "auto": the tokenizer saved with `init_from` if it has one (launch/convert.py
          keeps the HF model's tokenizer files; every run saves its own beside
          DIR/params), else "char" over the task's alphabet, else "byte".

A saved tokenizer lives in `<model dir>/tokenizer/`: the HF files, or
`selfimprove_tokenizer.json` ({"kind": "char", "alphabet": ...} or {"kind": "byte"}).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

from selfimprove.tokenizers import ByteTokenizer, CharTokenizer, Tokenizer

KINDS = ("auto", "char", "byte", "hf")
SAVED_DIR = "tokenizer"
SPEC_FILE = "selfimprove_tokenizer.json"
# What a Hugging Face tokenizer needs (config.json: stop ids some models only list there).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                      "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                      "chat_template.json", "generation_config.json", "vocab.json", "merges.txt",
                      "config.json")


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
  """Which tokenizer a run uses (see the module docstring); `config.tokenizer` fills it.

  Attributes:
    kind: "auto", "char", "byte" or "hf".
    alphabet: "char": its characters ("" = the task's alphabet).
    path: "hf": the folder ("" = the tokenizer saved with init_from).
    chat_template: "hf": wrap each prompt as a user message with the folder's chat template.
    system_prompt: with chat_template, an optional system message before it.
  """

  kind: str = "auto"
  alphabet: str = ""
  path: str = ""
  chat_template: bool = False
  system_prompt: str = ""

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"kind={self.kind!r}: expected one of {KINDS}.")
    if self.path and self.kind not in ("hf", "auto"):
      raise ValueError(f"path={self.path!r} is only read with kind='hf' (got kind={self.kind!r}).")
    if self.system_prompt and not self.chat_template:
      raise ValueError("system_prompt is only used with chat_template=True.")


def has_tokenizer(folder: str) -> bool:
  """Whether `folder` holds a tokenizer: ours (SPEC_FILE) or a Hugging Face one."""
  return any(os.path.exists(os.path.join(folder, name))
             for name in (SPEC_FILE, "tokenizer.json", "tokenizer.model"))


def _saved_folder(init_from: str) -> str | None:
  folder = os.path.join(init_from, SAVED_DIR) if init_from else ""
  return folder if folder and has_tokenizer(folder) else None


def _load_saved(folder: str) -> Tokenizer:
  spec_path = os.path.join(folder, SPEC_FILE)
  if not os.path.exists(spec_path):
    from selfimprove.models.hf_tokenizer import load_tokenizer  # the [hf] extra
    return load_tokenizer(folder)
  with open(spec_path) as f:
    saved = json.load(f)
  if saved.get("kind") == "char":
    return CharTokenizer(saved["alphabet"])
  if saved.get("kind") == "byte":
    return ByteTokenizer()
  raise ValueError(f"{spec_path}: unknown tokenizer kind {saved.get('kind')!r}.")


def build_tokenizer(spec: TokenizerSpec, task_alphabet: str | None, init_from: str = ""
                    ) -> tuple[Tokenizer, str]:
  """(tokenizer, a one-line description of where it came from) for a run."""
  kind = spec.kind
  saved = _saved_folder(init_from)
  if kind == "auto":
    if saved:
      return _load_saved(saved), f"saved with init_from ({saved})"
    kind = "char" if task_alphabet else "byte"
  if kind == "char":
    alphabet = spec.alphabet or task_alphabet
    if not alphabet:
      raise ValueError("kind='char' needs an alphabet: the task has none (open text); set "
                       "alphabet, or use kind='byte' or 'hf'.")
    return CharTokenizer(alphabet), f"characters {alphabet!r}"
  if kind == "byte":
    return ByteTokenizer(), "UTF-8 bytes"
  path = spec.path or saved
  if not path:
    raise ValueError("kind='hf' needs path= a Hugging Face tokenizer folder (or an init_from "
                     "saved by launch/convert.py, which keeps its tokenizer).")
  if not os.path.isdir(path):
    raise ValueError(f"path={path!r} is not a folder.")
  from selfimprove.models.hf_tokenizer import load_tokenizer  # the [hf] extra
  return load_tokenizer(path), f"Hugging Face tokenizer in {path}"


def save_tokenizer(tokenizer: Tokenizer, model_dir: str) -> None:
  """Writes `tokenizer` to `<model_dir>/tokenizer/` so that an `init_from` of model_dir finds it."""
  folder = os.path.join(model_dir, SAVED_DIR)
  os.makedirs(folder, exist_ok=True)
  if isinstance(tokenizer, (CharTokenizer, ByteTokenizer)):
    spec = ({"kind": "char", "alphabet": tokenizer.alphabet} if isinstance(tokenizer, CharTokenizer)
            else {"kind": "byte"})
    with open(os.path.join(folder, SPEC_FILE), "w") as f:
      json.dump(spec, f)
    return
  copy_hf_tokenizer_files(tokenizer.folder, folder)


def copy_hf_tokenizer_files(source: str, destination: str) -> list[str]:
  """Copies a Hugging Face folder's tokenizer files (those that exist); returns their names."""
  os.makedirs(destination, exist_ok=True)
  copied = []
  for name in HF_TOKENIZER_FILES:
    path = os.path.join(source, name)
    target = os.path.join(destination, name)
    if os.path.exists(path) and os.path.abspath(path) != os.path.abspath(target):
      shutil.copyfile(path, target)
      copied.append(name)
  return copied


def stop_token_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
  """Every id that ends a completion: eos, plus an HF folder's other end-of-turn ids."""
  ids = tuple(getattr(tokenizer, "stop_ids", ()) or ())
  if tokenizer.eos_id is not None and tokenizer.eos_id not in ids:
    ids = (tokenizer.eos_id,) + ids
  if not ids:
    raise ValueError("The tokenizer has no end-of-sequence token: completions could never stop.")
  return ids
