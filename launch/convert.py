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
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from selfimprove.models.hf import load_hf, read_hf_config, save_hf  # noqa: E402
from selfimprove.models.orbax_params import (load_orbax_params, read_orbax_metadata,  # noqa: E402
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


def hf_to_orbax(hf_dir: str, orbax_dir: str, dtype: str | None = None) -> None:
  """Imports hf_dir and saves it (params, config and the source config.json) under orbax_dir."""
  _, family, hf_config = read_hf_config(hf_dir)
  config, _, params = load_hf(hf_dir, dtype=dtype)
  save_orbax_params(orbax_dir, config, params,
                    metadata={"hf_family": family, "hf_config": hf_config})
  if has_tokenizer(hf_dir):
    copy_hf_tokenizer_files(hf_dir, os.path.join(orbax_dir, SAVED_DIR))


def orbax_to_hf(orbax_dir: str, hf_dir: str, tokenizer_dir: str | None = None) -> None:
  """Exports an Orbax params checkpoint as an HF folder (LoRA merged)."""
  metadata = read_orbax_metadata(orbax_dir)
  saved = os.path.join(orbax_dir, SAVED_DIR)
  if tokenizer_dir is None and has_tokenizer(saved) and not os.path.exists(
      os.path.join(saved, SPEC_FILE)):
    tokenizer_dir = saved
  config, _, params = load_orbax_params(orbax_dir)
  save_hf(hf_dir, config, params, tokenizer_folder=tokenizer_dir,
          hf_config=metadata.get("hf_config"), family=metadata.get("hf_family"))


def main(argv):
  del argv
  if _TO.value == "orbax":
    hf_to_orbax(_HF_DIR.value, _ORBAX_DIR.value, _DTYPE.value)
  else:
    orbax_to_hf(_ORBAX_DIR.value, _HF_DIR.value, _TOKENIZER_DIR.value)
  print(f"Wrote {_ORBAX_DIR.value if _TO.value == 'orbax' else _HF_DIR.value}")


if __name__ == "__main__":
  app.run(main)
