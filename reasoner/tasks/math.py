r"""MATH (Hendrycks et al. 2021): competition problems whose answer is the last ``\boxed{...}`` of the solution.

Records ``{problem, solution, answer?}``; the gold is ``answer`` when present, else the last boxed
expression of ``solution``. Hub default ``HuggingFaceH4/MATH-500`` (the 500-problem test subset of
Lightman et al. 2023, split ``test``, with an ``answer`` field); for the full set give a local file or
``EleutherAI/hendrycks_math:<subject>``.

>>> last_boxed(r"so $x = \boxed{\frac{1}{2}}$ and then \boxed{3}.")
'3'
>>> last_boxed(r"\boxed{\frac{a}{b^{2}}}")
'\\frac{a}{b^{2}}'
>>> last_boxed("no box") is None
True
"""

from __future__ import annotations

import random

from reasoner.data import DataError, load_records
from reasoner.tasks import TASKS
from reasoner.tasks.base import Example, Task

HUB_ID = "HuggingFaceH4/MATH-500"
PROMPT = "Problem: {problem}\nSolution:"


def last_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i].strip()
        i += 1
    return None  # unbalanced braces


def load(source: str | None, split: str, size: int | None, seed: int) -> list[Example]:
    where = source or HUB_ID
    rows = load_records(where, split, required=("problem", "solution"))
    examples = []
    for i, row in enumerate(rows):
        gold = row.get("answer") or last_boxed(row["solution"])
        if not gold:
            raise DataError(
                f"{where}: row {i + 1} has no 'answer' and its solution has no \\boxed{{...}} answer"
            )
        meta = {
            "index": i,
            **{k: row[k] for k in ("unique_id", "subject", "type", "level") if row.get(k) is not None},
        }
        if "unique_id" in meta:
            meta["task_id"] = meta["unique_id"]
        examples.append(
            Example(
                prompt=PROMPT.format(problem=row["problem"].strip()),
                gold=str(gold),
                solution=" " + row["solution"].strip(),
                meta=meta,
                columns=row,
            )
        )
    if size is not None and size < len(examples):
        examples = random.Random(seed).sample(examples, size)
    return examples


TASKS.register("math")(Task(name="math", reward="math", load=load, kind="math"))
