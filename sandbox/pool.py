"""``Sandbox``: a pool of warm runners that executes batches of jobs, in order, losing none."""

from __future__ import annotations

import atexit
import queue
import secrets
import threading
import weakref
from collections.abc import Sequence

from sandbox.backends import DEFAULT_IMAGE, DockerBackend, LocalBackend, SandboxUnavailable
from sandbox.channel import RunnerChannel, RunnerFailure
from sandbox.job import Job, Result, Status

ATTEMPTS = 2  # a job hit by a sandbox failure is retried once on a fresh runner, then reported as error
# Beyond the job's own timeout: the runner's kill, drain and wipe, and a loaded machine's scheduling.
REPLY_GRACE_S = 20.0


class Sandbox:
    """Runs untrusted Python programs; ``with Sandbox(...) as sb: results = sb.run(jobs)``.

    backend: "docker" (warm containers; raises ``SandboxUnavailable`` when no engine answers or the image
    is missing, never falls back) or "local" (host processes; weaker, warns when chosen).
    workers: runners (containers) working in parallel. image: the Docker image.
    output_limit_bytes: stdout and stderr are each truncated to this many bytes.
    container_memory_mb, cpus, pids_limit, tmpfs_mb: each container's cgroup limits and scratch size
    (a job's own ``memory_mb`` is enforced inside, as an address-space limit).
    """

    def __init__(
        self,
        backend: str = "docker",
        workers: int = 4,
        image: str = DEFAULT_IMAGE,
        output_limit_bytes: int = 64 * 1024,
        *,
        container_memory_mb: int = 1536,
        cpus: float = 1.0,
        pids_limit: int = 256,
        tmpfs_mb: int = 64,
        start_timeout_s: float = 120.0,
    ):
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"Sandbox: workers must be an int >= 1, got {workers!r}")
        if not isinstance(output_limit_bytes, int) or output_limit_bytes < 0:
            raise ValueError(f"Sandbox: output_limit_bytes must be an int >= 0, got {output_limit_bytes!r}")
        if backend == "docker":
            self._backend = DockerBackend(image, container_memory_mb, cpus, pids_limit, tmpfs_mb)
        elif backend == "local":
            self._backend = LocalBackend()
        else:
            raise ValueError(f"Sandbox: backend must be 'docker' or 'local', got {backend!r}")
        self.backend = backend
        self.workers = workers
        self.output_limit_bytes = output_limit_bytes
        self._start_timeout_s = start_timeout_s
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()  # run() from several threads: one batch at a time
        self._live: dict[str, RunnerChannel] = {}
        self._closed = False
        self._backend.check()
        # Also on interpreter exit without close(): the containers must not outlive us.
        self._finalizer = weakref.finalize(self, _close_all, self._backend, self._live, self._lock)
        atexit.register(self._finalizer)
        self._slots: list[RunnerChannel | None] = [None] * workers
        try:
            self._start_all()
        except BaseException:
            self.close()
            raise

    # --- public

    def run(self, jobs: Sequence[Job]) -> list[Result]:
        """Results in the order of ``jobs``, one per job, always (sandbox failures become ``ERROR``)."""
        if self._closed:
            raise RuntimeError("Sandbox.run() after close()")
        jobs = list(jobs)
        for job in jobs:
            if not isinstance(job, Job):
                raise TypeError(f"Sandbox.run() takes Job objects, got {type(job).__name__}: {job!r:.100}")
        with self._run_lock:
            return self._run(jobs)

    def _run(self, jobs: list[Job]) -> list[Result]:
        results: list[Result | None] = [None] * len(jobs)
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(len(jobs)):
            todo.put(i)
        threads = [
            threading.Thread(target=self._work, args=(slot, jobs, results, todo), daemon=True)
            for slot in range(min(self.workers, len(jobs)))
        ]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():  # join with a timeout, so that Ctrl-C reaches this thread
                t.join(0.2)
        if self._closed:  # close() from elsewhere while we ran: what did not run is a sandbox error
            for i, result in enumerate(results):
                if result is None:
                    results[i] = _error(jobs[i], ["the sandbox was closed before this job ran"])
        missing = [jobs[i].id for i, r in enumerate(results) if r is None]
        if missing:  # a bug of ours, never a job's doing: say so loudly
            raise RuntimeError(f"Sandbox lost {len(missing)} job(s): {missing[:10]}")
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Remove every runner (containers included). Safe to call twice."""
        self._closed = True
        self._finalizer()
        atexit.unregister(self._finalizer)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- workers

    def _work(self, slot: int, jobs: list[Job], results: list, todo: queue.SimpleQueue) -> None:
        while not self._closed:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            results[i] = self._run_one(slot, jobs[i])

    def _run_one(self, slot: int, job: Job) -> Result:
        message = {
            "id": job.id,
            "program": job.program,
            "timeout_s": job.timeout_s,
            "memory_mb": job.memory_mb,
            "output_limit": self.output_limit_bytes,
        }
        failures = []
        for _attempt in range(ATTEMPTS):
            message["token"] = secrets.token_hex(16)
            try:
                runner = self._slots[slot] or self._start(slot)
                reply = runner.request(message, job.timeout_s + REPLY_GRACE_S)
                if reply.get("token") != message["token"]:  # defence in depth: a line the job forged
                    raise RunnerFailure(
                        f"{runner.name}: a reply without this request's token: {reply!r:.200}"
                    )
                if reply.get("id") != job.id:
                    raise RunnerFailure(
                        f"{runner.name}: answered for job {reply.get('id')!r}, not {job.id!r}"
                    )
                status = Status(reply["status"])
                if status is Status.ERROR:
                    raise RunnerFailure(f"{runner.name}: {reply.get('detail') or 'runner error'}")
                if reply.get("tainted"):  # the job's result stands; the container does not serve again
                    self._discard(slot)
                return _result(job, status, reply)
            except (RunnerFailure, SandboxUnavailable, OSError, KeyError, ValueError) as e:
                failures.append(str(e))
                self._discard(slot)
        return _error(job, failures)

    # --- runners

    def _start_all(self) -> None:
        errors: list[BaseException] = []

        def start(slot: int) -> None:
            try:
                self._start(slot)
            except BaseException as e:  # noqa: B036 -- re-raised below, in the caller's thread
                errors.append(e)

        threads = [threading.Thread(target=start, args=(slot,), daemon=True) for slot in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
        if errors:
            unavailable = [e for e in errors if isinstance(e, SandboxUnavailable)]
            raise (unavailable or errors)[0]

    def _start(self, slot: int) -> RunnerChannel:
        with self._lock:
            if self._closed:
                raise RunnerFailure("the sandbox is closing")
            name = self._backend.new_name()
            argv = self._backend.argv(name)
        runner = RunnerChannel(argv, name, self._start_timeout_s)
        with self._lock:
            closed = self._closed
            if not closed:
                self._live[name] = runner
        if closed:  # close() ran while this one was starting
            self._backend.discard([name])
            runner.kill()
            raise RunnerFailure("the sandbox is closing")
        try:
            self._backend.check_ready(runner.ready)
        except BaseException:
            self._slots[slot] = runner
            self._discard(slot)
            raise
        self._slots[slot] = runner
        return runner

    def _discard(self, slot: int) -> None:
        runner, self._slots[slot] = self._slots[slot], None
        if runner is None:
            return
        with self._lock:
            self._live.pop(runner.name, None)
        self._backend.discard([runner.name])
        runner.kill()


def _result(job: Job, status: Status, reply: dict) -> Result:
    stderr = reply.get("stderr", "")
    detail = reply.get("detail") or ""
    if status is Status.TIMEOUT:
        detail = f"timed out after {job.timeout_s:g} s" + (f" ({detail})" if detail else "")
    if detail:
        stderr = f"{stderr}{'' if not stderr or stderr.endswith(chr(10)) else chr(10)}[sandbox: {detail}]"
    return Result(
        id=job.id,
        status=status,
        passed=status is Status.PASSED,
        duration_s=float(reply["duration_s"]),
        stdout=reply.get("stdout", ""),
        stderr=stderr,
    )


def _error(job: Job, failures: list[str]) -> Result:
    stderr = "[sandbox error, the program's outcome is unknown] " + " | ".join(failures)
    return Result(id=job.id, status=Status.ERROR, passed=False, duration_s=0.0, stdout="", stderr=stderr)


def _close_all(backend, live: dict, lock: threading.Lock) -> None:
    with lock:
        runners = list(live.values())
        live.clear()
    backend.discard([r.name for r in runners])  # one `docker rm -f` for the whole pool
    for runner in runners:
        runner.kill()
    backend.close()  # and whatever else carries this pool's label (a container still starting)
