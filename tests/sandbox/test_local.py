"""The local backend (no Docker): same pass semantics and limits as the Docker pool, weaker isolation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import sandbox
from sandbox import Job, LocalBackendWarning, Sandbox, Status
from sandbox.backends import _unshare_prefix

ROOT = Path(sandbox.__file__).resolve().parents[1]


def test_choosing_it_warns_that_it_is_weaker():
    with pytest.warns(LocalBackendWarning, match="WEAKER than Docker"):
        Sandbox(backend="local", workers=1).close()


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="'docker' or 'local'"):
        Sandbox(backend="podman")


def test_pass_and_fail_in_input_order(local_sandbox):
    jobs = [Job(id=str(i), program=f"assert {i} % 3 != 0, 'multiple of three'") for i in range(9)]
    results = local_sandbox.run(jobs)
    assert [r.id for r in results] == [j.id for j in jobs]
    assert [r.passed for r in results] == [i % 3 != 0 for i in range(9)]
    assert "AssertionError: multiple of three" in results[0].stderr


@pytest.mark.parametrize(
    "program",
    [
        "import sys\nsys.exit(0)\n",
        "raise SystemExit(0)\n",
        "import os\nos._exit(0)\n",
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
        "import os\nif os.fork():\n    os._exit(0)\n",
        # the original leaves early, a fork with a lying getpid reaches the end first
        "import os\nme = os.getpid()\nos.getpid = lambda: me\npid = os.fork()\nif pid:\n    os.waitpid(pid, 0)\n    os._exit(0)\n",
    ],
    ids=["sys.exit", "SystemExit", "os._exit", "kill-self", "fork-and-exit", "fork-lying-getpid"],
)
def test_early_exit_is_not_a_pass(local_sandbox, run_one, program):
    assert run_one(local_sandbox, program).status is Status.FAILED


def test_fake_success_records_are_not_a_pass(local_sandbox, run_one):
    program = (
        "import json, os\n"
        "print(json.dumps({'id': 'job', 'status': 'passed', 'passed': True}))\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        os.write(fd, b'ok\\n')\n"
        "    except OSError:\n"
        "        pass\n"
        "raise AssertionError\n"
    )
    assert run_one(local_sandbox, program).status is Status.FAILED


def test_timeout_kills_detached_processes(local_sandbox, run_one, probe):
    program = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n"
    )
    result = run_one(local_sandbox, program, timeout_s=1.0)
    assert result.status is Status.TIMEOUT and 1.0 <= result.duration_s < 3.0
    probe(local_sandbox)


def test_memory_limit(local_sandbox, run_one):
    assert run_one(local_sandbox, "x = bytearray(2**30)\n", memory_mb=256).status is Status.MEMORY


def test_output_is_truncated(local_sandbox, run_one):
    result = run_one(local_sandbox, "print('x' * 10**7)\n")
    assert result.status is Status.PASSED
    assert len(result.stdout) < 4096 + 200 and "output truncated: 10000001 bytes" in result.stdout


def test_each_job_gets_a_fresh_directory(local_sandbox, run_one):
    assert run_one(local_sandbox, "open('left-behind', 'w').write('x')\n").status is Status.PASSED
    assert run_one(local_sandbox, "import os\nassert os.listdir('.') == [], os.listdir('.')\n").passed


@pytest.mark.skipif(os.geteuid() != 0, reason="jobs drop to nobody only when the host process is root")
def test_jobs_do_not_run_as_root(local_sandbox, run_one):
    assert run_one(local_sandbox, "import os\nassert os.getuid() == 65534 and os.getgid() == 65534\n").passed


@pytest.mark.skipif(not _unshare_prefix(), reason="no namespaces on this host: the local backend says so")
def test_no_network_where_namespaces_work(local_sandbox, run_one):
    result = run_one(local_sandbox, "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\n")
    assert result.status is Status.FAILED and "Network is unreachable" in result.stderr


def test_cli_local_backend(tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"id": "x", "program": "print(6 * 7)"}) + "\n")
    done = subprocess.run([sys.executable, "-m", "sandbox", "run", str(path), "--backend", "local", "--workers", "1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"id": "x", "status": "passed", "passed": True,
                                       "duration_s": json.loads(done.stdout)["duration_s"], "stdout": "42\n", "stderr": ""}  # fmt: skip
    assert "WEAKER than Docker" in done.stderr


def test_cli_rejects_a_bad_jobs_file(tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"id": "x", "program": "pass"}\n{"id": "y", "timeout": 3, "program": "pass"}\n')
    done = subprocess.run([sys.executable, "-m", "sandbox", "run", str(path), "--backend", "local"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "jobs.jsonl:2: unknown field(s) ['timeout']" in done.stderr and done.stdout == ""


def test_without_namespaces_the_runner_still_kills_detached_processes():
    # Where unshare cannot make namespaces the runner is a child subreaper and kills its descendants:
    # run it bare (no unshare) to check that path here too.
    from sandbox.backends import RUNNER_PATH, _python_for_jobs

    workdirs = tempfile.mkdtemp(prefix="sandbox-test-")  # not under pytest's tmp (0700): nobody must enter
    os.chmod(workdirs, 0o711)
    argv = [_python_for_jobs(), "-I", str(RUNNER_PATH), "--mode", "local", "--workdir-base", workdirs]
    if os.geteuid() == 0:
        argv += ["--uid", "65534", "--gid", "65534"]
    daemon = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\ntime.sleep(0.3)\n"
    listing = (
        "import os\n"
        "def parent(pid):\n"
        "    try:\n"
        "        return int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])\n"
        "    except OSError:\n"
        "        return None\n"
        "print([p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid() and parent(p) == os.getppid()])\n"
    )
    jobs = "".join(
        json.dumps(
            {"id": str(i), "token": "t", "program": p, "timeout_s": 5, "memory_mb": 256, "output_limit": 1000}
        )
        + "\n"
        for i, p in enumerate([daemon, listing])
    )
    try:
        done = subprocess.run(argv, input=jobs, capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(workdirs)
    ready, first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert ready["ready"] and ready["pid"] != 1
    assert first["status"] == "passed" and second["status"] == "passed", (first, second)
    assert second["stdout"] == "[]\n"
