"""sandbox: run untrusted Python programs (policy-written code) and say whether each one passed.

    from sandbox import Job, Sandbox
    with Sandbox(backend="docker", workers=4) as sb:
        results = sb.run([Job(id="t1", program="assert 1 + 1 == 2")])   # same order, one per job

Batch CLI: ``python -m sandbox run JOBS.jsonl [--backend docker|local] [--workers N]`` (see ``sandbox.cli``).

**Pass**: a program passes iff its top-level code runs to its last statement without raising, within its
time and memory limits. ``sys.exit(0)``, ``raise SystemExit``, ``os._exit(0)``, being killed, and anything
printed or written to any descriptor are not passes: the runner decides from the exit status together with
a record that the harness writes after the last statement, from the original process, carrying a per-job
nonce that is never handed to the program (see ``sandbox/runner.py``); output is never parsed. ``error``
means the sandbox failed (after one retry on a fresh runner), never the program.

What the Docker backend protects against (each has a test in ``tests/sandbox/``):
- reaching the network (``--network none``) or the host (non-root user, all capabilities dropped,
  no-new-privileges, read-only root filesystem, Docker's default seccomp profile);
- running forever (wall-clock timeout enforced by the runner, which the job cannot signal: it is PID 1),
  including processes that detach themselves (after every job every other process in the container is
  killed);
- eating memory (per-job address-space limit, reported as ``memory``; the container's memory cgroup and
  the OOM killer, which prefers jobs, behind it), processes (pids cgroup: fork bombs), CPU (``--cpus``),
  disk (size-capped tmpfs, file-size limit);
- flooding output (drained while the program runs and truncated to ``output_limit_bytes``);
- leaving anything for the next job (files in every writable place are deleted, leftover System V IPC
  taints the container, which is then replaced);
- faking a pass by exiting early, printing success records, writing to inherited descriptors, or killing
  the runner.

What it does NOT protect against:
- kernel or container-runtime exploits (a container is not a VM; use gVisor/Kata/VMs for that threat);
- a program that deliberately introspects the runner's own memory from inside its process (its caller's
  frame via ``sys._getframe``, or ``ctypes``) to forge the pass record; the runner's source is public. The
  record cannot be faked by output, exit codes or signals, only by reading the harness itself;
- a later job reading fragments of an earlier job's source or output from freed runner memory (jobs are
  forked from the same warm runner) with ``ctypes``;
- side channels and CPU contention between jobs running in parallel containers; timeouts are wall-clock,
  so on an overloaded host a slow but correct program can time out.

The local backend (``backend="local"``) is weaker and warns when chosen: jobs are processes on the host
(as ``nobody`` when we are root) with rlimits, their own session and directory, and a new PID and network
namespace only where ``unshare`` works; they can read what that user can read and write elsewhere.
"""

from sandbox.backends import LocalBackendWarning, SandboxUnavailable
from sandbox.job import Job, Result, Status
from sandbox.pool import Sandbox

__all__ = ["Job", "LocalBackendWarning", "Result", "Sandbox", "SandboxUnavailable", "Status"]
