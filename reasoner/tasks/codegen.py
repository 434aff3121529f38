'''Procedural one-line Python functions: the offline default for `make train-code`.

Each problem is a signature and a one-line docstring; the answer is the one-line body, checked by four
hidden asserts in the sandbox (MBPP-style ``test_list``). Short on purpose, so that a tiny character-level
model learns part of it by brief SFT and RL has room to improve it::

    def calc(x):
        """return x times 7 plus 3"""
        return x * 7 + 3

Thirty templates over integers, pairs, strings and lists, each with random constants, function and
argument names, so memorising prompts does not solve the task. Train and test come from disjoint seed
streams and test prompts are removed from the training set. The expected values of the asserts are
computed by running the reference program here (it is our own code, never a model's).

Like code scraped from the web, half the training solutions are plausible but wrong: each template has one
typical slip (``x - 3`` for ``3 - x``, ``/`` for ``//``, ``>=`` for ``>``, ``min`` for ``max``, an index off
by one; see ``SLIPS``), and the hidden tests always catch it. Supervised learning cannot tell the two apart
and imitates both; the unit-test reward can, which is what `make train-code` shows GRPO learning. Test
examples carry the correct solution.

>>> ex = make_problem(random.Random(0))
>>> print(ex.prompt + ex.solution, end="")
def solve(xs):
    """return the largest item of xs plus 13"""
    return max(xs) + 13
>>> ex.meta["test_list"][0]
'assert solve([7, 6, 3, 0, 6]) == 20'
'''

from __future__ import annotations

import random
from collections.abc import Callable

from reasoner.tasks import TASKS
from reasoner.tasks.base import Example, Task

NAMES = ["f", "g", "h", "fn", "calc", "func", "solve", "go"]
INT_VARS, PAIR_VARS = ["x", "n", "k"], [("a", "b"), ("x", "y"), ("m", "n")]
STR_VARS, LIST_VARS = ["s", "t", "w"], ["xs", "nums", "l"]
LETTERS = "abcdef"
TRAIN_SIZE, TEST_SIZE = 10_000, 500
N_TESTS = 4


def _ints(lo: int, hi: int) -> Callable[[random.Random], int]:
    return lambda rng: rng.randint(lo, hi)


def _word(rng: random.Random, lo: int = 1, hi: int = 3) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


# (argument kind, docstring, body, constant draw). {v} is the argument ({p}, {q} for pairs); {c} a constant.
TEMPLATES: list[tuple[str, str, str, Callable[[random.Random], object]]] = [
    ("int", "return {v} plus {c}", "{v} + {c}", _ints(1, 20)),
    ("int", "return {v} minus {c}", "{v} - {c}", _ints(1, 20)),
    ("int", "return {v} times {c}", "{v} * {c}", _ints(2, 12)),
    ("int", "return {v} mod {c}", "{v} % {c}", _ints(2, 12)),
    ("int", "return {v} squared plus {c}", "{v} * {v} + {c}", _ints(1, 20)),
    ("int", "return {c} minus {v}", "{c} - {v}", _ints(1, 20)),
    ("int", "return {v} divided by {c} rounded down", "{v} // {c}", _ints(2, 9)),
    ("int", "return the distance from {v} to {c}", "abs({v} - {c})", _ints(1, 20)),
    ("int", "return the larger of {v} and {c}", "max({v}, {c})", _ints(-9, 9)),
    ("int", "return the smaller of {v} and {c}", "min({v}, {c})", _ints(-9, 9)),
    ("int", "return True if {v} is greater than {c}", "{v} > {c}", _ints(-9, 9)),
    ("int", "return True if {v} is less than {c}", "{v} < {c}", _ints(-9, 9)),
    ("int", "return True if {v} equals {c}", "{v} == {c}", _ints(-9, 9)),
    ("int", "return True if {v} is divisible by {c}", "{v} % {c} == 0", _ints(2, 9)),
    ("pair", "return {p} times {c} plus {q}", "{p} * {c} + {q}", _ints(2, 9)),
    ("pair", "return {p} minus {q} plus {c}", "{p} - {q} + {c}", _ints(1, 20)),
    ("pair", "return {p} plus {q} times {c}", "({p} + {q}) * {c}", _ints(2, 9)),
    ("str", "return {v} repeated {c} times", "{v} * {c}", _ints(2, 4)),
    ("str", "return the first {c} letters of {v}", "{v}[:{c}]", _ints(1, 4)),
    ("str", "return {v} without its first {c} letters", "{v}[{c}:]", _ints(1, 4)),
    ("str", "return {v} followed by '{c}'", "{v} + '{c}'", _word),
    ("str", "return '{c}' followed by {v}", "'{c}' + {v}", _word),
    ("str", "return True if {v} starts with '{c}'", "{v}.startswith('{c}')", lambda rng: _word(rng, 1, 1)),
    ("str", "return the length of {v} plus {c}", "len({v}) + {c}", _ints(1, 20)),
    ("list", "return the sum of {v} plus {c}", "sum({v}) + {c}", _ints(1, 20)),
    ("list", "return the item at index {c} of {v}", "{v}[{c}]", _ints(0, 2)),
    ("list", "return the length of {v} times {c}", "len({v}) * {c}", _ints(2, 9)),
    ("list", "return the largest item of {v} plus {c}", "max({v}) + {c}", _ints(1, 20)),
    ("list", "return the first {c} items of {v}", "{v}[:{c}]", _ints(1, 3)),
    ("list", "return {v} with {c} added to the end", "{v} + [{c}]", _ints(0, 9)),
]

