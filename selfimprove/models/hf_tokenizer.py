"""Hugging Face tokenizers behind the library's `Tokenizer` protocol, with chat templates.

    tokenizer = load_tokenizer("/ckpt/Qwen2.5-0.5B-Instruct")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}],
                                         add_generation_prompt=True)
    ids = tokenizer.encode(text)

`tokenizer.json` is read with the `tokenizers` library, `tokenizer.model`
with `sentencepiece` (tokenizer.json wins when a folder has both). Special
tokens come from the folder, most specific first: tokenizer_config.json,
special_tokens_map.json, generation_config.json, config.json (and, for
SentencePiece, the model's own ids). `stop_ids` gathers every end-of-sequence
id (instruct models often have several) for the sampler's stop_token_ids.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any, Mapping, Sequence


def _read_json(path: str) -> dict[str, Any]:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}.") from None


def _token_text(value: Any) -> str | None:
  """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
  if value is None:
    return []
  return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


class _TokenizersBackend:
  """tokenizer.json through the `tokenizers` library."""

  def __init__(self, path: str):
    import tokenizers  # the [hf] extra; imported only when used
    self.tokenizer = tokenizers.Tokenizer.from_file(path)
    self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int], skip: set[int]) -> str:
    return self.tokenizer.decode([i for i in ids if i not in skip], skip_special_tokens=True)

  def token_to_id(self, token: str) -> int | None:
    return self.tokenizer.token_to_id(token)

  def model_special_ids(self) -> dict[str, int | None]:
    return {}


class _SentencePieceBackend:
  """tokenizer.model through `sentencepiece`."""

  def __init__(self, path: str):
    import sentencepiece  # the [hf] extra; imported only when used
    self.processor = sentencepiece.SentencePieceProcessor(model_file=path)
    self.vocab_size = self.processor.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self.processor.encode(text)

  def decode(self, ids: Sequence[int], skip: set[int]) -> str:
    return self.processor.decode([i for i in ids if i not in skip])

  def token_to_id(self, token: str) -> int | None:
    piece_id = self.processor.piece_to_id(token)
    # piece_to_id answers unk for unknown pieces; only the unk piece itself maps there.
    if piece_id == self.processor.unk_id() and token != self.processor.id_to_piece(piece_id):
      return None
    return piece_id

  def model_special_ids(self) -> dict[str, int | None]:
    p = self.processor
    return {name: (i if i >= 0 else None) for name, i in
            [("bos", p.bos_id()), ("eos", p.eos_id()), ("pad", p.pad_id()), ("unk", p.unk_id())]}


