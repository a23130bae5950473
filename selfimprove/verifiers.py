"""The run's verifier: one callable the compiled step uses, in-graph or a host function.

Pipelines call `verifier(completion_tokens, completion_mask, batch)` -> rewards
[rows] float32, where `batch` holds the rows' arrays (repeated per sample).
Either kind works inside `jax.jit` and `lax.scan`, so the training step stays
one compiled program.

Host verifiers (`HostVerifier`) run a user's Python function of the decoded
completion text through `jax.pure_callback`:

* Cost: each call moves the completion tokens [rows, N] of the whole global
  batch to the host, decodes them and calls the function once per row, in
  Python, while the devices wait; the rewards go back as one [rows] array.
  Keep it to cheap checks (a regex, a number comparison); a slow verifier makes
  a slow step. In-graph verifiers cost nothing comparable.
* Meshes: XLA gathers the operands onto one device and calls the function once
  per call in the process that owns that device (process 0 on a multi-host
  mesh); the rewards are then broadcast to every device. Every process loads
  the whole record table, so any process can serve the call (tested with two
  processes in tests/test_train_multihost.py: the same figures as one process).
* Failures: an exception inside the function is caught (raising through XLA
  is undefined behaviour and can leave the process hanging); the rewards of
  that call become NaN, so the trainer skips the update, and the trainer then
  stops the run with `failure()`'s message: the function's name, the example
  (its "source" line for JSONL data) and the completion. Never a silent zero.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from selfimprove.tasks.base import HostVerifierFn, InGraphVerifierFn, describe_example
from selfimprove.tasks.text_verifiers import verifier_name
from selfimprove.tokenizers import Tokenizer


class HostVerifierError(RuntimeError):
  """A user's host verifier raised; the message names the function, the example and the completion."""


class InGraphVerifier:
  """A task's jnp verifier behind the run's verifier interface (it cannot fail at run time)."""

  kind = "in-graph"

  def __init__(self, fn: InGraphVerifierFn):
    self.fn = fn

  def __call__(self, tokens: jax.Array, mask: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
    return self.fn(tokens, mask, batch).astype(jnp.float32)

  def failure(self) -> str | None:
    return None


class HostVerifier:
  """A Python function (completion_text, example) -> float, called inside the compiled step.

  Args:
    fn: the user's verifier.
    tokenizer: decodes completions (up to, not including, the first stop token).
    records: every example the batches can point at, indexed by the batch's
      int32 "record_id" (the run numbers train examples first, then eval ones).
    stop_token_ids: a completion's text ends before the first of these.
  """

  kind = "host"

  def __init__(self, fn: HostVerifierFn, tokenizer: Tokenizer, records: Sequence[dict],
               stop_token_ids: Sequence[int]):
    self.fn = fn
    self.name = verifier_name(fn)
    self.tokenizer = tokenizer
    self.records = records
    self.stop_token_ids = frozenset(int(i) for i in stop_token_ids)
    self._lock = threading.Lock()
    self._failure: str | None = None

  def completion_text(self, tokens: np.ndarray, mask: np.ndarray) -> str:
    """One completion row as text: its real tokens up to the first stop token."""
    ids = []
    for token, real in zip(tokens.tolist(), mask.tolist()):
      if not real or token in self.stop_token_ids:
        break
      ids.append(token)
    return self.tokenizer.decode(ids)

  def rewards_on_host(self, tokens: np.ndarray, mask: np.ndarray, record_ids: np.ndarray
                      ) -> np.ndarray:
    """[rows] float32 rewards; NaN for all rows (and a recorded failure) if `fn` raises."""
    tokens, mask, record_ids = np.asarray(tokens), np.asarray(mask), np.asarray(record_ids)
    rewards = np.zeros(len(record_ids), np.float32)
    for row, record_id in enumerate(record_ids.tolist()):
      example = self.records[record_id]
      text = self.completion_text(tokens[row], mask[row])
      try:
        rewards[row] = float(self.fn(text, example))
      except Exception as error:  # noqa: BLE001 - reported by the trainer, see module docstring
        where = describe_example(example, record_id, "record")
        with self._lock:
          if self._failure is None:
            self._failure = (f"host verifier {self.name} raised {type(error).__name__}: {error} "
                             f"on {where} (prompt {str(example.get('prompt'))[:80]!r}, completion "
                             f"{text[:80]!r}).")
        return np.full(len(record_ids), np.nan, np.float32)
    return rewards

  def __call__(self, tokens: jax.Array, mask: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
    operands = (tokens.astype(jnp.int32), mask.astype(bool), batch["record_id"].astype(jnp.int32))
    if not jax.sharding.get_abstract_mesh().empty:
      # Gather explicitly: the callback runs on one device and reads whole arrays.
      operands = jax.lax.with_sharding_constraint(operands, jax.sharding.PartitionSpec())
    return jax.pure_callback(self.rewards_on_host,
                             jax.ShapeDtypeStruct(batch["record_id"].shape, jnp.float32),
                             *operands, vmap_method="sequential")

  def failure(self) -> str | None:
    """The first failure's message since the run started, or None."""
    with self._lock:
      return self._failure


Verifier = Callable[[jax.Array, jax.Array, dict[str, jax.Array]], jax.Array]
