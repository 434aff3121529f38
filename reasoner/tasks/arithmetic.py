"""Procedural arithmetic word problems in GSM8K format: the offline default for `make train-math`.

A problem starts from a number and applies one or two additions or subtractions told as a short story;
the reference solution works it step by step and ends in ``#### <answer>``, so the math checker scores it
exactly as it scores GSM8K. Train and test are drawn from disjoint seed streams and the test prompts are
removed from the training set.

>>> ex = make_problem(random.Random(0))
>>> ex.prompt.endswith("How many now?\\n") and ex.solution.endswith("#### " + ex.gold)
True
"""

from __future__ import annotations

import random

from reasoner.tasks import TASKS
from reasoner.tasks.base import Example, Task

NAMES = ["Ann", "Bob", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ida", "Jon"]
ITEMS = ["apples", "books", "coins", "pens", "cards", "eggs", "shells", "stamps"]
MORE = ["gets {n}", "buys {n}", "finds {n}", "wins {n}"]
LESS = ["gives {n} away", "loses {n}", "sells {n}", "eats {n}"]
MAX_START = 20
MAX_STEP = 9
TRAIN_SIZE = 20_000


def make_problem(rng: random.Random, min_ops: int = 1, max_ops: int = 2) -> Example:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(2, MAX_START)
    clauses, steps = [], []
    for _ in range(rng.randint(min_ops, max_ops)):
        n = rng.randint(1, MAX_STEP)
        if total - n >= 0 and rng.random() < 0.5:
            clauses.append(rng.choice(LESS).format(n=n))
            steps.append(f"{total}-{n}={total - n}")
            total -= n
        else:
            clauses.append(rng.choice(MORE).format(n=n))
            steps.append(f"{total}+{n}={total + n}")
            total += n
    start = steps[0].split("+")[0].split("-")[0]
    story = f"{name} has {start} {item}, " + ", ".join(clauses) + ". How many now?"
    return Example(
        prompt=f"{story}\n",
        gold=str(total),
        solution=", ".join(steps) + f"\n#### {total}",
    )


def load(source: str | None, split: str, size: int | None, seed: int) -> list[Example]:
    if source is not None:
        raise ValueError(
            f"the arithmetic task is generated, not loaded: leave task.train/task.test unset (got {source!r})"
        )
    if split not in ("train", "test"):
        raise ValueError(f"arithmetic split must be 'train' or 'test', got {split!r}")
    test = _draw(random.Random(f"arithmetic-test-{seed}"), 2_000)
    if split == "test":
        return test[: size or len(test)]
    held_out = {ex.prompt for ex in test}
    rng = random.Random(f"arithmetic-train-{seed}")
    out = [ex for ex in _draw(rng, 2 * (size or TRAIN_SIZE)) if ex.prompt not in held_out]
    return out[: size or TRAIN_SIZE]


def _draw(rng: random.Random, count: int) -> list[Example]:
    seen, out = set(), []
    while len(out) < count:
        ex = make_problem(rng)
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    return out


TASKS.register("arithmetic")(Task(name="arithmetic", reward="math", load=load, kind="math"))
