"""Fixtures for the sandbox tests: real Docker pools, the local backend, HumanEval programs, a health probe.

Docker tests (``@pytest.mark.docker``) FAIL when no engine answers or the image is missing (run
``make docker sandbox-image``); they are skipped only when ``REASONER_SKIP_DOCKER=1``.
"""

from __future__ import annotations

import gzip
import json
import os
import warnings
from pathlib import Path

import pytest

from sandbox import Job, LocalBackendWarning, Result, Sandbox, Status

HUMANEVAL = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"
)

# Prints what a job can see of what earlier jobs left: processes, files in every writable place.
PROBE = """
import json, os, socket

def parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None

def head(names):  # the local backend sees the host's /proc and /tmp: keep the report under the output limit
    return sorted(names)[:40]

others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, os.getpid())]
print(json.dumps({
    "host": socket.gethostname(),
    "pids": head(others),
    # what a job leaves behind is re-parented to the runner (an init or a subreaper): siblings of the probe
    "siblings": sorted(p for p in others if parent(p) == os.getppid()),
    "tmp": head(set(os.listdir("/tmp")) - {os.path.basename(os.getcwd())}),
    "shm": head(os.listdir("/dev/shm")),
    "cwd": sorted(os.listdir(".")),
}))
"""


def pytest_collection_modifyitems(config, items):
    if os.environ.get("REASONER_SKIP_DOCKER") == "1":
        skip = pytest.mark.skip(reason="REASONER_SKIP_DOCKER=1")
        for item in items:
            if "docker" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def docker_sandbox():
    """One warm container, so that a hostile job and the probe after it share it."""
    with Sandbox(backend="docker", workers=1, output_limit_bytes=4096) as sb:
        yield sb


@pytest.fixture(scope="session")
def local_sandbox():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LocalBackendWarning)
        with Sandbox(backend="local", workers=1, output_limit_bytes=4096) as sb:
            yield sb


@pytest.fixture(scope="session")
def humaneval_problems() -> list[dict]:
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _run_one(sb: Sandbox, program: str, **limits) -> Result:
    return sb.run([Job(id="job", program=program, **limits)])[0]


def _probe(sb: Sandbox) -> dict:
    """Asserts the pool still runs a job and that nothing of earlier jobs is left; returns what it saw."""
    result = _run_one(sb, PROBE)
    assert result.status is Status.PASSED, result
    seen = json.loads(result.stdout)
    assert seen["siblings"] == [], f"processes left behind: {seen}"
    assert seen["cwd"] == [], f"files left in the fresh working directory: {seen}"
    if sb.backend == "docker":  # the local backend's /proc and /tmp may be the host's
        assert seen["pids"] == [], f"processes left behind: {seen}"
        assert seen["tmp"] == [] and seen["shm"] == [], f"files left behind: {seen}"
    return seen


# Helpers as fixtures, so that test modules need not import this conftest (works in every import mode).
@pytest.fixture(scope="session")
def run_one():
    """``run_one(sb, program, **limits) -> Result``: one job through ``sb``."""
    return _run_one


@pytest.fixture(scope="session")
def probe():
    """``probe(sb) -> dict``: asserts the pool is healthy and nothing of earlier jobs is left."""
    return _probe


@pytest.fixture(scope="session")
def humaneval_program():
    """``humaneval_program(problem, body) -> str``: prompt + body + tests + ``check(entry_point)``."""
    return lambda problem, body: (
        f"{problem['prompt']}{body}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
    )
