"""Products of two 3-digit numbers: a task the tiny model cannot do in its head but can with the Python tool.

The offline default of ``make train-tools`` (reasoner/rollout/tools.py). A prompt asks ``What is 347*582?``; the
gold answer is the product, scored by the math checker (``#### 201954``). The training solutions come in two
styles: a share ``TOOL_SHARE`` call the interpreter, read its output and copy it into the answer, and the rest
give the answer alone, as a model that has never seen a tool would::

    <python>print(347*582)</python><output>
    201954
    </output>
    #### 201954

The output block is exactly what the tool loop appends (``reasoner.rollout.tools.OPEN``/``CLOSE``), so the warm
start learns the protocol; in a rollout the tool writes it, not the policy (generation stops at ``</python>``).
Greedy decoding after the warm start mostly answers alone, and six-digit products are out of reach of a 0.9M
parameter character model, so its held-out score is low; GRPO, rewarded on the final answer only, has to find
out from its own samples that calling the tool pays. Train and test are disjoint.

>>> ex = make_problem(random.Random(0), tool=True)
>>> ex.prompt == f"What is {ex.columns['a']}*{ex.columns['b']}?\\n" and ex.solution.endswith("#### " + ex.gold)
True
>>> int(ex.gold) == ex.columns["a"] * ex.columns["b"] and "<python>print(" in ex.solution
True
"""

from __future__ import annotations

import random

from reasoner.rollout.tools import CLOSE, OPEN
from reasoner.tasks import TASKS
from reasoner.tasks.base import Example, Task

LOW, HIGH = 100, 999
TOOL_SHARE = 0.4  # of training solutions that call the tool; the rest answer alone
TRAIN_SIZE = 20_000
TEST_SIZE = 2_000


def make_problem(rng: random.Random, tool: bool) -> Example:
    a, b = rng.randint(LOW, HIGH), rng.randint(LOW, HIGH)
    gold = str(a * b)
    call = f"<python>print({a}*{b})</python>{OPEN}{gold}\n{CLOSE}" if tool else ""
    return Example(
        prompt=f"What is {a}*{b}?\n",
        gold=gold,
        solution=f"{call}#### {gold}",
        columns={"a": a, "b": b, "question": f"What is {a}*{b}?", "answer": gold},
    )


def load(source: str | None, split: str, size: int | None, seed: int) -> list[Example]:
    if source is not None:
        raise ValueError(
            f"the products task is generated, not loaded: leave task.train/task.test unset (got {source!r})"
        )
    if split not in ("train", "test"):
        raise ValueError(f"products split must be 'train' or 'test', got {split!r}")
    test = _draw(random.Random(f"products-test-{seed}"), TEST_SIZE, None)
    # test solutions call the tool: the reference completion as the tool loop would write it
    if split == "test":
        return test[: size or len(test)]
    held_out = {ex.prompt for ex in test}
    style = random.Random(f"products-style-{seed}")
    return _draw(random.Random(f"products-train-{seed}"), size or TRAIN_SIZE, held_out, style)


def _draw(
    rng: random.Random, count: int, exclude: set | None, style: random.Random | None = None
) -> list[Example]:
    seen, out = set(exclude or ()), []
    while len(out) < count:
        ex = make_problem(rng, tool=style is None or style.random() < TOOL_SHARE)
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    return out


TASKS.register("products")(Task(name="products", reward="math", load=load, kind="math"))
