"""Procedural arithmetic word problems in GSM8K format: the offline default for `make train-math`.

A problem starts from a number and applies two or three additions or subtractions told as a short story;
the answer ends in ``#### <answer>``, so the math checker scores it exactly as it scores GSM8K. Train and
test are drawn from disjoint seed streams and the test prompts are removed from the training set.

The training solutions come in two styles, as real answer keys do: half work the problem step by step
(``12+7=19, 19-3=16``), half give only the final answer. Both are correct, so supervised learning imitates
both, and a model that answers in one shot gets three-step arithmetic wrong far more often than one that
writes the steps. The reward checks only the final answer, so what GRPO has to find out from its own samples
is which way of answering earns it: the offline default shows RL turning a warm start that mostly guesses into
one that shows its work (the measured figures are in the README). Test examples carry the worked solution.

>>> ex = make_problem(random.Random(0))
>>> ex.prompt.endswith("How many now?\\n") and ex.solution.endswith("#### " + ex.gold)
True
"""

from __future__ import annotations

import random
from functools import partial

from reasoner.tasks import TASKS
from reasoner.tasks.base import Example, Task

NAMES = ["Ann", "Bob", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ida", "Jon"]
ITEMS = ["apples", "books", "coins", "pens", "cards", "eggs", "shells", "stamps"]
MORE = ["gets {n}", "buys {n}", "finds {n}", "wins {n}"]
LESS = ["gives {n} away", "loses {n}", "sells {n}", "eats {n}"]
MAX_START = 20
MAX_STEP = 9
MIN_OPS, MAX_OPS = 2, 3
ANSWER_ONLY = 0.5  # fraction of training solutions that give only "#### <answer>"
TRAIN_SIZE = 20_000


def make_problem(rng: random.Random, min_ops: int = MIN_OPS, max_ops: int = MAX_OPS) -> Example:
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
        columns={"question": story, "answer": str(total)},
    )


def load(
    source: str | None, split: str, size: int | None, seed: int, ops: tuple[int, int] = (MIN_OPS, MAX_OPS)
) -> list[Example]:
    """``ops``: the fewest and most additions / subtractions per problem; the default stream is ``arithmetic``,
    one or two steps is ``arithmetic-easy`` (its own seed streams, train and test still disjoint)."""
    name = "arithmetic" if ops == (MIN_OPS, MAX_OPS) else f"arithmetic-{ops[0]}-{ops[1]}"
    if source is not None:
        raise ValueError(
            f"the {name} task is generated, not loaded: leave task.train/task.test unset (got {source!r})"
        )
    if split not in ("train", "test"):
        raise ValueError(f"{name} split must be 'train' or 'test', got {split!r}")
    test = _draw(random.Random(f"{name}-test-{seed}"), 2_000, ops)
    if split == "test":
        return test[: size or len(test)]
    held_out = {ex.prompt for ex in test}
    rng = random.Random(f"{name}-train-{seed}")
    out = [ex for ex in _draw(rng, 2 * (size or TRAIN_SIZE), ops) if ex.prompt not in held_out]
    out = out[: size or TRAIN_SIZE]
    style = random.Random(f"{name}-style-{seed}")  # its own stream: the prompts do not depend on it
    for ex in out:
        if style.random() < ANSWER_ONLY:
            ex.solution = f"#### {ex.gold}"
    return out


def _draw(rng: random.Random, count: int, ops: tuple[int, int] = (MIN_OPS, MAX_OPS)) -> list[Example]:
    seen, out = set(), []
    while len(out) < count:
        ex = make_problem(rng, *ops)
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    return out


TASKS.register("arithmetic")(Task(name="arithmetic", reward="math", load=load, kind="math"))
# One or two steps: where a small pretrained model (SmolLM2-135M-Instruct, `make train-real`) starts with signal.
TASKS.register("arithmetic-easy")(
    Task(name="arithmetic-easy", reward="math", load=partial(load, ops=(1, 2)), kind="math")
)
