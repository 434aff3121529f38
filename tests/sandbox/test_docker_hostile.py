"""Hostile programs against the Docker pool: one property each, and the pool healthy afterwards.

Each test would fail if its limit were missing: the hostile program passes, hangs, or leaves something
that the probe (``conftest.probe``) finds in the next job of the same container.
"""

from __future__ import annotations

import json

import pytest

from sandbox import Sandbox, Status

pytestmark = pytest.mark.docker


def test_infinite_loop_times_out(docker_sandbox, run_one, probe):
    result = run_one(docker_sandbox, "while True:\n    pass\n", timeout_s=1.0)
    assert result.status is Status.TIMEOUT and not result.passed
    assert 1.0 <= result.duration_s < 3.0
    probe(docker_sandbox)


def test_detached_processes_do_not_survive_the_job(docker_sandbox, run_one, probe):
    # A daemon (double fork, new session) outlives its job unless the runner kills everything after it.
    program = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
    )
    assert run_one(docker_sandbox, program).status is Status.PASSED
    probe(docker_sandbox)


def test_fork_bomb_is_stopped_and_cleaned_up(docker_sandbox, run_one, probe):
    program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = run_one(docker_sandbox, program, timeout_s=2.0)
    assert result.status is Status.TIMEOUT
    probe(docker_sandbox)


def test_process_count_is_capped(docker_sandbox, run_one, probe):
    program = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 3000:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    pass\n"
        "print(n)\n"
    )
    result = run_one(docker_sandbox, program, timeout_s=20.0)
    assert result.status is Status.PASSED
    assert 10 < int(result.stdout) < 300  # the pids cgroup (pids_limit=256), not the loop's own bound
    probe(docker_sandbox)


def test_memory_bomb_is_stopped_by_the_jobs_own_limit(docker_sandbox, run_one, probe):
    # The job's own address-space limit (memory_mb=128), not the container's cgroup (1536 MB), stops it:
    # the job itself sees MemoryError, after allocating less than its 128 MB.
    program = (
        "chunks = []\n"
        "try:\n"
        "    while True:\n"
        "        chunks.append(bytearray(2**24))\n"
        "except MemoryError:\n"
        "    n = len(chunks)\n"
        "    chunks.clear()\n"
        "    print(n * 16, flush=True)\n"  # MB allocated when the limit hit
        "    raise\n"
    )
    result = run_one(docker_sandbox, program, memory_mb=128)
    assert result.status is Status.MEMORY and not result.passed
    assert "MemoryError" in result.stderr
    assert 0 < int(result.stdout) < 128
    probe(docker_sandbox)


# The container's OOM kill count: cgroup v2 (memory.events) or v1 (memory.oom_control), whichever the host has.
OOM_KILLS = (
    "import os\n"
    "for path in ('/sys/fs/cgroup/memory.events', '/sys/fs/cgroup/memory/memory.oom_control'):\n"
    "    if os.path.exists(path):\n"
    "        print(next(line.split()[1] for line in open(path) if line.startswith('oom_kill ')))\n"
    "        break\n"
    "else:\n"
    "    raise SystemExit('no memory cgroup file: neither memory.events (v2) nor memory.oom_control (v1)')\n"
)


def test_memory_bomb_across_processes_hits_the_container_limit(run_one, probe):
    # Each process stays under its own address-space limit; together they pass the container's memory
    # cgroup: the OOM killer must run, and take jobs, not the runner (the same container serves on).
    with Sandbox(backend="docker", workers=1, container_memory_mb=384) as sb:
        host = probe(sb)["host"]
        before = int(run_one(sb, OOM_KILLS).stdout)
        program = (
            "import os\n"
            "for _ in range(3):\n"
            "    if os.fork() == 0:\n"
            "        break\n"
            "chunks = []\n"
            "while True:\n"
            "    chunks.append(b'x' * 2**22)\n"  # touched pages: resident, charged to the cgroup
        )
        result = run_one(sb, program, memory_mb=300, timeout_s=10.0)
        assert result.status is Status.MEMORY
        assert int(run_one(sb, OOM_KILLS).stdout) > before
        assert probe(sb)["host"] == host


