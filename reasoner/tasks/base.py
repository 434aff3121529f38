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


@dataclass(frozen=True)
class Task:
    """``load(source, split, size, seed)`` returns examples; ``source`` is a hub id or a local file, or None
    for the task's default (procedural tasks generate their own)."""

    name: str
    reward: str  # a name in reasoner.rewards.REWARDS
    load: Callable[[str | None, str, int | None, int], list[Example]]
    kind: str = "math"  # "math" (accuracy) or "code" (pass@k)
