"""What a math check can come to (``Verdict``) and its two exceptions: a leaf module that the pool, the worker and
the sympy side all import, so none of them imports another back."""

from __future__ import annotations

import enum


class Verdict(enum.Enum):
    EQUAL = "equal"
    DIFFERENT = "different"
    NO_ANSWER = "no_answer"  # nothing to extract from the completion
    TIMEOUT = "timeout"  # the check ran past its budget (the worker timed out or was killed)
    FAILED = "failed"  # the worker died or ran out of memory/recursion on this input


class CheckTimeout(BaseException):
    """A check ran past its time budget (raised inside a worker by ``_math_sympy.deadline``).

    A ``BaseException``, like math-verify's ``TimeoutException``, so that the ``except Exception`` blocks
    inside math-verify and sympy cannot swallow it. Callers see ``Verdict.TIMEOUT`` and a score of 0.
    """


class CheckerError(RuntimeError):
    """A bug in the checker itself: a worker raised something other than a bad-input failure."""


__all__ = ["CheckTimeout", "CheckerError", "Verdict"]