def test_no_network(docker_sandbox, run_one, probe):
    program = (
        "import socket\n"
        "socket.create_connection(('1.1.1.1', 53), timeout=2)\n"  # passes only if the network is reachable
    )
    result = run_one(docker_sandbox, program)
    assert result.status is Status.FAILED
    assert "Network is unreachable" in result.stderr
    interfaces = run_one(docker_sandbox, "print(open('/proc/net/dev').read().split('\\n')[2:])").stdout
    assert "lo:" in interfaces and "eth" not in interfaces
    probe(docker_sandbox)


def test_cannot_write_outside_scratch_space(docker_sandbox, run_one, probe):
    program = (
        "import json\n"
        "written = []\n"
        "for path in ['/x', '/etc/passwd', '/etc/x', '/opt/sandbox/runner.py', '/usr/lib/x', '/var/tmp/x',\n"
        "             '/run/x', '/home/x', '/dev/x', '/sys/x', '/root/x']:\n"
        "    try:\n"
        "        with open(path, 'a') as f:\n"
        "            f.write('x')\n"
        "        written.append(path)\n"
        "    except OSError:\n"
        "        pass\n"
        "print(json.dumps(written))\n"
    )
    result = run_one(docker_sandbox, program)
    assert result.status is Status.PASSED
    assert json.loads(result.stdout) == []
    probe(docker_sandbox)


def test_runs_unprivileged(docker_sandbox, run_one, probe):
    program = (
        "import os\n"
        "status = dict(line.split(':\\t') for line in open('/proc/self/status').read().splitlines() if ':\\t' in line)\n"
        "assert os.getuid() != 0 and os.geteuid() != 0, os.getuid()\n"
        "assert int(status['CapEff'], 16) == 0 and int(status['CapBnd'], 16) == 0, status['CapEff']\n"
        "assert status['NoNewPrivs'].strip() == '1'\n"
    )
    result = run_one(docker_sandbox, program)
    assert result.status is Status.PASSED, result.stderr


def test_files_are_not_left_for_the_next_job(docker_sandbox, run_one, probe):
    program = (
        "import os\n"
        "for path in ['/tmp/secret', '/dev/shm/secret', 'secret', '/dev/mqueue/secret']:\n"
        "    try:\n"
        "        open(path, 'w').write('for the next job')\n"
        "    except OSError:\n"
        "        pass\n"
        "os.makedirs('/tmp/locked/deeper')\n"
        "open('/tmp/locked/deeper/f', 'w').write('x')\n"
        "os.chmod('/tmp/locked/deeper', 0)\n"
        "os.chmod('/tmp/locked', 0)\n"
    )
    assert run_one(docker_sandbox, program).status is Status.PASSED
    seen = run_one(
        docker_sandbox,
        "import os\nprint(os.listdir('/tmp'), os.listdir('/dev/shm'), os.listdir('/dev/mqueue'))",
    )
    assert "secret" not in seen.stdout and "locked" not in seen.stdout
    probe(docker_sandbox)


@pytest.mark.parametrize(
    "program",
    [
        "import sys\nsys.exit(0)\nassert False\n",
        "raise SystemExit(0)\n",
        "import os\nos._exit(0)\n",
        "exit()\n",
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
        "import threading, os\nthreading.Thread(target=lambda: os._exit(0)).start()\nimport time\ntime.sleep(5)\n",
        # the original leaves early; a fork of it that reaches the end is not the program
        "import os\nif os.fork():\n    os._exit(0)\n",
        # ... not even when the fork gets there first and getpid lies about who it is
        "import os\nme = os.getpid()\nos.getpid = lambda: me\npid = os.fork()\nif pid:\n    os.waitpid(pid, 0)\n    os._exit(0)\n",
    ],
    ids=[
        "sys.exit",
        "SystemExit",
        "os._exit",
        "exit",
        "kill-self",
        "thread-os._exit",
        "fork-and-exit",
        "fork-lying-getpid",
    ],
)
def test_early_exit_is_not_a_pass(docker_sandbox, program, run_one, probe):
    result = run_one(docker_sandbox, program, timeout_s=3.0)
    assert not result.passed and result.status is Status.FAILED, result


