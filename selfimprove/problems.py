"""Collecting what is wrong with input data, so that every problem is reported at once."""

from __future__ import annotations


class Problems:
  """Collects what is wrong with the data, to report every problem at once (up to `limit`)."""

  def __init__(self, limit: int = 20):
    self.limit = limit
    self.messages: list[str] = []
    self.count = 0

  def add(self, message: str) -> None:
    self.count += 1
    if len(self.messages) < self.limit:
      self.messages.append(message)

  def raise_if_any(self) -> None:
    """One problem: its line; several: a count, then one `file:line: what` per line."""
    if self.count == 1:
      raise ValueError(self.messages[0])
    if self.count:
      more = f"\n  ... and {self.count - len(self.messages)} more" if self.count > self.limit else ""
      raise ValueError(f"{self.count} problems in the data:\n  " + "\n  ".join(self.messages)
                       + more)
