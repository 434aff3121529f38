import json

import pytest

from reasoner.data import DataError
from reasoner.tasks import get_task
from reasoner.tasks.math import last_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"The answer is $\boxed{5}$.", "5"),
        (r"First \boxed{1}, finally \boxed{2}", "2"),
        (r"$\boxed{\frac{\sqrt{3}}{2}}$", r"\frac{\sqrt{3}}{2}"),
        (r"\fbox{x+1}", "x+1"),
        (r"\boxed{ \text{(C)} }", r"\text{(C)}"),
        ("no box at all", None),
        (r"\boxed{unbalanced", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_gold_is_answer_field_else_last_boxed(tmp_path):
    rows = [
        {
            "problem": "What is 1+1?",
            "solution": r"We get $\boxed{2}$.",
            "answer": "2",
            "unique_id": "test/algebra/1.json",
        },
        {
            "problem": "Half of 1?",
            "solution": r"It is $\boxed{\frac{1}{2}}$.",
            "level": "Level 1",
            "type": "Algebra",
        },
    ]
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = get_task("math").load(str(path), "test", None, 0)
    assert a.gold == "2" and a.meta["task_id"] == "test/algebra/1.json"
    assert b.gold == r"\frac{1}{2}" and b.meta["level"] == "Level 1"
    assert a.prompt == "Problem: What is 1+1?\nSolution:" and a.solution.startswith(" We get")


def test_row_without_any_answer_fails_clearly(tmp_path):
    path = tmp_path / "math.jsonl"
    path.write_text(json.dumps({"problem": "?", "solution": "no final answer"}) + "\n")
    with pytest.raises(DataError, match="no 'answer'"):
        get_task("math").load(str(path), "test", None, 0)
