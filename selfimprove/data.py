"""Input pipelines: JSONL records, a Grain training iterator with resumable state, fixed eval batches.

The training pipeline is a Grain `MapDataset` chain (random access, so shuffling
is a deterministic permutation of indices and the iterator's state is just the
next index):

  source(records) -> shuffle(seed) -> repeat(num_epochs) -> rows of this process
  -> map(encode) -> batch(global_batch_size // process_count) -> iterator

`repeat` re-seeds the shuffle each epoch, so every epoch is a fresh permutation
that still depends only on `seed`. Process p takes rows p, p + P, p + 2P, ... of
the repeated stream, so global batch i is rows [i*G, (i+1)*G) of the stream
split over the P processes (G = global_batch_size).
"""

from __future__ import annotations

import json
from typing import Callable, Mapping, Sequence

import grain
import jax
import numpy as np

from selfimprove.problems import Problems


def read_jsonl(path: str, fields: Mapping[str, str], *, keep_all: bool = False) -> list[dict]:
  """Reads one JSON object per line, keeping `fields` under our names.

  Args:
    path: a local JSONL file.
    fields: our name -> the file's field name, e.g. {"prompt": "question",
      "answer": "solution"}.
    keep_all: also keep the line's other fields, and "source": "path:line"
      (for error messages and users' verifiers).

  Returns:
    [{our_name: value, ...}, ...] in file order. Blank lines are skipped.

  Raises:
    ValueError: "{path}:{line}: ..." for a line that is not UTF-8, not valid
      JSON, not an object, or lacks a field (line numbers are 1-based); with
      several bad lines, all of them (up to 20) in one message.
  """
  records, problems = [], Problems()
  with open(path, "rb") as f:
    for line_number, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        problems.add(f"{path}:{line_number}: not UTF-8 text (byte {raw[e.start]:#04x} at "
                     f"column {e.start + 1}).")
        continue
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        problems.add(f"{path}:{line_number}: not valid JSON ({e.msg} at column {e.colno}): "
                     f"{line.strip()[:80]!r}")
        continue
      if not isinstance(obj, dict):
        problems.add(f"{path}:{line_number}: expected a JSON object, got "
                     f"{type(obj).__name__}: {line.strip()[:80]!r}")
        continue
      missing = [(ours, theirs) for ours, theirs in fields.items() if theirs not in obj]
      for ours, theirs in missing:
        problems.add(f"{path}:{line_number}: missing field {theirs!r} (read as {ours!r}); the "
                     f"line has fields {sorted(obj)}.")
      if missing:
        continue
      record = dict(obj, source=f"{path}:{line_number}") if keep_all else {}
      record.update({ours: obj[theirs] for ours, theirs in fields.items()})
      records.append(record)
  problems.raise_if_any()
  return records


class _EncodeRecord:
  """Encodes records[index]; a failure names the record index (picklable, unlike a lambda)."""

  def __init__(self, records: Sequence[dict], encode: Callable[[dict], dict[str, np.ndarray]]):
    self.records = records
    self.encode = encode

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    try:
      return self.encode(self.records[index])
    except Exception as e:
      raise ValueError(f"Encoding record {index} ({str(self.records[index])[:120]}) failed: "
                       f"{type(e).__name__}: {e}") from e


def make_iterator(records: Sequence[dict], encode: Callable[[dict], dict[str, np.ndarray]], *,
                  global_batch_size: int, seed: int, shuffle: bool = True,
                  num_epochs: int | None = None, process_index: int | None = None,
                  process_count: int | None = None, drop_remainder: bool = True,
                  num_threads: int = 2, prefetch_batches: int = 4) -> grain.DatasetIterator:
  """A resumable Grain iterator over encoded, shuffled, per-process batches.

  Args:
    records: the examples (e.g. from `read_jsonl` or a task's `examples`).
    encode: one record -> dict of fixed-shape numpy arrays.
    global_batch_size: rows per step summed over all JAX processes.
    seed: shuffle seed; the same seed gives the same order in every epoch.
    shuffle: False keeps the records' order (each epoch the same).
    num_epochs: passes over the records; None repeats forever.
    process_index, process_count: this process's share of each global batch
      (default: `jax.process_index()` / `jax.process_count()`).
    drop_remainder: with finite epochs, drop the last global batch if partial
      (it is dropped on every process, so all processes step equally often).
      With False, the last batch may be smaller and differ between processes.
    num_threads, prefetch_batches: Grain read threads / batches prepared ahead.

  Returns:
    An iterator of dicts of numpy arrays [global_batch_size // process_count, ...].
    `get_state()` returns a JSON-serialisable dict; after `set_state(state)` it
    yields exactly what it yielded after `get_state()` returned `state`.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"make_iterator: process_index={process_index} must be in "
                     f"[0, process_count={process_count}).")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
        f"make_iterator: global_batch_size={global_batch_size} must be a positive multiple of "
        f"the number of JAX processes process_count={process_count}.")
  if not len(records):
    raise ValueError("make_iterator: no records to iterate over.")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"make_iterator: num_epochs must be >= 1 or None (forever), got {num_epochs}.")

  dataset = grain.MapDataset.range(len(records))
  if shuffle:
    dataset = dataset.shuffle(seed=seed)
  dataset = dataset.repeat(num_epochs)
  if num_epochs is not None and drop_remainder:
    full_batches = len(dataset) // global_batch_size
    if not full_batches:
      raise ValueError(
          f"make_iterator: {len(records)} records x {num_epochs} epochs is fewer rows than one "
          f"global batch of {global_batch_size}; lower global_batch_size or raise num_epochs.")
    dataset = dataset[:full_batches * global_batch_size]
  dataset = dataset[process_index::process_count]
  dataset = dataset.map(_EncodeRecord(records, encode))
  dataset = dataset.batch(global_batch_size // process_count, drop_remainder=drop_remainder)
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
  return iter(dataset.to_iter_dataset(read_options))


def eval_batches(records: Sequence[dict], encode: Callable[[dict], dict[str, np.ndarray]],
                 batch_size: int) -> list[dict[str, np.ndarray]]:
  """Fixed evaluation batches, in record order, every one of `batch_size` rows.

  The last batch is padded by repeating its last real row (so shapes stay
  static and no extra compilation happens); each batch has a "valid" bool
  [batch_size] array that is False on those padding rows. Metrics must be
  averaged over valid rows only.
  """
  if batch_size < 1:
    raise ValueError(f"eval_batches: batch_size must be >= 1, got {batch_size}.")
  if not len(records):
    raise ValueError("eval_batches: no records to evaluate.")
  encoded = [_EncodeRecord(records, encode)(i) for i in range(len(records))]
  batches = []
  for start in range(0, len(encoded), batch_size):
    rows = encoded[start:start + batch_size]
    num_real = len(rows)
    rows = rows + [rows[-1]] * (batch_size - num_real)
    batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    if "valid" in batch:
      raise ValueError("eval_batches: encode() already returns a 'valid' key, which is reserved.")
    batch["valid"] = np.arange(batch_size) < num_real
    batches.append(batch)
  return batches

