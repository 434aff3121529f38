"""The host's end of one runner: a child process (``docker run -i ...`` or a local runner) spoken to over
its stdin/stdout, one JSON object per line, with deadlines on every read."""

from __future__ import annotations

import json
import os
import select
import subprocess
import tempfile
import time


class RunnerFailure(Exception):
    """The runner died, hung, or answered something that is not the protocol: a sandbox failure."""


class RunnerChannel:
    """Starts ``argv`` and waits for its ready line; then ``request(message, timeout_s)`` → reply dict."""

    def __init__(self, argv: list[str], name: str, start_timeout_s: float):
        self.name = name
        self._stderr = tempfile.TemporaryFile()
        # A session of its own: Ctrl-C in the terminal reaches only the host process, which then removes
        # the containers in order; when the host dies instead, the runner sees end-of-input and exits.
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
            bufsize=0,
        )
        self._buffer = bytearray()
        try:
            self.ready = self._read_line(time.monotonic() + start_timeout_s, what="the runner to start")
            if self.ready.get("ready") is not True:
                raise RunnerFailure(f"{name}: first line is not a ready record: {self.ready!r}")
        except BaseException:
            self.kill()
            raise

    def request(self, message: dict, timeout_s: float) -> dict:
        try:
            self._proc.stdin.write(json.dumps(message).encode() + b"\n")
        except (BrokenPipeError, OSError) as e:
            raise RunnerFailure(f"{self.name}: cannot send the job ({e}){self._stderr_tail()}") from e
        return self._read_line(time.monotonic() + timeout_s, what="the job's result")

    def _read_line(self, deadline: float, what: str) -> dict:
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunnerFailure(f"{self.name}: no answer in time while waiting for {what}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                self._proc.poll()
                raise RunnerFailure(
                    f"{self.name}: runner exited (status {self._proc.returncode}) while waiting for {what}"
                    f"{self._stderr_tail()}"
                )
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        try:
            reply = json.loads(line)
        except ValueError as e:
            raise RunnerFailure(
                f"{self.name}: runner answered a line that is not JSON: {line[:200]!r}"
            ) from e
        if not isinstance(reply, dict):
            raise RunnerFailure(f"{self.name}: runner answered {type(reply).__name__}, not an object")
        return reply

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read()[-2000:].decode("utf-8", "replace").strip()
        return f"; its stderr: {text}" if text else ""

    def close(self, wait_s: float = 5.0) -> None:
        """End of input (the runner exits), then make sure the process is gone."""
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()
        self._stderr.close()

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self.close(wait_s=5.0)
