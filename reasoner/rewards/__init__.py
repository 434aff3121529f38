"""Reward functions: one contract for training, evaluation and benchmarks.

A reward function takes the completions and, aligned with them, the example each completion answers, and
returns a ``RewardOutput``: one score per completion (``None`` = could not score, e.g. the sandbox failed;
the trainer masks such samples out rather than treating them as 0) plus metrics to log.
"""

from __future__ import annotations

from reasoner.rewards.base import REWARDS, RewardFn, RewardOutput


def get_reward(name: str, workers: int = 0) -> RewardFn:
    """A registered reward, or a function of yours: ``path/to/file.py:function`` / ``package.module:function``
    (reasoner.rewards.user; ``workers`` > 0 runs it in that many processes)."""
    if ":" in name:
        from reasoner.rewards.user import UserReward

        return UserReward(name, workers)
    # Import the modules that register rewards lazily, so importing reasoner stays cheap.
    if name not in REWARDS:
        from reasoner.rewards import code, format, gold, math  # noqa: F401
    return REWARDS.get(name)


__all__ = ["REWARDS", "RewardFn", "RewardOutput", "get_reward"]
