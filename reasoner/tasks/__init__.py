"""Tasks by name. A task module registers a ``Task`` in ``TASKS``; ``get_task`` imports the built-in ones lazily."""

from __future__ import annotations

from reasoner.registry import Registry
from reasoner.tasks.base import Example, Task

TASKS: Registry[Task] = Registry("task")

_BUILTIN = ("arithmetic", "gsm8k", "math", "humaneval", "mbpp", "codegen", "preference", "prompts")


def get_task(name: str) -> Task:
    import importlib

    for module in _BUILTIN:
        if module not in TASKS:
            try:
                importlib.import_module(f"reasoner.tasks.{module}")
            except ModuleNotFoundError as e:
                if e.name != f"reasoner.tasks.{module}":
                    raise
    return TASKS.get(name)


__all__ = ["TASKS", "Example", "Task", "get_task"]
