"""The reward contract: ``RewardOutput`` (one score per completion, None = could not score, plus metrics), the
``RewardFn`` signature and the ``REWARDS`` registry that the reward modules add themselves to."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from reasoner.registry import Registry
from reasoner.tasks.base import Example


@dataclass
class RewardOutput:
    scores: list[float | None]
    metrics: dict[str, float] = field(default_factory=dict)


RewardFn = Callable[[Sequence[str], Sequence[Example]], RewardOutput]
REWARDS: Registry[RewardFn] = Registry("reward function")
