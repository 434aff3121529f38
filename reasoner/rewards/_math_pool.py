"""A long-lived pool of worker processes that run math checks under a hard time limit.

Why processes: sympy can run for minutes on a hostile answer (``9^{9^{9^9}}``, ``(x+1)^{10000}``), partly
inside C code that no signal interrupts, and math-verify's own timeout is ``signal.alarm``, which only
works on a process's main thread -- trainers that called it from threads have silently scored every answer
0. Here each check is sent to a worker; the worker bounds it with a timer (``_math_sympy.deadline``, at
``INNER_FRACTION`` of the budget) and, if that does not end it, the caller kills the worker when the budget
is spent and starts a replacement in the background. A bad answer costs at most its budget; it never hangs
a batch or the caller.

Each worker is its own interpreter (``_math_worker``), started with the caller's ``sys.path`` and talking
over a socket pair: unlike multiprocessing's fork server or spawn, it never imports the caller's main module,
so the checker works from any script, ``python -c`` or a script read from stdin, with no entry-point guard.
A replacement imports sympy afresh (about a second) in a background thread while the other workers go on.
The pool is created on first use, shared by all threads of the process, forgotten in a forked child, and
shut down at interpreter exit.
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait

from reasoner.rewards._math_types import CheckerError, CheckTimeout, Verdict

# What the parent runs (``-I``: no PYTHON* variables, no user site; the parent's sys.path comes as argv[1],
# so the worker imports exactly the modules its parent would, wherever they come from).
WORKER_BOOT = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "  # Ctrl-C is the parent's, even at start-up
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from reasoner.rewards._math_worker import main; main(int(sys.argv[2]))"
)

log = logging.getLogger(__name__)

INNER_FRACTION = 0.8  # the worker's own timer fires at this share of the budget; the kill comes at 100%
# Importing sympy and warming up on a loaded machine can be slow; a worker that never starts is a bug.
STARTUP_TIMEOUT_S = 120.0
MEMORY_HEADROOM_MB = 4096  # address space a worker may add to what it has after start-up


# --- worker side ---------------------------------------------------------------------------------------


def _serve(conn: Connection, memory_headroom_mb: int | None) -> None:
    """Worker main loop: receive ``(pred, gold, seconds)``, reply ``(status, payload)``; ``None`` ends it."""
    import signal
    import traceback

    from reasoner.rewards import _math_sympy

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it ends us
    _limit_memory(memory_headroom_mb)
    _math_sympy.quiet_math_verify()
    _math_sympy.warm_up()  # before reporting ready, so that it counts against no check's budget
    conn.send(("ready", os.getpid()))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if job is None:
            return
        pred, gold, seconds = job
        try:
            reply = ("verdict", check_one(pred, gold, seconds).value)
        except Exception:  # a bug of ours (bad input is handled inside): the caller raises it
            reply = ("error", traceback.format_exc())
        conn.send(reply)


def check_one(pred: str, gold: str, seconds: float) -> Verdict:
    """One check in this process, bounded by a timer; only on a main thread (a worker's, or see run_inline)."""
    from reasoner.rewards import _math_sympy

    try:
        with _math_sympy.deadline(seconds):
            return Verdict.EQUAL if _math_sympy.equivalent(pred, gold) else Verdict.DIFFERENT
    except CheckTimeout:
        return Verdict.TIMEOUT
    except (MemoryError, RecursionError):  # the input's fault, not ours: score 0
        return Verdict.FAILED


def run_inline(jobs: Sequence[tuple[str, str]], timeout_s: float) -> list[Verdict]:
    """Checks in the calling process, for daemonic processes (e.g. ``multiprocessing.Pool`` workers), which
    may not start workers of their own. Bounded by the in-process timer only (no kill), so main thread only."""
    if threading.current_thread() is not threading.main_thread():
        raise CheckerError(
            "the math checker cannot bound its time here: this is a daemonic process, which may not start "
            "worker processes, and not its main thread, where a timer could stop a check. Call it from the "
            "process's main thread, or from a non-daemonic process."
        )
    from reasoner.rewards import _math_sympy

    _math_sympy.quiet_math_verify()
    _math_sympy.warm_up()
    return [check_one(pred, gold, timeout_s) for pred, gold in jobs]


def may_start_workers() -> bool:
    """False in a daemonic process: multiprocessing forbids it children (``multiprocessing.Pool`` workers)."""
    return not multiprocessing.current_process().daemon


def _limit_memory(headroom_mb: int | None) -> None:
    if headroom_mb is None:
        return
    try:
        import resource

        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):  # not Linux: no cheap way to read our size; no limit
        return
    limit = current + headroom_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


