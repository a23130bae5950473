"""Task domains, looked up by `config.task.name` in a registry.

A task module defines a frozen config dataclass and a `Task` (tasks/base.py);
one `register_task` line makes it a name the trainer can run:

    register_task("my_task", MyTaskConfig, MyTask)   # config.task = dict(name="my_task", ...)

The trainer builds `MyTask(MyTaskConfig(**fields))` from config.task's other
fields. Registering from your own module works the same (import it from your
config file); the trainer and run setup never name a task.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from selfimprove.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from selfimprove.tasks.base import Task
from selfimprove.tasks.jsonl import JsonlTask, JsonlTaskConfig
from selfimprove.tasks.linear_equations import LinearEquationsConfig, LinearEquationsTask
from selfimprove.tasks.seqio_task import SeqioTask, SeqioTaskConfig   # seqio imported lazily


@dataclasses.dataclass(frozen=True)
class TaskEntry:
  config_class: type            # a frozen dataclass; config.task's fields (less "name") fill it
  build: Callable[[Any], Task]  # config object -> Task


_TASKS: dict[str, TaskEntry] = {}


def register_task(name: str, config_class: type, build: Callable[[Any], Task]) -> None:
  """Makes `name` a valid config.task.name. Re-registering the same objects is a no-op."""
  entry = TaskEntry(config_class, build)
  if name in _TASKS and _TASKS[name] != entry:
    raise ValueError(f"Task {name!r} is already registered (to {_TASKS[name].build!r}).")
  _TASKS[name] = entry


def get_task_entry(name: str) -> TaskEntry:
  if name not in _TASKS:
    raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(_TASKS)}.")
  return _TASKS[name]


def task_names() -> list[str]:
  return sorted(_TASKS)


register_task("arithmetic", ArithmeticConfig, ArithmeticTask)
register_task("jsonl", JsonlTaskConfig, JsonlTask)
register_task("linear_equations", LinearEquationsConfig, LinearEquationsTask)
register_task("seqio", SeqioTaskConfig, SeqioTask)

__all__ = ["ArithmeticConfig", "ArithmeticTask", "JsonlTask", "JsonlTaskConfig",
           "LinearEquationsConfig", "LinearEquationsTask", "SeqioTask", "SeqioTaskConfig", "Task",
           "register_task", "get_task_entry", "task_names"]