# A plausible slip for each template (docstring -> wrong body): a swapped operator, operand order or builtin,
# or an off-by-one, the kind of bug scraped code is full of. Half the training solutions carry it; the
# hidden tests always catch it (make_problem draws test inputs until they do).
SLIPS: dict[str, str] = {
    "return {v} plus {c}": "{v} - {c}",
    "return {v} minus {c}": "{c} - {v}",
    "return {v} times {c}": "{v} + {c}",
    "return {v} mod {c}": "{v} // {c}",
    "return {v} squared plus {c}": "{v} * 2 + {c}",
    "return {c} minus {v}": "{v} - {c}",
    "return {v} divided by {c} rounded down": "{v} / {c}",
    "return the distance from {v} to {c}": "{v} - {c}",
    "return the larger of {v} and {c}": "min({v}, {c})",
    "return the smaller of {v} and {c}": "max({v}, {c})",
    "return True if {v} is greater than {c}": "{v} >= {c}",
    "return True if {v} is less than {c}": "{v} <= {c}",
    "return True if {v} equals {c}": "{v} >= {c}",
    "return True if {v} is divisible by {c}": "{c} % {v} == 0",
    "return {p} times {c} plus {q}": "{p} * ({c} + {q})",
    "return {p} minus {q} plus {c}": "{p} - ({q} + {c})",
    "return {p} plus {q} times {c}": "{p} + {q} * {c}",
    "return {v} repeated {c} times": "{v} * ({c} + 1)",
    "return the first {c} letters of {v}": "{v}[{c}:]",
    "return {v} without its first {c} letters": "{v}[:{c}]",
    "return {v} followed by '{c}'": "'{c}' + {v}",
    "return '{c}' followed by {v}": "{v} + '{c}'",
    "return True if {v} starts with '{c}'": "{v}.endswith('{c}')",
    "return the length of {v} plus {c}": "len({v}) - {c}",
    "return the sum of {v} plus {c}": "len({v}) + {c}",
    "return the item at index {c} of {v}": "{v}[{c} + 1]",
    "return the length of {v} times {c}": "sum({v}) * {c}",
    "return the largest item of {v} plus {c}": "min({v}) + {c}",
    "return the first {c} items of {v}": "{v}[{c}:]",
    "return {v} with {c} added to the end": "[{c}] + {v}",
}
SLIPPED = 0.5  # fraction of training solutions that carry the slip


def _argument(kind: str, rng: random.Random, const: object) -> tuple:
    """One test input (a tuple of arguments); near the constant where the template compares against it."""
    if kind == "int":
        if isinstance(const, int) and rng.random() < 0.5:
            return (const + rng.choice([-1, 0, 1, const]),)
        return (rng.randint(-20, 20),)
    if kind == "pair":
        return (rng.randint(-20, 20), rng.randint(-20, 20))
    if kind == "str":
        if isinstance(const, str) and rng.random() < 0.5:
            return (const + _word(rng, 0, 4),)
        return (_word(rng, 1, 6),)
    return ([rng.randint(-9, 9) for _ in range(rng.randint(3, 6))],)


