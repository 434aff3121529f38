"""The runner: a long-lived process that executes untrusted programs one at a time, each in a fresh child.

This file is self-contained (standard library only) because it runs inside the sandbox image as
``python3 -I /opt/sandbox/runner.py --mode container`` (PID 1 of the container) and, for the local backend,
on the host as ``python3 -I sandbox/runner.py --mode local ...``. It is never imported by the host package
except to hash it (the host checks that the image's runner is this exact file).

Protocol (one JSON object per line). Runner → host first: ``{"ready": true, "sha256": ..., "pid": ...}``.
Then, per line the host writes, ``{"id", "token", "program", "timeout_s", "memory_mb", "output_limit"}``, the
runner answers one line ``{"id", "token", "status", "duration_s", "stdout", "stderr", "tainted", "detail"}``
and waits for the next. End of input ends the runner. The token is the host's, fresh per request: a reply
without it is not the runner's.

How a job runs, and why:
- The child is *forked* from this warm interpreter (no interpreter start-up per job: that is what makes the
  isolated pool faster than one plain ``python3`` per job). It starts a new session, lowers its rlimits,
  gets /dev/null on fd 0, a fresh pipe on fd 1 and fd 2 (drained by the runner while the program runs, kept
  up to a bound), a private result pipe on fd 3, and closes every other descriptor, so the program can never
  write to the host channel. Then it runs the program as ``__main__`` with ``exec``.
- Pass is decided here, never from the program's output: the child writes ``<nonce>:ok`` to the result pipe
  only after the program's last top-level statement returned, from the original process (not a fork of it),
  and then exits 0. ``sys.exit``/``SystemExit`` are caught as failures, ``os._exit`` skips the record,
  extra bytes on the result pipe make the record invalid. The runner requires record *and* exit status 0.
- Timeouts are enforced by this process, which the job cannot signal: as PID 1 of the container's PID
  namespace it ignores every signal it has no handler for (SIGKILL included) when it comes from inside. After
  every job it kills every other process in the namespace (``kill(-1, SIGKILL)``, detached ones included),
  reaps them, and wipes all writable space. Outside a PID namespace (local mode without ``unshare``) it is a
  child subreaper instead and kills its descendants, which is weaker (documented in ``sandbox``).
- The runner is non-dumpable, so a job running under the same uid can neither ptrace it nor open its
  ``/proc/1/fd`` entries.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import select
import shutil
import signal
import sys
import time

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
RESULT_FD = 3
RESULT_LIMIT = 4096
# Writable places in the container (tmpfs mounts); everything in them is deleted after each job.
CONTAINER_SCRATCH = ("/tmp", "/dev/shm", "/dev/mqueue", "/var/tmp")
# Modules imported once here so that forked jobs find them ready (HumanEval-style programs use these).
WARM_MODULES = (
    "math re typing collections itertools functools heapq string bisect hashlib random statistics fractions "
    "decimal copy operator datetime json traceback io types dataclasses enum abc numbers array textwrap "
    "unittest"
).split()


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def _write_line(obj: dict) -> None:
    sys.stdout.buffer.write(json.dumps(obj).encode() + b"\n")
    sys.stdout.buffer.flush()


# ----------------------------------------------------------------------------------------------- child side


def _child(job: dict, nonce: str, fds: dict, workdir: str, runner: Runner) -> None:
    """Runs in the forked child; never returns. Reports ``<nonce>:<outcome>`` on RESULT_FD, then exits."""
    outcome = "setup"
    # Bound now: the program may replace these in the os and sys modules (e.g. a getpid that lies, so that
    # a fork of the program would report for it).
    getpid, write, exit_, settrace, setprofile = os.getpid, os.write, os._exit, sys.settrace, sys.setprofile
    my_pid = getpid()
    try:
        os.setsid()
        os.dup2(fds["null"], 0)
        os.dup2(fds["out"], 1)
        os.dup2(fds["err"], 2)
        os.dup2(fds["res"], RESULT_FD)
        os.closerange(RESULT_FD + 1, 1 << 16)  # the host channel, the runner's pipe ends, everything else
        _limit_child(job, runner.nproc)
        if runner.uid is not None:
            os.setgroups([])
            os.setgid(runner.gid)
            os.setuid(runner.uid)
        os.chdir(workdir)
        os.environ.update(HOME=workdir, TMPDIR=workdir, PWD=workdir)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        import io
        import types

        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace")
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
        )
        sys.argv = ["<program>"]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        program = job["program"]
        job = fds = None  # noqa: F841 -- nothing of the runner's job record stays reachable from here
        outcome = "raised"  # from here on, whatever goes wrong is the program's doing (SyntaxError too)
        try:
            exec(compile(program, "<program>", "exec", dont_inherit=True), main.__dict__)
        finally:
            settrace(None)  # a trace or profile function of the program must not run in our frame
            setprofile(None)
        outcome = "ok"
    except MemoryError:
        outcome = "memory"
        _print_exception()
    except BaseException:  # noqa: B036 -- anything the program raises (SystemExit included) is a failure
        _print_exception()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: B036 -- a broken stream of the program's own making changes nothing
            pass
    try:
        if getpid() == my_pid:  # a fork of the program that reaches the end is not the program
            write(RESULT_FD, f"{nonce}:{outcome}\n".encode())
    finally:
        exit_(0 if outcome == "ok" else 1)


def _print_exception() -> None:
    """The program's traceback on its stderr, without the runner's own frame; never raises."""
    try:
        import traceback

        etype, value, tb = sys.exc_info()
        tb = tb.tb_next if tb is not None else None
        sys.stderr.write("".join(traceback.format_exception(etype, value, tb, limit=20)))
    except BaseException:  # noqa: B036 -- e.g. an exception whose __str__ raises; the status says enough
        pass


def _limit_child(job: dict, nproc: int | None) -> None:
    import resource

    memory = int(job["memory_mb"]) * 1024 * 1024
    cpu = int(math.ceil(float(job["timeout_s"]))) + 1
    limits = [
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, 64 * 1024 * 1024),
        (resource.RLIMIT_CORE, 0),
    ]
    if nproc is not None:  # local mode only: in a container the pids cgroup bounds processes
        limits.append((resource.RLIMIT_NPROC, nproc))
    for what, value in limits:
        soft, hard = resource.getrlimit(what)
        new = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(what, (new, new))
    try:  # the OOM killer should pick a job before the runner; raising the score needs no privilege
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------- runner side


class Runner:
    def __init__(
        self, mode: str, workdir_base: str | None, uid: int | None, gid: int | None, nproc: int | None
    ):
        if (uid is None) != (gid is None):
            raise SystemExit("runner: --uid and --gid go together")
        self.mode = mode
        self.uid, self.gid, self.nproc = uid, gid, nproc
        self.is_init = os.getpid() == 1
        if mode == "container":
            self.workdir_base = "/tmp"
        else:
            if not workdir_base:
                raise SystemExit("runner: --mode local needs --workdir-base")
            self.workdir_base = workdir_base
        self.jobs_done = 0

    # --- one job

    def run(self, job: dict) -> dict:
        nonce = os.urandom(16).hex()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        workdir = self._fresh_workdir()
        oom_before = _oom_kills()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # pragma: no cover -- child
            try:
                _child(job, nonce, {"out": out_w, "err": err_w, "res": res_w, "null": null}, workdir, self)
            finally:
                os._exit(1)
        for fd in (out_w, err_w, res_w, null):
            os.close(fd)
        limit = int(job["output_limit"])
        streams = {out_r: _Capture(limit), err_r: _Capture(limit), res_r: _Capture(RESULT_LIMIT)}
        timed_out, status = self._watch(pid, streams, start + float(job["timeout_s"]))
        duration = time.monotonic() - start
        tainted, detail = self._clean_up(streams)
        record = streams[res_r].data.decode("ascii", "replace")
        outcome = None
        for name in ("ok", "memory", "raised", "setup"):
            if record == f"{nonce}:{name}\n":
                outcome = name
        status_name, why = _status(timed_out, status, outcome, _oom_kills() > oom_before)
        if status_name == "error":
            tainted, detail = True, why
        elif why:
            detail = "; ".join(x for x in (why, detail) if x)
        return {
            "id": job["id"],
            "token": job["token"],
            "status": status_name,
            "duration_s": round(duration, 6),
            "stdout": streams[out_r].text(),
            "stderr": streams[err_r].text(),
            "tainted": tainted,
            "detail": detail,
        }

    def _watch(self, pid: int, streams: dict, deadline: float) -> tuple[bool, int | None]:
        """Drain the pipes until the child exits or the deadline passes; returns (timed_out, wait status)."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None  # old kernel or seccomp profile: fall back to polling waitpid
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        status = None
        try:
            while True:
                wpid, wstatus = os.waitpid(pid, os.WNOHANG)
                if wpid == pid:
                    status = wstatus
                    return False, status
                left = deadline - time.monotonic()
                if left <= 0:
                    self._kill_all(pid)
                    _, status = os.waitpid(pid, 0)
                    return True, status
                wait_ms = left * 1000 if pidfd is not None else min(left * 1000, 5)
                for fd, _event in poller.poll(max(1, math.ceil(wait_ms))):
                    if fd in streams and not streams[fd].read_from(fd):
                        poller.unregister(fd)
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _clean_up(self, streams: dict) -> tuple[bool, str]:
        """Kill whatever the job left, drain its pipes, wipe its files. Returns (tainted, detail)."""
        problems = []
        self._kill_all(None)
        if not self._reap_all(deadline=time.monotonic() + 2.0):
            problems.append("processes survived SIGKILL")
        # Every writer is dead now, so each pipe reaches end-of-file; bounded anyway.
        deadline = time.monotonic() + 1.0
        open_fds = list(streams)
        while open_fds and time.monotonic() < deadline:
            r, _, _ = select.select(open_fds, [], [], 0.05)
            for fd in r:
                if not streams[fd].read_from(fd):
                    open_fds.remove(fd)
        if open_fds:
            problems.append("output pipes still open after the job's processes were killed")
        for fd in streams:
            os.close(fd)
        problems += self._wipe()
        return bool(problems), "; ".join(problems)

    # --- process and file hygiene

    def _kill_all(self, child: int | None) -> None:
        if self.is_init:
            # PID 1 of a PID namespace: -1 means every other process of this namespace, and nothing outside it.
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        # Not an init (local mode without unshare): kill the job's session, then every descendant; we are a
        # child subreaper, so detached grandchildren are re-parented to us and stay findable.
        if child is not None:
            try:
                os.killpg(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for _ in range(50):
            victims = _descendants(os.getpid())
            if not victims:
                return
            for victim in victims:
                try:
                    os.kill(victim, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _reap_all(self, deadline: float) -> bool:
        while True:
            try:
                wpid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if wpid == 0:
                if time.monotonic() > deadline:
                    return False
                if not self.is_init:
                    self._kill_all(None)
                time.sleep(0.001)

    def _fresh_workdir(self) -> str:
        self.jobs_done += 1
        path = os.path.join(self.workdir_base, f"job-{self.jobs_done}")
        os.mkdir(path, 0o700)
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)
        return path

    def _wipe(self) -> list[str]:
        problems = []
        roots = CONTAINER_SCRATCH if self.mode == "container" else (self.workdir_base,)
        for root in roots:
            try:
                entries = os.listdir(root)
            except FileNotFoundError:
                continue
            except OSError as e:
                problems.append(f"cannot list {root}: {e}")
                continue
            for name in entries:
                path = os.path.join(root, name)
                try:
                    _remove(path)
                except OSError as e:
                    problems.append(f"cannot remove {path}: {e}")
        if self.mode == "container":
            for kind in ("shm", "sem", "msg"):
                try:
                    with open(f"/proc/sysvipc/{kind}") as f:
                        if len(f.read().splitlines()) > 1:
                            problems.append(f"System V {kind} objects left behind")
                except OSError:
                    pass
        return problems


class _Capture:
    """Keeps the first ``limit`` bytes read from a pipe and counts the rest (which it throws away)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def read_from(self, fd: int) -> bool:
        """One read; False at end-of-file."""
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self.total += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        return True

    def text(self) -> str:
        text = self.data.decode("utf-8", "replace")
        if self.total > len(self.data):
            text += f"\n[... output truncated: {self.total} bytes written, first {len(self.data)} kept]"
        return text


def _status(timed_out: bool, wstatus: int | None, outcome: str | None, oom_killed: bool) -> tuple[str, str]:
    """(status, reason) from what was observed outside the program; pass needs record *and* clean exit."""
    if timed_out:
        return "timeout", ""
    if outcome == "setup":
        return "error", "the runner could not set up the job's process"
    if wstatus is None:
        return "error", "no exit status"
    if os.WIFSIGNALED(wstatus):
        sig = os.WTERMSIG(wstatus)
        if sig == signal.SIGXCPU:
            return "timeout", "CPU time limit"
        if sig == signal.SIGKILL and oom_killed:
            return "memory", "killed by the out-of-memory killer"
        return "failed", f"killed by signal {signal.Signals(sig).name}"
    code = os.WEXITSTATUS(wstatus)
    if outcome == "ok" and code == 0:
        return "passed", ""
    if outcome == "memory":
        return "memory", "MemoryError"
    if oom_killed:
        return "memory", "killed by the out-of-memory killer"
    if outcome is None:
        return "failed", f"exited with status {code} before the end of the program"
    return "failed", ""


def _oom_kills() -> int:
    """OOM kills so far in this container's memory cgroup (v2 or v1); 0 when not readable."""
    for path, key in (
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ):
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except OSError:
            continue
    return 0


def _descendants(root: int) -> list[int]:
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _remove(path: str) -> None:
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    # A job may leave directories without read, write or search permission. They are ours (same uid, or we
    # are root): restore it top-down (os.walk lists a directory after its chmod), then delete.
    os.chmod(path, 0o700)
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    shutil.rmtree(path)


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("container", "local"), required=True)
    parser.add_argument("--workdir-base", help="local mode: a private directory for the jobs' directories")
    parser.add_argument("--uid", type=int, help="local mode: run jobs as this uid (when the runner is root)")
    parser.add_argument("--gid", type=int)
    parser.add_argument("--nproc", type=int, help="local mode: RLIMIT_NPROC for jobs")
    args = parser.parse_args(argv)

    # Before anything else: no ptrace, no /proc/<pid>/fd for processes of the same uid (the jobs).
    _prctl(PR_SET_DUMPABLE, 0)
    if os.getpid() != 1:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    # As PID 1, signals without a handler are ignored when sent from inside the namespace: drop Python's
    # SIGINT handler so that a job cannot interrupt the runner.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    for name in WARM_MODULES:
        __import__(name)
    import gc

    gc.freeze()  # forked children do not dirty (copy) the pages of these objects when they collect
    with open(os.path.abspath(__file__), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    runner = Runner(args.mode, args.workdir_base, args.uid, args.gid, args.nproc)
    runner._wipe()
    _write_line({"ready": True, "sha256": sha, "pid": os.getpid()})
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return
        job = json.loads(line)
        try:
            result = runner.run(job)
        except Exception as e:  # noqa: BLE001 -- reported to the host as a sandbox error, which replaces us
            import traceback

            result = {
                "id": job.get("id"),
                "token": job.get("token"),
                "status": "error",
                "duration_s": 0.0,
                "stdout": "",
                "stderr": "",
                "tainted": True,
                "detail": f"runner failure: {''.join(traceback.format_exception_only(type(e), e)).strip()}",
            }
        _write_line(result)


if __name__ == "__main__":
    main()
