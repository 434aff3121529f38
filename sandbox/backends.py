"""Where runners live: warm Docker containers (``DockerBackend``) or host processes (``LocalBackend``).

A backend knows how to check that it can work, the command line that starts one runner, and how to get
rid of one for good. The pool (``sandbox.pool``) does everything else the same way for both.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import warnings
from pathlib import Path

RUNNER_PATH = Path(__file__).with_name("runner.py")
DEFAULT_IMAGE = "reasoner-sandbox:latest"
MAKE_HINT = "run `make docker sandbox-image` (or pass backend='local' for the weaker local backend)"


class SandboxUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says what to do about it."""


class LocalBackendWarning(UserWarning):
    """Emitted whenever the local backend is chosen: it isolates much less than Docker."""


@functools.lru_cache(maxsize=1)
def runner_sha256() -> str:
    return hashlib.sha256(RUNNER_PATH.read_bytes()).hexdigest()


class DockerBackend:
    """One container per runner, started once and reused; the runner is the container's PID 1."""

    name = "docker"

    def __init__(self, image: str, memory_mb: int, cpus: float, pids_limit: int, tmpfs_mb: int):
        self.image = image
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.pids_limit = pids_limit
        self.tmpfs_mb = tmpfs_mb
        self.pool_id = uuid.uuid4().hex[:8]
        self._count = 0

    def check(self) -> None:
        if shutil.which("docker") is None:
            raise SandboxUnavailable(f"Docker backend: no `docker` client on PATH; {MAKE_HINT}.")
        version = _docker(["version", "--format", "{{.Server.Version}}"])
        if version.returncode != 0:
            raise SandboxUnavailable(
                f"Docker backend: no Docker engine answers ({version.stderr.strip()[:300]}); {MAKE_HINT}."
            )
        inspect = _docker(["image", "inspect", "--format", "{{.Id}}", self.image])
        if inspect.returncode != 0:
            raise SandboxUnavailable(f"Docker backend: image {self.image!r} is missing; {MAKE_HINT}.")

    def check_ready(self, ready: dict) -> None:
        if ready.get("sha256") != runner_sha256():
            raise SandboxUnavailable(
                f"Docker backend: image {self.image!r} runs a different sandbox/runner.py than this package "
                f"(stale image); run `make sandbox-image` to rebuild it."
            )
        if ready.get("pid") != 1:
            raise SandboxUnavailable(
                f"Docker backend: the runner is not PID 1 in its container (pid {ready.get('pid')}); "
                f"it cannot kill what jobs leave behind. Do not run the image with --init."
            )

    def new_name(self) -> str:
        self._count += 1
        return f"reasoner-sandbox-{self.pool_id}-{self._count}"

    def argv(self, name: str) -> list[str]:
        memory = f"{self.memory_mb}m"
        return [
            "docker", "run", "-i", "--rm", "--name", name,
            "--label", f"org.reasoner.sandbox.pool={self.pool_id}",
            "--network", "none",
            "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--read-only",
            "--tmpfs", f"/tmp:rw,nosuid,nodev,size={self.tmpfs_mb}m,mode=1777",
            "--shm-size", "16m",
            "--ipc", "private",
            "--user", "10001:10001",
            "--memory", memory, "--memory-swap", memory,
            "--pids-limit", str(self.pids_limit),
            "--cpus", f"{self.cpus:g}",
            "--ulimit", "core=0",
            "--ulimit", "nofile=1024:1024",
            "--log-driver", "none",
            self.image,
        ]  # fmt: skip

    def discard(self, names: list[str]) -> None:
        """Remove containers now (a hung or tainted one, or the whole pool on close); absent ones are fine."""
        if names:
            _docker(["rm", "--force", *names], timeout=60)

    def close(self) -> None:
        """Remove any container of this pool still there, by label."""
        listed = _docker(["ps", "-aq", "--filter", f"label=org.reasoner.sandbox.pool={self.pool_id}"])
        self.discard(listed.stdout.split())


class LocalBackend:
    """One host process per runner; each job is a forked child with rlimits, its own session and directory.

    Namespaces where ``unshare`` can make them (new PID and network namespace, so the runner is an init that
    kills everything a job leaves, and the job has no network). As root, jobs run as ``nobody``.
    """

    name = "local"

    def __init__(self):
        self._prefix = _unshare_prefix()
        self._python = _python_for_jobs()
        self._base = tempfile.mkdtemp(prefix="reasoner-sandbox-local-")
        os.chmod(self._base, 0o711)  # jobs may run as nobody: they must reach their own directory
        self._count = 0

    def check(self) -> None:
        isolation = (
            "new PID and network namespaces (no network)"
            if self._prefix
            else "NO namespaces (unshare unavailable): jobs can reach the network"
        )
        warnings.warn(
            "sandbox: the local backend is WEAKER than Docker: jobs run on this host as "
            f"{'nobody' if os.geteuid() == 0 else 'your user'}, with rlimits, their own session and directory, "
            f"and {isolation}; they can read what that user can read and write outside their directory. "
            "Use backend='docker' for untrusted code.",
            LocalBackendWarning,
            stacklevel=3,
        )

    def check_ready(self, ready: dict) -> None:
        pass

    def new_name(self) -> str:
        self._count += 1
        return f"local-{self._count}"

    def argv(self, name: str) -> list[str]:
        workdir_base = tempfile.mkdtemp(prefix=f"{name}-", dir=self._base)
        os.chmod(workdir_base, 0o711)
        argv = [*self._prefix, self._python, "-I", str(RUNNER_PATH), "--mode", "local"]
        argv += ["--workdir-base", workdir_base]
        if os.geteuid() == 0:
            argv += ["--uid", "65534", "--gid", "65534", "--nproc", "512"]
        return argv

    def discard(self, names: list[str]) -> None:
        pass  # the channel kills the process; with unshare --kill-child its namespace goes with it

    def close(self) -> None:
        shutil.rmtree(self._base, ignore_errors=True)


def _docker(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(["docker", *args], 124, "", f"`docker {args[0]}` timed out")


@functools.lru_cache(maxsize=1)
def _python_for_jobs() -> str:
    """This interpreter, unless we are root and ``nobody`` cannot import its standard library (e.g. one
    installed under /root): then a system python3 that it can."""
    if os.geteuid() != 0:
        return sys.executable
    candidates = dict.fromkeys(c for c in (sys.executable, "/usr/bin/python3", shutil.which("python3")) if c)
    for python in candidates:
        try:
            probe = subprocess.run(
                [python, "-I", "-c", "import json, socket, email.mime.text"],
                user=65534, group=65534, extra_groups=[], cwd="/", capture_output=True, timeout=30,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return python
    raise SandboxUnavailable(
        f"Local backend: running as root, jobs run as nobody, and nobody cannot use any of {list(candidates)} "
        "(standard library not readable). Install a system python3 or use backend='docker'."
    )


@functools.lru_cache(maxsize=1)
def _unshare_prefix() -> tuple[str, ...]:
    """The ``unshare`` arguments that work here, or () where namespaces cannot be made."""
    if shutil.which("unshare") is None:
        return ()
    user = () if os.geteuid() == 0 else ("--user", "--map-root-user")
    prefix = ("unshare", *user, "--pid", "--fork", "--kill-child", "--net", "--mount-proc")
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if probe.returncode == 0 else ()
