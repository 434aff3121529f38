"""Prompts without answers: what users asked the server, as RL prompts for a round of the online loop.

A JSON-lines file with one ``{"prompt": ...}`` per line (the exact text the policy saw, chat template
applied). There is no gold answer: the reward is a reward model (``task.rewards: [{name: model}]``), and the
task's own reward ``unscored`` marks every sample as not scorable, so the trainer's held-out check reports
``unscored`` instead of a made-up accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from reasoner.rewards import REWARDS, RewardOutput
from reasoner.tasks import TASKS
from reasoner.tasks.base import Example, Task


def load(source: str | None, split: str, size: int | None, seed: int) -> list[Example]:
    if source is None:
        raise ValueError(
            "task 'prompts' reads a JSON-lines file of {\"prompt\": ...}: set task.train / task.test"
        )
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"task 'prompts': no file {source!r}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if not isinstance(row.get("prompt"), str):
            raise ValueError(f"{source} line {i + 1}: needs a string field 'prompt'; got {row!r}")
    return [Example(prompt=r["prompt"], gold="", meta={"index": i}) for i, r in enumerate(rows[:size])]


@REWARDS.register("unscored")
def unscored(completions: Sequence[str], examples: Sequence[Example]) -> RewardOutput:
    return RewardOutput(scores=[None] * len(completions))


TASKS.register("prompts")(Task(name="prompts", reward="unscored", load=load))
