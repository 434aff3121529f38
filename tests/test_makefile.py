"""The Makefile's front door: `make help` lists every target a user can run, with one line each."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _phony_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {t for line in re.findall(r"^\.PHONY:(.*)$", text, re.M) for t in line.split()}


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_help_lists_every_phony_target_with_a_description():
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    listed = {}
    for line in out.splitlines():
        m = re.match(r"\s*make (\S+)\s+(\S.*)$", line)
        if m:
            listed[m.group(1)] = m.group(2)
    targets = _phony_targets()
    assert targets, "no .PHONY targets found in the Makefile"
    missing = sorted(targets - listed.keys())
    assert not missing, f"make help does not list {missing}: add '## what it does' after each target"
    assert all(len(desc) > 10 for desc in listed.values())
