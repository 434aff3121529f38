import json
from pathlib import Path

import pytest

from reasoner.data import DataError
from reasoner.tasks import get_task

HUMANEVAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"


def test_loads_all_164_with_tests_and_entry_points():
    examples = get_task("humaneval").load(str(HUMANEVAL), "test", None, 0)
    assert len(examples) == 164
    first = examples[0]
    assert first.meta["task_id"] == "HumanEval/0" and first.meta["entry_point"] == "has_close_elements"
    assert "def check(candidate)" in first.meta["test"]
    assert first.gold == first.prompt + first.solution
    assert first.meta["code_prefix"] == first.prompt


def test_missing_field_names_it(tmp_path):
    bad = tmp_path / "he.jsonl"
    bad.write_text(
        json.dumps({"task_id": "X/0", "prompt": "def f():\n", "canonical_solution": "  pass\n", "test": ""})
        + "\n"
    )
    with pytest.raises(DataError, match="no field 'entry_point'"):
        get_task("humaneval").load(str(bad), "test", None, 0)