def test_killing_the_runner_fails_and_the_container_serves_on(docker_sandbox, run_one, probe):
    host = probe(docker_sandbox)["host"]
    program = (
        "import os, signal, time\n"
        "for pid in (1, os.getppid()):\n"
        "    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGSTOP):\n"
        "        try:\n"
        "            os.kill(pid, sig)\n"
        "        except OSError:\n"
        "            pass\n"
        "try:\n"
        "    os.kill(-1, signal.SIGKILL)\n"  # everything this uid may signal; spares only PID 1 and itself
        "except OSError:\n"
        "    pass\n"
        "time.sleep(0.2)\n"
        "raise AssertionError('the runner was meant to be dead by now')\n"
    )
    result = run_one(docker_sandbox, program)
    assert result.status is Status.FAILED and "AssertionError" in result.stderr
    assert probe(docker_sandbox)["host"] == host  # not replaced: the runner never went down


def test_fake_success_records_are_not_a_pass(docker_sandbox, run_one, probe):
    # Everything a program could write that looks like success, on every descriptor it can reach.
    program = (
        "import json, os, sys\n"
        "fake = json.dumps({'id': 'job', 'status': 'passed', 'passed': True, 'duration_s': 0.0, 'stdout': '',\n"
        "                   'stderr': '', 'tainted': False, 'detail': ''})\n"
        "print(fake)\n"
        "print(fake, file=sys.stderr)\n"
        "for fd in range(3, 256):\n"
        "    for record in (fake, 'ok', ':ok', '0:ok'):\n"
        "        try:\n"
        "            os.write(fd, (record + '\\n').encode())\n"
        "        except OSError:\n"
        "            pass\n"
        "for path in ('/proc/1/fd/1', '/proc/1/fd/0'):\n"
        "    try:\n"
        "        open(path, 'w').write(fake + '\\n')\n"
        "    except OSError:\n"
        "        pass\n"
        "raise AssertionError('this program fails')\n"
    )
    result = run_one(docker_sandbox, program)
    assert result.status is Status.FAILED and not result.passed
    probe(docker_sandbox)


def test_garbage_on_the_result_channel_spoils_a_real_pass(docker_sandbox, run_one, probe):
    # Writing to the result descriptor never helps: the record must be exactly the runner's.
    result = run_one(docker_sandbox, "import os\nos.write(3, b'ok\\n')\n")
    assert result.status is Status.FAILED


def test_huge_output_is_drained_and_truncated(docker_sandbox, run_one, probe):
    program = "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 100_000 + '\\n')\n    sys.stderr.write('y' * 50_000)\n"
    result = run_one(docker_sandbox, program, timeout_s=20.0)
    assert result.status is Status.PASSED  # finished: neither a hang nor a timeout
    assert len(result.stdout) < 4096 + 200 and "output truncated: 20000200 bytes" in result.stdout
    assert len(result.stderr) < 4096 + 200 and "output truncated: 10000000 bytes" in result.stderr
    probe(docker_sandbox)


def test_endless_output_is_a_timeout(docker_sandbox, run_one, probe):
    result = run_one(docker_sandbox, "while True:\n    print('x' * 1000)\n", timeout_s=1.0)
    assert result.status is Status.TIMEOUT and len(result.stdout) < 4096 + 200
    probe(docker_sandbox)
