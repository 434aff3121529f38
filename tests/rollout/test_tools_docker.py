"""Hostile tool calls inside a rollout, on the warm Docker pool: each costs its own row a turn, never the batch."""

from __future__ import annotations

import time

import pytest

from reasoner.rewards.code import configure_sandbox, sandbox_settings
from reasoner.rollout.base import SamplingParams
from reasoner.rollout.tools import ToolEngine, ToolSettings
from tests.rollout.test_tools import TOK, ScriptedEngine

pytestmark = pytest.mark.docker

FORK_BOMB = "import os\nwhile True:\n    os.fork()"
NETWORK = (
    "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3)\nprint('reached', 'the network')"
)
ENDLESS = "while True:\n    pass"
ANSWER = "#### 42"


@pytest.fixture
def docker_sandbox():
    old = sandbox_settings()
    configure_sandbox(backend="docker", workers=4)
    yield
    configure_sandbox(backend=old.backend, workers=old.workers)


def test_hostile_calls_cost_only_their_own_row(docker_sandbox):
    scripts = {f"{name}\n": [[f"<python>{code}</python>", ANSWER]]
               for name, code in (("bomb", FORK_BOMB), ("net", NETWORK), ("loop", ENDLESS), ("ok", "print(6*7)"))}  # fmt: skip
    engine = ToolEngine(ScriptedEngine(scripts), TOK, ToolSettings(timeout_s=2.0, output_chars=300))
    t0 = time.time()
    bomb, net, loop, ok = engine.generate(list(scripts), SamplingParams(n=1, max_new_tokens=300))
    assert time.time() - t0 < 30  # one batch: the calls ran side by side, each within its own limits
    assert bomb.tools.statuses[0] in ("failed", "timeout", "memory") and "error:" in bomb.text
    assert net.tools.statuses == ["failed"] and "reached the network" not in net.text.split("<output>")[1]
    assert "OSError" in net.text or "unreachable" in net.text.lower()
    assert loop.tools.statuses == ["timeout"] and "timed out after 2 s" in loop.text
    assert ok.tools.statuses == ["passed"] and "<output>\n42\n</output>\n" in ok.text
    for r in (bomb, net, loop, ok):  # every row got its turn back and answered
        assert r.text.endswith(ANSWER) and not r.tools.infra_error