# --- caller side ---------------------------------------------------------------------------------------


class _Worker:
    __slots__ = ("process", "conn")

    def __init__(self, process: subprocess.Popen, conn: Connection):
        self.process, self.conn = process, conn


def _start_worker(memory_headroom_mb: int | None) -> _Worker:
    """Start one worker interpreter; it is ready when it sends ``("ready", pid)`` (see ``_start_one``)."""
    if not sys.executable:
        raise RuntimeError("sys.executable is empty: no Python interpreter to run math checker workers with")
    ours, theirs = socket.socketpair()
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-c",
                WORKER_BOOT,
                json.dumps(sys.path),
                str(theirs.fileno()),
                "none" if memory_headroom_mb is None else str(memory_headroom_mb),
            ],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # the protocol runs on the socket; stray prints go nowhere
            close_fds=True,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return _Worker(process, Connection(ours.detach()))


class WorkerPool:
    """Worker processes checked out one job at a time; safe to use from many threads at once."""

    def __init__(
        self,
        size: int,
        memory_headroom_mb: int | None = MEMORY_HEADROOM_MB,
        inner_fraction: float = INNER_FRACTION,
    ):
        if size < 1:
            raise ValueError(f"a worker pool needs at least 1 worker, got {size}")
        if not inner_fraction > 0:
            raise ValueError(f"inner_fraction must be > 0, got {inner_fraction}")
        self.size = size
        self.inner_fraction = inner_fraction  # > 1 leaves every overrun to the kill (tests use that)
        self._memory = memory_headroom_mb
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._starting = 0
        self._start_error: str | None = None
        self._closed = False
        self.owner_pid = os.getpid()
        self.replaced = 0  # workers killed or lost and replaced, for tests and metrics

    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        with self._cond:
            return [w.process.pid for w in self._all]

    # -- running jobs --

    def run(
        self, jobs: Sequence[tuple[str, str]], timeout_s: float, workers: int | None = None
    ) -> list[Verdict]:
        """Check each ``(pred, gold)`` (normalised answers) in parallel; one verdict per job, in order."""
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        width = self.size if workers is None else workers
        if width < 1:
            raise ValueError(f"workers must be >= 1, got {width}")
        self._grow(width)
        results: list[Verdict | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        inflight: dict[Connection, tuple[_Worker, int, float]] = {}
        try:
            while pending or inflight:
                while pending and len(inflight) < width:
                    worker = self._checkout(block=not inflight)
                    if worker is None:
                        break
                    i = pending[0]
                    pred, gold = jobs[i]
                    try:
                        worker.conn.send((pred, gold, timeout_s * self.inner_fraction))
                    except OSError:  # it died while idle (killed from outside): replace it, keep the job
                        log.warning("a math checker worker died while idle; replacing it")
                        self._discard(worker)
                        continue
                    pending.popleft()
                    inflight[worker.conn] = (worker, i, time.monotonic() + timeout_s)
                soonest = min(deadline for _, _, deadline in inflight.values())
                wait_s = max(0.0, soonest - time.monotonic())
                if pending and len(inflight) < width:
                    wait_s = min(wait_s, 0.05)  # look again soon for workers that came back or started
                for conn in wait(list(inflight), timeout=wait_s):
                    worker, i, _ = inflight.pop(conn)
                    results[i] = self._receive(worker)
                now = time.monotonic()
                for conn, (worker, i, deadline) in list(inflight.items()):
                    if deadline <= now and not conn.poll():
                        del inflight[conn]
                        log.warning("math check exceeded %.1fs; replacing its worker", timeout_s)
                        self._discard(worker)
                        results[i] = Verdict.TIMEOUT
        finally:
            for worker, _, _ in inflight.values():  # interrupted: their answers would reach the next caller
                self._discard(worker)
        return results  # type: ignore[return-value]  # every slot was filled above

    def _receive(self, worker: _Worker) -> Verdict:
        try:
            status, payload = worker.conn.recv()
        except (EOFError, OSError):
            log.warning("a math checker worker died (exit code %s); replacing it", worker.process.poll())
            self._discard(worker)
            return Verdict.FAILED
        if status == "verdict":
            verdict = Verdict(payload)
            if verdict is Verdict.FAILED:  # out of memory or recursion: start afresh
                self._discard(worker)
            else:
                self._checkin(worker)
            return verdict
        self._checkin(worker)
        raise CheckerError(f"the math checker raised inside its worker process:\n{payload}")

    # -- worker bookkeeping --

    def _checkout(self, block: bool) -> _Worker | None:
        with self._cond:
            while True:
                if self._closed:
                    raise CheckerError("the math checker's worker pool is shut down")
                if self._idle:
                    return self._idle.pop()
                if self._start_error is not None and not self._all and not self._starting:
                    error, self._start_error = self._start_error, None  # the next call tries again
                    raise CheckerError(f"math checker workers cannot start: {error}")
                if not self._all and not self._starting:
                    self._grow_locked(self.size)
                if not block:
                    return None
                self._cond.wait(timeout=1.0)

    def _checkin(self, worker: _Worker) -> None:
        with self._cond:
            if worker in self._all:
                self._idle.append(worker)
                self._cond.notify()

    def _discard(self, worker: _Worker) -> None:
        """Kill ``worker`` (it may be stuck in C code) and start a replacement in the background."""
        _kill(worker)
        with self._cond:
            self._all.discard(worker)
            self.replaced += 1
            if not self._closed:
                self._grow_locked(self.size)

    def _grow(self, width: int) -> None:
        with self._cond:
            self.size = max(self.size, width)
            self._grow_locked(self.size)

    def _grow_locked(self, target: int) -> None:
        for _ in range(target - len(self._all) - self._starting):
            self._starting += 1
            threading.Thread(target=self._start_one, name="math-checker-start", daemon=True).start()

    def _start_one(self) -> None:
        worker, error = None, None
        try:
            worker = _start_worker(self._memory)
            if not worker.conn.poll(STARTUP_TIMEOUT_S):
                raise TimeoutError(f"no ready signal within {STARTUP_TIMEOUT_S:.0f}s")
            try:
                status, _ = worker.conn.recv()
            except EOFError:
                code = worker.process.wait(timeout=5)
                raise RuntimeError(
                    f"the worker exited with code {code} before it was ready (its traceback is on stderr)"
                ) from None
            if status != "ready":
                raise RuntimeError(f"unexpected first message {status!r}")
        except Exception as e:  # not swallowed: _checkout raises it as CheckerError in every waiting caller
            error = f"{type(e).__name__}: {e}"
            if worker is not None:
                _kill(worker)
            worker = None
        with self._cond:
            self._starting -= 1
            if worker is not None and self._closed:
                _kill(worker)
            elif worker is not None:
                self._all.add(worker)
                self._idle.append(worker)
                self._start_error = None
            elif not self._closed:  # (a start cut short by shutdown is no error)
                log.error("a math checker worker failed to start: %s", error)
                self._start_error = error
            self._cond.notify_all()

    def close(self) -> None:
        """Stop all workers (idle ones politely, busy ones by force)."""
        with self._cond:
            self._closed = True
            workers, idle = list(self._all), set(self._idle)
            self._all.clear()
            self._idle.clear()
            self._cond.notify_all()
        for worker in workers:
            if worker in idle:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass  # already gone
        for worker in workers:
            try:
                worker.process.wait(timeout=1 if worker in idle else 0.001)
            except subprocess.TimeoutExpired:
                _kill(worker)
            worker.conn.close()


def _kill(worker: _Worker) -> None:
    worker.process.kill()
    try:
        worker.process.wait(timeout=5)
    except subprocess.TimeoutExpired:  # stuck in the kernel: it dies when it can; nothing waits on it
        log.warning("math checker worker %d did not exit within 5s of SIGKILL", worker.process.pid)
    worker.conn.close()


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()
_HOOKS_INSTALLED = False


def default_workers() -> int:
    """One worker per available CPU, at most 8 (each is an interpreter with sympy loaded, ~100 MB)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def get_pool(workers: int | None = None) -> WorkerPool:
    """The process-wide pool, created on first use (and again in a forked child)."""
    global _POOL, _HOOKS_INSTALLED
    with _POOL_LOCK:
        if _POOL is None or _POOL.owner_pid != os.getpid():
            _POOL = WorkerPool(workers or default_workers())
            if not _HOOKS_INSTALLED:
                atexit.register(shutdown)
                if hasattr(os, "register_at_fork"):
                    os.register_at_fork(after_in_child=_forget_in_child)
                _HOOKS_INSTALLED = True
        return _POOL


def shutdown() -> None:
    """Stop the process-wide pool's workers (at exit, or to free memory); the next check starts a new pool."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None and pool.owner_pid == os.getpid():
        pool.close()


def _forget_in_child() -> None:
    # A forked child must not talk to its parent's workers over the inherited pipes.
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()
