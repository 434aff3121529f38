"""The Docker pool as a whole: order, retries after sandbox failures, clean-up, clear errors, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import sandbox
from sandbox import Job, Sandbox, SandboxUnavailable, Status

ROOT = Path(sandbox.__file__).resolve().parents[1]  # where `python -m sandbox` finds the package
POOL_LABEL = "org.reasoner.sandbox.pool"


def pool_containers(pool_id: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={POOL_LABEL}={pool_id}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.split()


def test_no_engine_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine-here.sock")
    with pytest.raises(SandboxUnavailable, match="make docker sandbox-image"):
        Sandbox(backend="docker")


@pytest.mark.docker
def test_missing_image_is_a_clear_error():
    with pytest.raises(
        SandboxUnavailable,
        match=r"image 'reasoner-sandbox:no-such-tag' is missing.*make docker sandbox-image",
    ):
        Sandbox(backend="docker", image="reasoner-sandbox:no-such-tag")


@pytest.mark.docker
def test_results_keep_input_order_and_each_status():
    programs = {
        "passed": "assert sum(range(10)) == 45\n",
        "failed": "assert 1 == 2, 'wrong'\n",
        "timeout": "import time\ntime.sleep(30)\n",
        "memory": "x = bytearray(2**30)\n",
    }
    jobs = [Job(id=f"{kind}-{i}", program=programs[kind], timeout_s=1.0, memory_mb=256)
            for i in range(5) for kind in programs]  # fmt: skip
    with Sandbox(backend="docker", workers=2) as sb:
        results = sb.run(jobs)
    assert [r.id for r in results] == [j.id for j in jobs]
    assert [r.status.value for r in results] == [j.id.split("-")[0] for j in jobs]
    assert [r.passed for r in results] == [j.id.startswith("passed") for j in jobs]


@pytest.mark.docker
def test_a_job_whose_container_dies_is_retried_on_a_fresh_one():
    with Sandbox(backend="docker", workers=1) as sb:
        first = pool_containers(sb._backend.pool_id)
        killer = threading.Timer(
            1.0, subprocess.run, (["docker", "rm", "-f", *first],), {"capture_output": True}
        )
        killer.start()
        result = sb.run([Job(id="slow", program="import time\ntime.sleep(2.5)\n")])[0]
        killer.join()
        assert result.status is Status.PASSED, result
        after = pool_containers(sb._backend.pool_id)
        assert after and not set(after) & set(first)


@pytest.mark.docker
def test_a_job_failing_the_sandbox_twice_is_an_error_and_the_pool_recovers():
    with Sandbox(backend="docker", workers=1) as sb:
        stop = threading.Event()

        def kill_every_container():
            while not stop.is_set():
                names = pool_containers(sb._backend.pool_id)
                if names:
                    subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
                time.sleep(0.2)

        killer = threading.Thread(target=kill_every_container)
        killer.start()
        try:
            result = sb.run([Job(id="doomed", program="import time\ntime.sleep(3)\n")])[0]
        finally:
            stop.set()
            killer.join()
        assert result.status is Status.ERROR and not result.passed
        assert "sandbox error" in result.stderr
        assert sb.run([Job(id="after", program="pass")])[0].status is Status.PASSED


@pytest.mark.docker
def test_close_removes_the_containers():
    with Sandbox(backend="docker", workers=2) as sb:
        pool_id = sb._backend.pool_id
        assert len(pool_containers(pool_id)) == 2
    assert pool_containers(pool_id) == []


@pytest.mark.docker
def test_ctrl_c_removes_the_containers():
    script = (
        "import signal, sys\n"
        # A shell's background job inherits SIGINT ignored, and Python then installs no KeyboardInterrupt
        # handler: restore it, so that the test does not depend on how pytest was launched.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from sandbox import Job, Sandbox\n"
        "with Sandbox(backend='docker', workers=2) as sb:\n"
        "    print(sb._backend.pool_id, flush=True)\n"
        "    sb.run([Job(id=str(i), program='import time\\ntime.sleep(30)', timeout_s=60) for i in range(2)])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    pool_id = proc.stdout.readline().strip()
    assert len(pool_containers(pool_id)) == 2
    time.sleep(0.5)  # the jobs are running
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) != 0  # KeyboardInterrupt
    assert pool_containers(pool_id) == []


@pytest.mark.docker
def test_a_stale_image_is_refused(tmp_path):
    # An image whose runner is not this package's runner.py would speak a protocol of another version.
    (tmp_path / "Dockerfile").write_text(
        "FROM reasoner-sandbox:latest\nUSER root\nRUN echo '# another version' >> /opt/sandbox/runner.py\nUSER 10001:10001\n"
    )
    tag = "reasoner-sandbox:stale-test"
    subprocess.run(["docker", "build", "-q", "-t", tag, str(tmp_path)], check=True, capture_output=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "0"})  # fmt: skip
    try:
        with pytest.raises(SandboxUnavailable, match="stale image.*make sandbox-image"):
            Sandbox(backend="docker", workers=1, image=tag)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


@pytest.mark.docker
def test_cli_writes_one_result_per_job_in_input_order(tmp_path):
    jobs = [
        {"id": "a", "program": "print('hello')"},
        {"id": "b", "program": "import sys\nsys.exit(0)", "timeout_s": 5},
        {"id": "c", "program": "while True: pass", "timeout_s": 1, "memory_mb": 128},
    ]
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    done = subprocess.run(
        [sys.executable, "-m", "sandbox", "run", str(path), "--backend", "docker", "--workers", "2"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["id"] for r in records] == ["a", "b", "c"]
    assert [r["status"] for r in records] == ["passed", "failed", "timeout"]
    assert all(set(r) == {"id", "status", "passed", "duration_s", "stdout", "stderr"} for r in records)
    assert records[0]["stdout"] == "hello\n" and records[0]["passed"] is True
