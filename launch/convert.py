"""Converts a Hugging Face model folder to an Orbax checkpoint, and back.

    # HF -> Orbax (what a trainer's init_from reads):
    python launch/convert.py --hf_dir=/ckpt/Qwen2.5-0.5B --orbax_dir=/ckpt/qwen-orbax
    # Orbax -> HF (after training; tokenizer files copied from --tokenizer_dir):
    python launch/convert.py --to=hf --orbax_dir=/runs/x/params --hf_dir=/out/qwen-improved \
        --tokenizer_dir=/ckpt/Qwen2.5-0.5B

The Orbax side is `selfimprove.models.save_orbax_params`; it also stores the
source config.json, so converting back reproduces the family and token ids,
and keeps the tokenizer files in ORBAX_DIR/tokenizer, so a run with
`init_from=ORBAX_DIR` uses the model's own tokenizer without further flags.
A trained run's DIR/params carries its tokenizer the same way, so `--to=hf`
needs no --tokenizer_dir for it. LoRA adapters are merged into the exported weights.

The output directory (--orbax_dir for --to=orbax, --hf_dir for --to=hf) must
be new or empty unless --overwrite is given: an --orbax_dir pointing at a
run's DIR/params would otherwise replace its trained weights. Everything is
read before anything is written, and an output directory this command
created is removed again if the conversion fails. Errors are one line on
stderr: exit code 2 for a mistake in the flags or inputs (a wrong path, an
unsupported model), 1 for a fault (an unreadable or corrupt file).
"""

from __future__ import annotations

import os
import shutil
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from selfimprove.models.config import TransformerConfig  # noqa: E402
from selfimprove.models.hf import (UnreadableFileError, load_hf, read_hf_config,  # noqa: E402
                                   save_hf)
from selfimprove.models.orbax_params import (CONFIG_FILE, PARAMS_DIR,  # noqa: E402
                                             load_orbax_params, read_orbax_metadata,
                                             save_orbax_params)
from selfimprove.run_tokenizer import (SAVED_DIR, SPEC_FILE, copy_hf_tokenizer_files,  # noqa: E402
                                       has_tokenizer)

_TO = flags.DEFINE_enum("to", "orbax", ["orbax", "hf"], "Direction of the conversion.")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face model folder (read or written).",
                              required=True)
_ORBAX_DIR = flags.DEFINE_string("orbax_dir", None, "Orbax params directory (written or read).",
                                 required=True)
