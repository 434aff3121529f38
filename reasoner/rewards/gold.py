"""The hidden gold reward of the preference task: ``gold_score`` under the rule each example carries.

Used for evaluation (the task's own reward), never as the RL reward of the offline RLHF default: there the
policy is trained against a reward model and the gold score only measures how well that worked.
"""

from __future__ import annotations

from collections.abc import Sequence

from reasoner.rewards.base import REWARDS, RewardOutput
from reasoner.tasks.base import Example


@REWARDS.register("gold")
def gold_reward(completions: Sequence[str], examples: Sequence[Example]) -> RewardOutput:
    from reasoner.tasks.preference import gold_score

    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions but {len(examples)} examples: they must align 1:1")
    scores = [gold_score(ex.meta["rule"], ex.prompt, c) for c, ex in zip(completions, examples, strict=True)]
    return RewardOutput(scores=scores, metrics={"gold": sum(scores) / max(len(scores), 1)})
