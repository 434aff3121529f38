"""What goes into the sandbox (``Job``) and what comes out (``Result``, with a ``Status``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum


class Status(str, Enum):
    """How a job ended. Only ``PASSED`` is a pass; ``ERROR`` means the sandbox failed, never the program."""

    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    ERROR = "error"


@dataclass
class Job:
    """One untrusted Python program to run.

    >>> Job(id="t1", program="assert 1 + 1 == 2")
    Job(id='t1', program='assert 1 + 1 == 2', timeout_s=10.0, memory_mb=512)
    >>> Job(id="t1", program="pass", timeout_s=0)
    Traceback (most recent call last):
    ...
    ValueError: Job 't1': timeout_s must be a positive number of seconds, got 0
    """

    id: str
    program: str
    timeout_s: float = 10.0
    memory_mb: int = 512

    def __post_init__(self) -> None:
        if not isinstance(self.id, str):
            raise TypeError(f"Job id must be a str, got {type(self.id).__name__}: {self.id!r}")
        if not isinstance(self.program, str):
            raise TypeError(f"Job {self.id!r}: program must be a str, got {type(self.program).__name__}")
        if (
            isinstance(self.timeout_s, bool)
            or not isinstance(self.timeout_s, (int, float))
            or not math.isfinite(self.timeout_s)
            or self.timeout_s <= 0
        ):
            raise ValueError(
                f"Job {self.id!r}: timeout_s must be a positive number of seconds, got {self.timeout_s!r}"
            )
        if isinstance(self.memory_mb, bool) or not isinstance(self.memory_mb, int) or self.memory_mb < 16:
            raise ValueError(f"Job {self.id!r}: memory_mb must be an int >= 16 (MiB), got {self.memory_mb!r}")


@dataclass
class Result:
    """The outcome of one job. ``passed`` is True iff ``status`` is ``Status.PASSED``.

    >>> Result("t1", Status.PASSED, True, 0.01, "", "").to_dict()["status"]
    'passed'
    """

    id: str
    status: Status
    passed: bool
    duration_s: float
    stdout: str
    stderr: str

    def to_dict(self) -> dict:
        """The CLI's JSON record: ``{"id", "status", "passed", "duration_s", "stdout", "stderr"}``."""
        record = asdict(self)
        record["status"] = self.status.value
        return record