def _distinct_inputs(kind: str, rng: random.Random, const: object) -> list[tuple]:
    inputs: dict[str, tuple] = {}
    while len(inputs) < N_TESTS:
        args = _argument(kind, rng, const)
        inputs.setdefault(repr(args), args)
    return list(inputs.values())


def make_problem(rng: random.Random) -> Example:
    kind, doc, body, draw = rng.choice(TEMPLATES)
    const, name = draw(rng), rng.choice(NAMES)
    if kind == "pair":
        p, q = rng.choice(PAIR_VARS)
        fields, params = {"p": p, "q": q, "c": const}, f"{p}, {q}"
    else:
        var = rng.choice({"int": INT_VARS, "str": STR_VARS, "list": LIST_VARS}[kind])
        fields, params = {"v": var, "c": const}, var
    prompt = f'def {name}({params}):\n    """{doc.format(**fields)}"""\n'
    solution = f"    return {body.format(**fields)}\n"
    slip = f"    return {SLIPS[doc].format(**fields)}\n"
    reference, slipped = _compile(prompt + solution, name), _compile(prompt + slip, name)
    while True:  # tests that a constant answer, echoing the argument or the slip would not pass
        inputs = _distinct_inputs(kind, rng, const)
        outputs = [reference(*args) for args in inputs]
        if (
            len({repr(o) for o in outputs}) > 1
            and any(o != args[0] for o, args in zip(outputs, inputs, strict=True))
            and not all(_returns(slipped, args, o) for args, o in zip(inputs, outputs, strict=True))
        ):
            break
    tests = [
        f"assert {name}({', '.join(repr(a) for a in args)}) == {out!r}"
        for args, out in zip(inputs, outputs, strict=True)
    ]
    return Example(
        prompt=prompt,
        gold=prompt + solution,
        solution=solution,
        meta={
            "entry_point": name,
            "test_list": tests,
            "test_imports": [],
            "code_prefix": prompt,
            "slip": slip,
        },
    )


def _compile(source: str, name: str) -> Callable:
    namespace: dict = {}
    exec(source, namespace)  # our own template programs (reference and slip), never a model's
    return namespace[name]


def _returns(fn: Callable, args: tuple, expected: object) -> bool:
    try:
        return fn(*args) == expected  # what the assert checks
    except Exception:  # the slip may raise (an index past the end): the test catches it
        return False


def load(source: str | None, split: str, size: int | None, seed: int) -> list[Example]:
    if source is not None:
        raise ValueError(
            f"the codegen task is generated, not loaded: leave task.train/task.test unset (got {source!r})"
        )
    if split not in ("train", "test"):
        raise ValueError(f"codegen split must be 'train' or 'test', got {split!r}")
    test = _draw(random.Random(f"codegen-test-{seed}"), TEST_SIZE)
    if split == "test":
        return test[: size or len(test)]
    held_out = {ex.prompt for ex in test}
    train = _draw(random.Random(f"codegen-train-{seed}"), size or TRAIN_SIZE, exclude=held_out)
    slips = random.Random(f"codegen-slips-{seed}")  # its own stream: the prompts do not depend on it
    for ex in train:
        if slips.random() < SLIPPED:
            ex.solution = ex.meta["slip"]
    return train


def _draw(rng: random.Random, count: int, exclude: set[str] = frozenset()) -> list[Example]:
    seen, out = set(exclude), []
    misses = 0
    while len(out) < count:
        ex = make_problem(rng)
        if ex.prompt in seen:
            misses += 1
            if misses > 20 * count:
                raise ValueError(
                    f"codegen: cannot draw {count} distinct problems (the template space is too small)"
                )
            continue
        seen.add(ex.prompt)
        ex.meta["index"] = len(out)
        out.append(ex)
    return out


TASKS.register("codegen")(Task(name="codegen", reward="code", load=load, kind="code"))
