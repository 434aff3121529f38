"""A task is a list of examples (prompt, gold answer, metadata) plus the name of the reward that scores them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    prompt: str  # the text the model continues (a chat template, if any, is applied by the trainer)
    gold: str  # what the reward compares against: the final answer (math) or the reference program (code)
    solution: str | None = None  # a full reference completion, used as the SFT target
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. task_id, tests, entry_point
    # The source row's fields: what a ``task.prompt`` template formats, and what a user reward receives as
    # keyword arguments (one list per column, aligned with the completions).
    columns: dict[str, Any] = field(default_factory=dict)
    # A conversational prompt (TRL's format: a list of {role, content}); the trainer renders it with the chat
    # template, and ``prompt`` holds a plain-text view of it for reports.
    messages: list[dict[str, str]] | None = None


@dataclass(frozen=True)
class Task:
    """``load(source, split, size, seed)`` returns examples; ``source`` is a hub id or a local file, or None
    for the task's default (procedural tasks generate their own)."""

    name: str
    reward: str  # a name in reasoner.rewards.REWARDS
    load: Callable[[str | None, str, int | None, int], list[Example]]
    kind: str = "math"  # "math" (accuracy), "code" (pass@k) or "reward" (the mean reward)
    # True: ``load`` also takes the field settings ``prompt``, ``answer`` and ``solution`` (task.prompt, ...)
    # as keyword arguments (the generic ``dataset`` task); False: a ``task.prompt`` template is applied after
    # loading, to each example's ``columns``.
    from_fields: bool = False
