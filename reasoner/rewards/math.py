"""The math answer checker: the reward that decides what the policy learns.

A wrong reward teaches the wrong thing, so the checker is built to be right first, then bounded, then fast:

- **Right.** ``extract_answer`` takes the final answer: the last one the completion commits to
  (``\\boxed{}``, GSM8K ``####`` or "the answer is ...", whichever comes last, else the last number); one
  taken back afterwards ("Actually no, it is 20") or cut off inside its delimiter (an unclosed ``\\boxed{``)
  does not count, and no earlier number stands in for it. Plain numbers, multiple-choice letters, words
  and identical strings are decided exactly in the calling process (``_math_text``). Everything else goes
  to math-verify on sympy, parsing the *whole* answer, and every "equal" it returns is re-checked by
  evaluating both sides to 50 digits (``_math_sympy``), which removes math-verify's known false positives (``1/2^99 == 1/2^98``,
  ``1e-7 == 2e-7``, ``2 2/3 == 4/3``, ``4\\sqrt(2) == 4``...). When in doubt, an answer scores 0.
- **Bounded.** Algebra runs in a pool of worker processes (``_math_pool``) with a per-check budget
  (``timeout_s``): a timer inside the worker ends a slow check, and a worker that still overruns is killed
  and replaced. No ``signal.alarm`` in the caller, so every function here is safe to call from any thread.
  A hostile answer (``9^{9^{9^9}}``, deep nesting, megabytes of text) scores 0 within the budget. In a
  daemonic process (a ``multiprocessing.Pool`` worker), which may not start processes, checks run in the
  process itself under the same timer -- from its main thread only, else ``CheckerError``.
- **Fast.** The GSM8K / arithmetic hot path (both sides plain numbers) never touches sympy or a worker;
  identical (answer, gold) pairs in a batch are checked once; the rest run on all workers in parallel.

Workers are interpreters of their own (``python -c``, with the caller's ``sys.path``), not multiprocessing
children: they never import the caller's main module, so the checker works from any script, ``python -c``,
a script read from stdin or a notebook, with no ``if __name__ == "__main__"`` guard.

>>> math_reward("... so she has 7 + 5 = 12 apples.\\n#### 12", "12")
1.0
>>> score_batch(["The answer is $1,234.", "#### 12", "no idea"], ["1234", "1.2", "3"])
[1.0, 0.0, 0.0]
>>> is_equivalent("3.0", "3"), is_equivalent("x = 3", "3"), is_equivalent("2 2/3", "4/3")
(True, True, False)
"""

from __future__ import annotations

from collections.abc import Sequence

from reasoner.rewards._math_pool import (
    CheckerError,
    CheckTimeout,
    Verdict,
    default_workers,
    get_pool,
    may_start_workers,
    run_inline,
    shutdown,
)
from reasoner.rewards._math_text import extract_answer, normalize, quick_verdict
from reasoner.rewards.base import REWARDS, RewardOutput
from reasoner.tasks.base import Example

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "CheckTimeout",
    "CheckerError",
    "Verdict",
    "check_batch",
    "default_workers",
    "extract_answer",
    "gold_answer",
    "is_equivalent",
    "math_reward",
    "score_batch",
    "shutdown",
]

DEFAULT_TIMEOUT_S = 5.0  # per check, like math-verify's default; legitimate checks take milliseconds


