"""Format reward, for prompts that ask the model to reason inside ``<think>...</think>`` before answering.

Optional and off by default: a run adds ``"format"`` to its rewards to use it (e.g. next to ``"math"``).
A completion is well formed when it is exactly one non-empty ``<think>`` block at the start, then a
non-empty answer, with no other think tags. Chat templates that pre-fill ``<think>`` at the end of the
prompt are handled: the opening tag is then taken from the prompt.

>>> format_ok("<think>7 + 5 = 12</think> The answer is 12.")
True
>>> format_ok("7 + 5 = 12</think> 12", prompt="Question: ...<think>\\n")
True
>>> format_ok("<think></think> 12"), format_ok("<think>12</think>"), format_ok("12 <think>hm</think> 12")
(False, False, False)
"""

from __future__ import annotations

from collections.abc import Sequence

from reasoner.rewards.base import REWARDS, RewardOutput
from reasoner.tasks.base import Example

OPEN, CLOSE = "<think>", "</think>"


def format_ok(completion: str, prompt: str = "") -> bool:
    """Whether ``completion`` (continuing ``prompt``) is ``<think>reasoning</think>answer``."""
    text = completion.lstrip()
    if prompt.rstrip().endswith(OPEN) and not text.startswith(OPEN):
        text = OPEN + text
    if not text.startswith(OPEN):
        return False
    close = text.find(CLOSE)
    if close < 0:
        return False
    thought, answer = text[len(OPEN) : close], text[close + len(CLOSE) :]
    if OPEN in thought or OPEN in answer or CLOSE in answer:
        return False
    return bool(thought.strip()) and bool(answer.strip())


@REWARDS.register("format")
def format_reward_fn(completions: Sequence[str], examples: Sequence[Example]) -> RewardOutput:
    """Registered as ``"format"``: 1.0 for a well-formed ``<think>...</think>`` completion, else 0.0."""
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions but {len(examples)} examples: they must align 1:1")
    scores = [1.0 if format_ok(c, ex.prompt) else 0.0 for c, ex in zip(completions, examples, strict=True)]
    return RewardOutput(scores=scores, metrics={"format_frac": sum(scores) / max(len(scores), 1)})