class HFTokenizer:
  """A Hugging Face tokenizer folder as a `selfimprove.tokenizers.Tokenizer`."""

  def __init__(self, folder: str):
    self.folder = folder
    json_path = os.path.join(folder, "tokenizer.json")
    model_path = os.path.join(folder, "tokenizer.model")
    if os.path.exists(json_path):
      self._backend = _TokenizersBackend(json_path)
    elif os.path.exists(model_path):
      self._backend = _SentencePieceBackend(model_path)
    else:
      raise ValueError(f"{folder}: neither tokenizer.json nor tokenizer.model found.")
    self.tokenizer_config = _read_json(os.path.join(folder, "tokenizer_config.json"))
    self._resolve_special_tokens()
    self.chat_template = self._find_chat_template()

  # -- special tokens -------------------------------------------------------

  def _resolve_special_tokens(self) -> None:
    folder = self.folder
    sources = [(os.path.join(folder, "tokenizer_config.json"), self.tokenizer_config),
               (os.path.join(folder, "special_tokens_map.json"),
                _read_json(os.path.join(folder, "special_tokens_map.json")))]
    generation = _read_json(os.path.join(folder, "generation_config.json"))
    model = _read_json(os.path.join(folder, "config.json"))
    self.special_tokens: dict[str, str] = {}
    ids: dict[str, int | None] = {}
    for name in ("bos", "eos", "pad", "unk"):
      for path, source in sources:
        text = _token_text(source.get(f"{name}_token"))
        if text is None:
          continue
        token_id = self._backend.token_to_id(text)
        if token_id is None:
          raise ValueError(f"{path}: {name}_token {text!r} is not in the tokenizer's vocabulary.")
        self.special_tokens[name] = text
        ids[name] = token_id
        break
      else:
        for source in (generation, model):
          found = _ids(source.get(f"{name}_token_id"))
          if found:
            ids[name] = found[0]
            break
        else:
          ids[name] = self._backend.model_special_ids().get(name)
    self._bos, self._eos, self._unk = ids["bos"], ids["eos"], ids["unk"]
    # No pad token is common (Llama); padding is masked out, so eos (or 0) serves.
    self._pad = next(i for i in (ids["pad"], ids["eos"], 0) if i is not None)
    self.has_pad_token = ids["pad"] is not None
    stops = [self._eos] + _ids(generation.get("eos_token_id")) + _ids(model.get("eos_token_id"))
    self.stop_ids = tuple(dict.fromkeys(i for i in stops if i is not None))
    added = self.tokenizer_config.get("added_tokens_decoder", {})
    self._special_ids = {i for i in (self._bos, self._eos, ids["pad"], self._unk) if i is not None}
    self._special_ids |= {int(k) for k, v in added.items() if isinstance(v, dict) and v.get("special")}

  @property
  def vocab_size(self) -> int:
    return self._backend.vocab_size

  @property
  def pad_id(self) -> int:
    return self._pad

  @property
  def bos_id(self) -> int | None:
    return self._bos

  @property
  def eos_id(self) -> int | None:
    return self._eos

  def encode(self, text: str) -> list[int]:
    """Text to ids, without added bos/eos (special tokens written in the text are kept)."""
    return self._backend.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    """Ids to text; special ids are skipped."""
    return self._backend.decode([int(i) for i in ids], self._special_ids)

  # -- chat templates -------------------------------------------------------

  def _find_chat_template(self) -> str | None:
    template = self.tokenizer_config.get("chat_template")
    if isinstance(template, list):   # named templates: use "default"
      named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
      template = named.get("default")
    if template:
      return template
    jinja_path = os.path.join(self.folder, "chat_template.jinja")
    if os.path.exists(jinja_path):
      with open(jinja_path) as f:
        return f.read()
    return _read_json(os.path.join(self.folder, "chat_template.json")).get("chat_template")

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                          add_generation_prompt: bool = False, **variables: Any) -> str:
    """Renders the folder's chat template, as transformers' apply_chat_template(tokenize=False).

    Args:
      messages: [{"role": ..., "content": ...}, ...].
      add_generation_prompt: end with the header that starts the assistant's turn.
      **variables: extra template variables (e.g. tools=...).
    """
    if self.chat_template is None:
      raise ValueError(
          f"{self.folder}: no chat template (tokenizer_config.json 'chat_template', "
          f"chat_template.jinja or chat_template.json); format the prompt yourself.")
    special = {f"{name}_token": text for name, text in self.special_tokens.items()}
    return _compile(self.chat_template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt,
        **special, **variables)

  def encode_chat(self, messages: Sequence[Mapping[str, Any]],
                  add_generation_prompt: bool = False, **variables: Any) -> list[int]:
    """Token ids of the rendered chat (the template writes any bos itself)."""
    return self.encode(self.apply_chat_template(messages, add_generation_prompt, **variables))


_TEMPLATES: dict[str, Any] = {}


def _compile(template: str):
  """A sandboxed jinja2 template with the helpers HF chat templates expect."""
  if template not in _TEMPLATES:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
      raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
      # Jinja's own tojson escapes HTML characters, which chat templates do not want.
      return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                        sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    _TEMPLATES[template] = env.from_string(template)
  return _TEMPLATES[template]


def load_tokenizer(folder: str) -> HFTokenizer:
  """The tokenizer of a Hugging Face model folder (tokenizer.json or tokenizer.model)."""
  return HFTokenizer(folder)
