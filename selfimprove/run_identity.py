"""What defines a run, saved in every checkpoint and compared when a workdir is relaunched.

A relaunch in the same workdir continues the same run. It may change how the
run is carried out (the fields in RELAUNCH_MAY_CHANGE: the number of steps, the
log/eval/checkpoint intervals, the mesh, eval batching, remat, scanned or unrolled layers); every other
config field defines the run (model, task, data settings, tokenizer, pipeline,
optimizer, seeds), and so does the data itself (a fingerprint of every
example's text). A relaunch that changes any of them is refused in one line
naming the fields, before anything is written or restored.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable

import ml_collections

# Dotted config names (a section name covers its fields) that a relaunch may change.
RELAUNCH_MAY_CHANGE = (
    "train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.async_checkpoints", "train.steps_per_call",
    "train.max_consecutive_skips", "train.eval_at_start", "mesh", "eval.batch_size",
    "model.remat", "model.scan_layers",
    # A finished warm start is not run again; its own workdir checks its own config.
    "warm_start")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def _may_change(name: str) -> bool:
  return any(name == allowed or name.startswith(allowed + ".") for allowed in RELAUNCH_MAY_CHANGE)


def run_identity(config: ml_collections.ConfigDict, data_fingerprint: str) -> dict[str, Any]:
  """The JSON-safe record saved with each checkpoint: the resolved config and the data's hash."""
  return {"config": json.loads(config.to_json_best_effort()), "data_fingerprint": data_fingerprint}


def fingerprint_examples(examples: Iterable[dict]) -> str:
  """sha256 over every example's prompt and answer, in order (the data a run trains on)."""
  digest = hashlib.sha256()
  for example in examples:
    digest.update(example["prompt"].encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update(example["answer"].encode("utf-8", "surrogatepass"))
    digest.update(b"\x01")
  return digest.hexdigest()


def _short(value: Any) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + "..."


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """'field: saved -> current' for every defining field that differs (sorted by name)."""
  old, new = _flatten(saved["config"]), _flatten(current["config"])
  changed = [f"{name}: {_short(old.get(name))} -> {_short(new.get(name))}"
             for name in sorted(set(old) | set(new))
             if not _may_change(name) and old.get(name) != new.get(name)]
  if saved.get("data_fingerprint") != current.get("data_fingerprint"):
    changed.append("the training/eval examples (their text differs from the checkpoint's)")
  return changed


def refusal(checkpoint_dir: str, step: int, changed: list[str]) -> str:
  """The one-line message for a relaunch that would change what defines the run."""
  shown = "; ".join(changed[:8]) + (f"; and {len(changed) - 8} more" if len(changed) > 8 else "")
  return (f"{os.path.dirname(checkpoint_dir)} holds a run (checkpoint step {step}) with other "
          f"settings: {shown}. A relaunch may change only {', '.join(RELAUNCH_MAY_CHANGE[:-1])}; "
          f"start a new run with another --workdir (or move this one aside).")


def write_launch_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Writes DIR/config.json (the run's first launch) or keeps it and adds DIR/config.<n>.json.

  Never overwrites: the first launch's config stays in config.json, each relaunch
  adds the next numbered file, so the history of a run's launches is kept.
  """
  path = os.path.join(workdir, "config.json")
  number = 1
  while os.path.exists(path):
    number += 1
    path = os.path.join(workdir, f"config.{number}.json")
  with open(path, "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  return path