def is_equivalent(pred: str | None, gold: str | None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether two final answers are mathematically equal (MATH grading conventions).

    Bounded by ``timeout_s``; never hangs and never raises on junk (it is then simply not equal); safe
    from threads and from worker processes. ``None`` (no answer) equals nothing.

    >>> is_equivalent(r"\\frac{1}{2}", "0.5"), is_equivalent(r"[0, 1)", r"(0, 1)")
    (True, False)
    """
    if pred is None or gold is None:
        return False
    if not isinstance(pred, str) or not isinstance(gold, str):
        raise TypeError(
            f"is_equivalent compares strings, got {type(pred).__name__} and {type(gold).__name__}"
        )
    return _check([(pred, gold)], timeout_s=timeout_s, workers=1)[0] is Verdict.EQUAL


def math_reward(completion: str, gold: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
    """1.0 when the final answer of ``completion`` equals ``gold``, else 0.0."""
    return score_batch([completion], [gold], workers=1, timeout_s=timeout_s)[0]


def score_batch(
    completions: Sequence[str],
    golds: Sequence[str],
    *,
    workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[float]:
    """``math_reward`` over a batch, in parallel: 1.0 / 0.0 per completion, in order.

    ``workers`` caps the worker processes used (default: one per CPU, at most 8); ``timeout_s`` is the
    budget of each check that needs algebra (plain numbers need none and take microseconds).
    """
    return [
        1.0 if v is Verdict.EQUAL else 0.0
        for v in check_batch(completions, golds, workers=workers, timeout_s=timeout_s)
    ]


def check_batch(
    completions: Sequence[str],
    golds: Sequence[str],
    *,
    workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[Verdict]:
    """Like ``score_batch`` but says why: EQUAL, DIFFERENT, NO_ANSWER, TIMEOUT or FAILED per completion.

    >>> [v.value for v in check_batch(["#### 5", "I give up", r"\\boxed{6}"], ["5", "5", "5"])]
    ['equal', 'no_answer', 'different']
    """
    if isinstance(completions, str) or isinstance(golds, str):
        raise TypeError("completions and golds must be sequences of strings, not a single string")
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} golds: they must align 1:1")
    pairs: list[tuple[str | None, str]] = []
    for i, (completion, gold) in enumerate(zip(completions, golds, strict=True)):
        if not isinstance(completion, str):
            raise TypeError(f"completion {i} is a {type(completion).__name__}, expected str")
        pairs.append((extract_answer(completion), gold_answer(gold, index=i)))
    return _check(pairs, timeout_s=timeout_s, workers=workers)


def gold_answer(gold: str, index: int | None = None) -> str:
    """The answer to compare against: ``gold`` itself, or the final answer of a full reference solution.

    >>> gold_answer("42"), gold_answer("so x = 7.\\n#### 7"), gold_answer(r"Thus $\\boxed{\\frac{1}{2}}$.")
    ('42', '7', '\\\\frac{1}{2}')
    """
    where = "" if index is None else f" {index}"
    if not isinstance(gold, str):
        raise TypeError(f"gold{where} is a {type(gold).__name__}, expected str")
    answer = extract_answer(gold) if ("\\boxed" in gold or "\\fbox" in gold or "####" in gold) else gold
    if answer is None or not answer.strip():
        raise ValueError(f"gold{where} has no answer to compare against: {gold[-80:]!r}")
    return answer


def _check(
    pairs: Sequence[tuple[str | None, str]], *, timeout_s: float, workers: int | None
) -> list[Verdict]:
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1 (or None for one per CPU), got {workers!r}")
    verdicts: list[Verdict | None] = [None] * len(pairs)
    jobs: dict[tuple[str, str], list[int]] = {}  # identical pairs (common within a GRPO group) run once
    for i, (pred, gold) in enumerate(pairs):
        if pred is None:
            verdicts[i] = Verdict.NO_ANSWER
            continue
        p, g = normalize(pred), normalize(gold)
        quick = quick_verdict(p, g)
        if quick is not None:
            verdicts[i] = Verdict.EQUAL if quick else Verdict.DIFFERENT
        else:
            jobs.setdefault((p, g), []).append(i)
    if jobs:
        if may_start_workers():
            outcomes = get_pool().run(list(jobs), timeout_s=timeout_s, workers=workers)
        else:  # a daemonic process (a multiprocessing.Pool worker) may not start workers of its own
            outcomes = run_inline(list(jobs), timeout_s=timeout_s)
        for indices, outcome in zip(jobs.values(), outcomes, strict=True):
            for i in indices:
                verdicts[i] = outcome
    return verdicts  # type: ignore[return-value]  # every slot was filled above


@REWARDS.register("math")
def math_reward_fn(completions: Sequence[str], examples: Sequence[Example]) -> RewardOutput:
    """Registered as ``"math"``: 1.0 when a completion's final answer equals ``example.gold``."""
    verdicts = check_batch(completions, [ex.gold for ex in examples])
    n = max(len(verdicts), 1)
    return RewardOutput(
        scores=[1.0 if v is Verdict.EQUAL else 0.0 for v in verdicts],
        metrics={
            "extracted_frac": sum(v is not Verdict.NO_ANSWER for v in verdicts) / n,
            "timeout_frac": sum(v in (Verdict.TIMEOUT, Verdict.FAILED) for v in verdicts) / n,
        },
    )
