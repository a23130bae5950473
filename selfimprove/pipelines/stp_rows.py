"""STP's in-graph text plumbing: packing token pieces into prompt rows, and the statement checks.

Everything here works on fixed-shape id arrays inside the compiled step. Pieces are
right-padded id arrays with their lengths; `pack_left` lays them end to end and
left-pads the result (the prompt layout of selfimprove/encoding.py), so a prompt
assembled in the graph is token-for-token the row the encoder writes for the same
text with a one-token-per-character tokenizer.

Checks on (statement, proof) rows come from the task in one of two ways:
`in_graph_checks` (the domain's jnp functions, vmapped) or `HostChecks` (its Python
functions on decoded text, through `jax.pure_callback`: the way a Lean or Isabelle
checker would plug in; the step stays one compiled program and each call says what
it costs in the profile as a host callback).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from selfimprove.tokenizers import Tokenizer


class Piece(NamedTuple):
  ids: jax.Array      # [rows, width] int32, real ids first
  length: jax.Array   # [rows] int32


def constant_piece(ids: Sequence[int], rows: int) -> Piece:
  """The same ids in every row (a <bos>, a separator)."""
  width = max(len(ids), 1)
  row = np.zeros((width,), np.int32)
  row[:len(ids)] = ids
  return Piece(jnp.broadcast_to(jnp.asarray(row), (rows, width)),
               jnp.full((rows,), len(ids), jnp.int32))


def pack_left(pieces: Sequence[Piece], pad_id: int) -> tuple[jax.Array, jax.Array]:
  """(tokens [rows, W], mask [rows, W]): each row's pieces end to end, left-padded to
  W = the sum of the pieces' widths."""
  rows = pieces[0].ids.shape[0]
  width = sum(p.ids.shape[1] for p in pieces)
  total = sum(p.length for p in pieces)
  start = width - total                          # [rows] where the text begins
  tokens = jnp.full((rows, width), pad_id, jnp.int32)
  row_index = jnp.arange(rows)[:, None]
  offset = start
  for piece in pieces:
    column = jnp.arange(piece.ids.shape[1])[None, :]
    target = jnp.where(column < piece.length[:, None], offset[:, None] + column, width)
    tokens = tokens.at[row_index, target].set(piece.ids.astype(jnp.int32), mode="drop")
    offset = offset + piece.length
  mask = jnp.arange(width)[None, :] >= start[:, None]
  return tokens, mask


def text_before_stop(tokens: jax.Array, mask: jax.Array, stop_ids: Sequence[int]
                     ) -> tuple[jax.Array, jax.Array]:
  """(mask [rows, N] of the real tokens before the first stop id, ended [rows]: a stop was
  written), for sampled completions (tokens, mask [rows, N])."""
  is_stop = jnp.isin(tokens, jnp.asarray(tuple(stop_ids) or (-1,), jnp.int32))
  real = mask.astype(bool)
  alive = jnp.cumprod((real & ~is_stop).astype(jnp.int32), axis=1).astype(bool)
  ended = jnp.any(real & is_stop, axis=1)
  return alive, ended


def as_piece(tokens: jax.Array, text_mask: jax.Array, width: int) -> Piece:
  """The leading `width` tokens of right-aligned text (text_mask True on a prefix) as a Piece."""
  return Piece(tokens[:, :width], jnp.minimum(jnp.sum(text_mask, axis=1, dtype=jnp.int32), width))


class Checks(NamedTuple):
  """Batched checks: statements [rows, S] and proofs [rows, P] with masks of their text."""

  well_formed: Any    # (ids, mask) -> bool [rows]
  check_proof: Any    # (statement ids, mask, proof ids, mask) -> bool [rows]
  difficulty: Any     # (ids, mask) -> int32 [rows] (only read for well-formed statements)


def in_graph_checks(statement_checks: Any) -> Checks:
  """The domain's one-row jnp checks (graph.StatementChecks), vmapped over rows."""
  return Checks(jax.vmap(statement_checks.well_formed), jax.vmap(statement_checks.check_proof),
                jax.vmap(statement_checks.difficulty))


class HostChecks:
  """The domain's Python checks on decoded text, called from the compiled step.

  `task` has is_well_formed(statement) -> bool, check_proof(statement, proof) ->
  (bool, reason) and difficulty(statement) -> int. Text is the masked-in ids decoded
  by the run's tokenizer.
  """

  def __init__(self, task: Any, tokenizer: Tokenizer):
    self.task = task
    self.tokenizer = tokenizer

  def _texts(self, ids: np.ndarray, mask: np.ndarray) -> list[str]:
    return [self.tokenizer.decode([int(t) for t, m in zip(row, row_mask) if m])
            for row, row_mask in zip(np.asarray(ids), np.asarray(mask))]

  def _callback(self, fn, dtype, rows: int, *operands):
    operands = tuple(jnp.asarray(x) for x in operands)
    if not jax.sharding.get_abstract_mesh().empty:
      operands = jax.lax.with_sharding_constraint(operands, jax.sharding.PartitionSpec())
    return jax.pure_callback(fn, jax.ShapeDtypeStruct((rows,), dtype), *operands,
                             vmap_method="sequential")

  def well_formed(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    host = lambda i, m: np.asarray([self.task.is_well_formed(t) for t in self._texts(i, m)], bool)
    return self._callback(host, jnp.bool_, ids.shape[0], ids, mask)

  def difficulty(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    def host(i, m):
      return np.asarray([self.task.difficulty(t) if self.task.is_well_formed(t) else 0
                         for t in self._texts(i, m)], np.int32)
    return self._callback(host, jnp.int32, ids.shape[0], ids, mask)

  def check_proof(self, statement_ids, statement_mask, proof_ids, proof_mask) -> jax.Array:
    def host(s, sm, p, pm):
      return np.asarray([self.task.check_proof(st, pr)[0] for st, pr in
                         zip(self._texts(s, sm), self._texts(p, pm))], bool)
    return self._callback(host, jnp.bool_, statement_ids.shape[0], statement_ids,
                          statement_mask, proof_ids, proof_mask)

  def checks(self) -> Checks:
    return Checks(self.well_formed, self.check_proof, self.difficulty)
