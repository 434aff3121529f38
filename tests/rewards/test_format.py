from __future__ import annotations

import time

import pytest

from reasoner.rewards import REWARDS
from reasoner.rewards.format import format_ok
from reasoner.tasks.base import Example

CASES = [
    ("<think>7 + 5 = 12</think>\nThe answer is 12.", "", True),
    ("  <think>\nsteps\n</think>\n\\boxed{12}", "", True),
    ("steps</think> 12", "Question: ...\n<think>\n", True),  # the template pre-filled <think>
    ("<think>steps</think> 12", "Question: ...\n<think>\n", True),  # or the model repeated it
    ("steps</think> 12", "Question: ...", False),  # no opening tag anywhere
    ("<think></think> 12", "", False),  # empty reasoning
    ("<think>   </think> 12", "", False),
    ("<think>steps</think>", "", False),  # no answer
    ("<think>steps</think>   \n", "", False),
    ("<think>steps", "", False),  # never closed
    ("12", "", False),
    ("12 <think>steps</think> 12", "", False),  # does not start with the reasoning
    ("<think>a</think> 1 <think>b</think> 2", "", False),  # two blocks
    ("<think>a <think> b</think> 1", "", False),  # nested
    ("<think>a</think> 1 </think>", "", False),  # stray closing tag
    ("<THINK>a</THINK> 1", "", False),  # tags are case-sensitive
]


@pytest.mark.parametrize("completion, prompt, expected", CASES, ids=[repr(c[:25]) for c, _, _ in CASES])
def test_format_table(completion, prompt, expected):
    assert format_ok(completion, prompt) is expected


def test_registered_format_reward_uses_each_examples_prompt():
    examples = [
        Example(prompt="Q <think>", gold="1"),
        Example(prompt="Q", gold="1"),
        Example(prompt="Q", gold="1"),
    ]
    out = REWARDS.get("format")(["a</think> 1", "a</think> 1", "<think>a</think> 1"], examples)
    assert out.scores == [1.0, 0.0, 1.0]
    assert out.metrics == {"format_frac": pytest.approx(2 / 3)}


def test_misaligned_inputs_raise():
    with pytest.raises(ValueError, match="2 completions but 1 examples"):
        REWARDS.get("format")(["a", "b"], [Example(prompt="q", gold="1")])


def test_megabytes_are_fast():
    start = time.monotonic()
    assert format_ok("<think>" + "x" * 5_000_000 + "</think> 1") is True
    assert format_ok("<think>" * 500_000) is False
    assert time.monotonic() - start < 5.0
