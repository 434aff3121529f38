import json

import pytest

from reasoner.data import DataError
from reasoner.tasks import get_task

SANITIZED = {
    "task_id": 3,
    "prompt": "Write a python function to identify non-prime numbers.",
    "code": "def is_not_prime(n):\n    return any(n % i == 0 for i in range(2, n))",
    "test_imports": [],
    "test_list": ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True"],
}


def _write(tmp_path, rows):
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_sanitized_row_becomes_a_docstring_prompt_and_a_whole_program(tmp_path):
    (ex,) = get_task("mbpp").load(_write(tmp_path, [SANITIZED]), "test", None, 0)
    assert (
        ex.prompt
        == '"""\nWrite a python function to identify non-prime numbers.\nassert is_not_prime(2) == False\n"""\n'
    )
    assert ex.solution == ex.gold == SANITIZED["code"]
    assert (
        ex.meta["code_prefix"] == ""
        and ex.meta["test_list"] == SANITIZED["test_list"]
        and ex.meta["task_id"] == 3
    )


def test_full_mbpp_row_uses_text_and_setup_code(tmp_path):
    row = {
        "task_id": 11,
        "text": "Remove a char.",
        "code": "def f(s):\n  return s",
        "test_list": ["assert f('a') == 'a'"],
        "test_setup_code": "import re",
    }
    (ex,) = get_task("mbpp").load(_write(tmp_path, [row]), "test", None, 0)
    assert "Remove a char." in ex.prompt and ex.meta["test_imports"] == ["import re"]


def test_row_without_description_fails_clearly(tmp_path):
    row = {k: v for k, v in SANITIZED.items() if k != "prompt"}
    with pytest.raises(DataError, match="neither 'prompt'"):
        get_task("mbpp").load(_write(tmp_path, [row]), "test", None, 0)
