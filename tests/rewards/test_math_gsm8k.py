"""All 8,792 GSM8K reference solutions (train + test) score 1.0 against their own ``####`` answer, and 0.0
once that answer is changed. Both sides are plain numbers, so this runs on the in-process fast path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reasoner.rewards.math import score_batch


@pytest.fixture(scope="module")
def solutions(shared_data: Path) -> list[str]:
    rows = []
    for split in ("train", "test"):
        with open(shared_data / "gsm8k" / f"{split}.jsonl") as f:
            rows += [json.loads(line)["answer"] for line in f if line.strip()]
    return rows


def _final(solution: str) -> str:
    return solution.rsplit("####", 1)[1].strip()


def _with_final(solution: str, answer: str) -> str:
    return solution.rsplit("####", 1)[0] + "#### " + answer


def test_every_gsm8k_reference_solution_scores_1_against_its_own_answer(solutions):
    assert len(solutions) == 8792
    golds = [_final(s) for s in solutions]
    scores = score_batch(solutions, golds)
    wrong = [(i, golds[i]) for i, s in enumerate(scores) if s != 1.0]
    assert not wrong, f"{len(wrong)} reference solutions scored 0, e.g. {wrong[:5]}"
    # the task's gold is the answer with its thousands commas removed: "1,080" -> "1080"
    assert score_batch(solutions, [g.replace(",", "") for g in golds]) == [1.0] * len(solutions)


@pytest.mark.parametrize(
    "perturb",
    [
        lambda n: n + 1,
        lambda n: n - 1,
        lambda n: n * 10 if n else 1,  # an extra digit
        lambda n: -n if n else 1,
    ],
    ids=["plus-one", "minus-one", "times-ten", "negated"],
)
def test_a_perturbed_gsm8k_answer_scores_0(solutions, perturb):
    golds = [_final(s) for s in solutions]
    perturbed = [
        _with_final(s, str(perturb(int(g.replace(",", ""))))) for s, g in zip(solutions, golds, strict=True)
    ]
    scores = score_batch(perturbed, golds)
    wrong = [(i, golds[i], _final(perturbed[i])) for i, s in enumerate(scores) if s != 0.0]
    assert not wrong, f"{len(wrong)} wrong answers scored 1, e.g. {wrong[:5]}"
