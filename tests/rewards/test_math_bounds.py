"""Bounded time: a hostile answer scores 0 within the per-check budget, from any thread, without holding up
the rest of its batch; a worker that overruns is killed and replaced.

The time limits asserted here are generous (budget + ``SLACK``): they check that nothing hangs, not speed.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
import time

import pytest

from reasoner.rewards._math_pool import Verdict, WorkerPool
from reasoner.rewards.math import check_batch, math_reward, score_batch

BUDGET = 2.0
SLACK = 15.0

BOMBS = {
    "power tower": "9^{9^{9^9}}",
    "huge power": "9^{100000000}",
    "300 nested parentheses": "(" * 300 + "1" + ")" * 300,
    "300 nested braces": "{" * 300 + "1" + "}" * 300,
    "big expansion": "(x+1)^{10000}",
    "factorial of a huge number": "(10^{8})!",
}
GOOD = [
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}"),
    ("\\boxed{(x+1)^2}", "x^2+2x+1"),
    ("#### 7", "7"),
]


def _hostile_batch() -> tuple[list[str], list[str], list[float]]:
    completions = ["\\boxed{" + bomb + "}" for bomb in BOMBS.values()] + [c for c, _ in GOOD]
    golds = ["5"] * len(BOMBS) + [g for _, g in GOOD]
    return completions, golds, [0.0] * len(BOMBS) + [1.0] * len(GOOD)


def test_hostile_answers_score_0_within_budget_and_do_not_hold_up_the_batch():
    completions, golds, expected = _hostile_batch()
    start = time.monotonic()
    assert score_batch(completions, golds, timeout_s=BUDGET) == expected
    assert time.monotonic() - start < len(BOMBS) * BUDGET + SLACK


def test_hostile_answers_are_bounded_from_a_thread_too():
    # math-verify's signal.alarm timeout raises off the main thread; trainers have scored everything 0 that way.
    completions, golds, expected = _hostile_batch()
    result: dict[str, object] = {}

    def run() -> None:
        start = time.monotonic()
        result["scores"] = score_batch(completions, golds, timeout_s=BUDGET)
        result["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=len(BOMBS) * BUDGET + 2 * SLACK)
    assert not thread.is_alive(), "score_batch hung in a thread"
    assert result["scores"] == expected
    assert result["seconds"] < len(BOMBS) * BUDGET + SLACK


@pytest.mark.parametrize(
    "completion, score",
    [
        ("x" * 5_000_000 + " so the answer is \\boxed{5}", 1.0),
        ("\\boxed{" + "1+" * 2_000_000 + "1}", 0.0),
        ("1" * 3_000_000, 0.0),
        ("\\boxed{" * 100_000, 0.0),
        ("{" * 1_000_000 + "5", 1.0),  # the last number stands
        ("answer " * 200_000 + "5", 1.0),  # no "answer is": the last number
        ("The answer is 5. " + "Wait, it is " * 100_000, 0.0),  # taken back, restated as nothing
        ("\\frac{1}{" * 100_000, 0.0),  # cut off inside a formula
    ],
    ids=[
        "long text",
        "huge box",
        "huge number",
        "many open boxes",
        "unbalanced braces",
        "many 'answer' words",
        "many revisions",
        "many open fractions",
    ],
)
def test_megabytes_of_text_are_scored_quickly(completion, score):
    start = time.monotonic()
    assert math_reward(completion, "5", timeout_s=BUDGET) == score
    assert time.monotonic() - start < BUDGET + SLACK


def test_a_worker_that_overruns_its_budget_is_killed_and_replaced():
    # The worker's own timer would fire only after 10 budgets: the kill has to do it.
    pool = WorkerPool(1, inner_fraction=10.0)
    try:
        start = time.monotonic()
        assert pool.run([("9^{9^{9^9}}", "5")], timeout_s=BUDGET) == [Verdict.TIMEOUT]
        assert time.monotonic() - start < BUDGET + SLACK
        assert pool.replaced == 1
        assert pool.run([("\\sqrt{8}", "2\\sqrt{2}")], timeout_s=60) == [Verdict.EQUAL]
        assert len(pool.pids()) == 1
    finally:
        pool.close()


def test_a_worker_killed_from_outside_is_replaced():
    pool = WorkerPool(1)
    try:
        assert pool.run([("\\sqrt{8}", "2\\sqrt{2}")], timeout_s=60) == [Verdict.EQUAL]
        (pid,) = pool.pids()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        assert pool.run([("\\sqrt{9}", "3")], timeout_s=60) == [Verdict.EQUAL]
        assert pool.replaced == 1 and pool.pids() != [pid]
    finally:
        pool.close()


def test_the_in_worker_timer_keeps_the_worker():
    pool = WorkerPool(1)
    try:
        assert pool.run([("(x+1)^{10000}", "5")], timeout_s=BUDGET) == [Verdict.TIMEOUT]
        assert pool.replaced == 0  # the timer fired inside the worker: no process was lost
        assert check_batch(["\\boxed{2^{10}}"], ["1024"]) == [Verdict.EQUAL]
    finally:
        pool.close()


def test_daemonic_pool_workers_check_in_process_within_budget():
    # multiprocessing.Pool workers are daemonic and may not start worker processes of their own: there the
    # checker runs in process, under its timer.
    score = functools.partial(math_reward, timeout_s=BUDGET)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.starmap(score, [("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")]) == [
            1.0
        ]  # also warms the worker up
        start = time.monotonic()
        assert pool.starmap(score, [("\\boxed{9^{9^{9^9}}}", "5"), ("#### 7", "7")]) == [0.0, 1.0]
        assert time.monotonic() - start < BUDGET + SLACK
