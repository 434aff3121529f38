"""The checker's workers start whoever calls: a script read from stdin, ``python -c``, an unguarded script.

Each runs in a fresh interpreter in an empty directory, with only the repository on ``PYTHONPATH``, and checks
pairs that need algebra (sympy in a worker process), not just the in-process number path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = r"""
from reasoner.rewards.math import check_batch, is_equivalent
print("top-level ran")
print(is_equivalent(r"\frac{2}{4}", r"\frac{1}{2}"), is_equivalent(r"\sqrt{8}", r"2\sqrt{2}"))
print([v.value for v in check_batch([r"\boxed{\frac{2x}{4}}", r"\boxed{\sqrt{7}}"], [r"\frac{x}{2}", r"\sqrt{8}"])])
"""
EXPECTED = ["top-level ran", "True True", "['equal', 'different']"]


def _run(args: list[str], cwd: Path, stdin: str | None = None) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, *args], input=stdin, cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


@pytest.mark.parametrize("how", ["stdin", "-c", "unguarded script"])
def test_the_checker_runs_from_a_main_module_of_any_kind(how, tmp_path):
    if (
        how == "stdin"
    ):  # `python - <<EOF`: the main module's file is "<stdin>", which a fork server cannot import
        lines = _run(["-"], tmp_path, stdin=SCRIPT)
    elif how == "-c":
        lines = _run(["-c", SCRIPT], tmp_path)
    else:  # no `if __name__ == "__main__"` guard: workers must not run the script's top level again
        (tmp_path / "check.py").write_text(SCRIPT)
        lines = _run(["check.py"], tmp_path)
    assert lines == EXPECTED  # "top-level ran" exactly once