_TOKENIZER_DIR = flags.DEFINE_string(
    "tokenizer_dir", None, "--to=hf: copy tokenizer files (and use config.json as template) from "
    "here (default: ORBAX_DIR/tokenizer when it holds a Hugging Face tokenizer).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                           "--to=orbax: parameter dtype (default: as stored).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Write into a non-empty output directory (--orbax_dir for --to=orbax, "
    "--hf_dir for --to=hf), replacing the model it holds.")


def _is_within(path: str, folder: str) -> bool:
  """Whether `path` is `folder` or lies under it (symlinks resolved)."""
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return path == folder or path.startswith(folder + os.sep)


def hf_to_orbax(hf_dir: str, orbax_dir: str, dtype: str | None = None) -> None:
  """Imports hf_dir and saves it (params, config and the source config.json) under orbax_dir.

  The whole model is read (and checked) before orbax_dir is touched. A
  tokenizer saved there before (an overwritten model's) is replaced by
  hf_dir's, or removed when hf_dir has none, so it never outlives its model.
  """
  _, family, hf_config = read_hf_config(hf_dir)
  config, _, params = load_hf(hf_dir, dtype=dtype)
  save_orbax_params(orbax_dir, config, params,
                    metadata={"hf_family": family, "hf_config": hf_config})
  saved = os.path.join(orbax_dir, SAVED_DIR)
  if os.path.isdir(saved) and not _is_within(hf_dir, saved):
    shutil.rmtree(saved)
  if has_tokenizer(hf_dir):
    copy_hf_tokenizer_files(hf_dir, saved)


def check_saved_model(orbax_dir: str) -> None:
  """Raises a ValueError naming orbax_dir unless it holds a model saved by save_orbax_params."""
  if not os.path.isdir(orbax_dir):
    what = "is not a directory" if os.path.exists(orbax_dir) else "does not exist"
    raise ValueError(f"{orbax_dir} {what}; --orbax_dir must be a model saved by "
                     f"launch/convert.py or a run's DIR/params.")
  if (not os.path.exists(os.path.join(orbax_dir, CONFIG_FILE))
      and os.path.exists(os.path.join(orbax_dir, PARAMS_DIR, CONFIG_FILE))):
    params = os.path.join(orbax_dir, PARAMS_DIR)
    raise ValueError(f"{orbax_dir} holds no {CONFIG_FILE} but {PARAMS_DIR}/ does: it looks "
                     f"like a run's directory; pass --orbax_dir={params}.")
  # Names model_config.json when it is missing, malformed or describes no valid model.
  config_path = os.path.join(orbax_dir, CONFIG_FILE)
  try:
    TransformerConfig.from_dict(read_orbax_metadata(orbax_dir)["transformer_config"], config_path)
  except (TypeError, ValueError) as error:
    message = str(error)
    raise ValueError(message if config_path in message else f"{config_path}: {message}") from None
  params = os.path.join(orbax_dir, PARAMS_DIR)
  if not os.path.isdir(params):
    raise ValueError(f"{params} does not exist; {orbax_dir} has {CONFIG_FILE} but no saved "
                     f"parameters, so it is not a complete model saved by launch/convert.py.")


def orbax_to_hf(orbax_dir: str, hf_dir: str, tokenizer_dir: str | None = None) -> None:
  """Exports an Orbax params checkpoint as an HF folder (LoRA merged).

  Raises UnreadableFileError naming ORBAX_DIR/params when the saved arrays
  cannot be restored (a truncated or damaged checkpoint).
  """
  check_saved_model(orbax_dir)
  metadata = read_orbax_metadata(orbax_dir)
  saved = os.path.join(orbax_dir, SAVED_DIR)
  if tokenizer_dir is None and has_tokenizer(saved) and not os.path.exists(
      os.path.join(saved, SPEC_FILE)):
    tokenizer_dir = saved
  elif tokenizer_dir is not None and not os.path.isdir(tokenizer_dir):
    what = "is not a directory" if os.path.exists(tokenizer_dir) else "does not exist"
    raise ValueError(f"--tokenizer_dir={tokenizer_dir} {what}.")
  try:
    config, _, params = load_orbax_params(orbax_dir)
  except (ValueError, OSError) as error:   # tensorstore reports damaged arrays as ValueError
    path, message = os.path.join(orbax_dir, PARAMS_DIR), str(error)
    message = message.removeprefix(f"{os.path.abspath(path)}: ")
    raise UnreadableFileError(f"{path}: the saved parameters cannot be restored (damaged or "
                              f"incomplete checkpoint?): {_short(message, 300)}") from None
  save_hf(hf_dir, config, params, tokenizer_folder=tokenizer_dir,
          hf_config=metadata.get("hf_config"), family=metadata.get("hf_family"))


def check_output_dir(path: str, flag: str, overwrite: bool) -> None:
  """Refuses (ValueError naming the flag and path) an output directory that is not new or empty."""
  if not os.path.exists(path):
    return
  if not os.path.isdir(path):
    raise ValueError(f"--{flag}={path} exists and is not a directory.")
  entries = sorted(os.listdir(path))
  if entries and not overwrite:
    shown = ", ".join(entries[:4]) + (f", ... ({len(entries)} entries)" if len(entries) > 4 else "")
    raise ValueError(f"--{flag}={path} is not empty ({shown}): converting into it would replace "
                     f"the model it holds (e.g. a run's trained weights). Pass --overwrite to "
                     f"replace it, or choose a new or empty directory.")


def _short(message: str, limit: int = 600) -> str:
  """One line of at most `limit` characters (tensorstore appends its whole JSON spec)."""
  message = " ".join(message.split(" [tensorstore_spec")[0].split())
  return message if len(message) <= limit else message[:limit - 3] + "..."


def _remove_created(path: str, entries_before: list[str] | None) -> None:
  """After a failed conversion: removes what this command created under the output `path`."""
  if entries_before is None:
    shutil.rmtree(path, ignore_errors=True)
  elif not entries_before and os.path.isdir(path):
    for name in os.listdir(path):
      target = os.path.join(path, name)
      if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target, ignore_errors=True)
      else:
        os.remove(target)


def _ignore_closed_event_loop(unraisable) -> None:
  # A failed Orbax restore leaves tensorstore callbacks aimed at its closed asyncio loop; each
  # prints "RuntimeError: Event loop is closed" with a traceback. The failure itself is reported.
  if not (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed"):
    sys.__unraisablehook__(unraisable)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with mistakes reported in one line (exit 2) instead of absl's two."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    print(f"Error: {error}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)   # Orbax logs each save and restore step at INFO
  sys.unraisablehook = _ignore_closed_event_loop
  to_orbax = _TO.value == "orbax"
  out, flag = (_ORBAX_DIR.value, "orbax_dir") if to_orbax else (_HF_DIR.value, "hf_dir")
  entries_before = None
  try:
    if to_orbax:
      read_hf_config(_HF_DIR.value)   # a wrong --hf_dir is reported before the output is judged
    else:
      check_saved_model(_ORBAX_DIR.value)
    check_output_dir(out, flag, _OVERWRITE.value)
    entries_before = sorted(os.listdir(out)) if os.path.isdir(out) else None
    try:
      if to_orbax:
        hf_to_orbax(_HF_DIR.value, _ORBAX_DIR.value, _DTYPE.value)
      else:
        orbax_to_hf(_ORBAX_DIR.value, _HF_DIR.value, _TOKENIZER_DIR.value)
    except BaseException:
      if not entries_before:   # new or empty before: leave it as it was, so a retry is not refused
        _remove_created(out, entries_before)
      raise
  except UnreadableFileError as error:   # a ValueError, but a fault, not a mistake in the flags
    _fail(error, 1)
  except ValueError as error:
    _fail(error, 2)
  except OSError as error:
    _fail(error, 1)
  print(f"Wrote {out}")


def _fail(error: Exception, code: int) -> None:
  """Reports `error` as one line on stderr and exits with `code`."""
  print(f"Error: {_short(str(error))}", file=sys.stderr)
  sys.stderr.flush()
  sys.exit(code)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
