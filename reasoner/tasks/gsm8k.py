"""GSM8K: grade-school math word problems; the reference solution ends in ``#### <answer>``."""

from __future__ import annotations

import random

from reasoner.data import DataError, load_records
from reasoner.tasks import TASKS
from reasoner.tasks.base import Example, Task

HUB_ID = "openai/gsm8k:main"
PROMPT = "Question: {question}\nAnswer:"


def gold_answer(solution: str) -> str:
    """The final answer of a GSM8K reference solution.

    >>> gold_answer("She pays 3 * 2 = <<3*2=6>>6 dollars.\\n#### 6")
    '6'
    """
    if "####" not in solution:
        raise DataError(f"GSM8K answer has no '#### <number>' line: {solution[-80:]!r}")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def load(source: str | None, split: str, size: int | None, seed: int) -> list[Example]:
    rows = load_records(source or HUB_ID, split, required=("question", "answer"))
    examples = [
        Example(
            prompt=PROMPT.format(question=row["question"].strip()),
            gold=gold_answer(row["answer"]),
            solution=" " + row["answer"].strip(),
            meta={"index": i},
            columns=row,
        )
        for i, row in enumerate(rows)
    ]
    if size is not None and size < len(examples):
        examples = random.Random(seed).sample(examples, size)
    return examples


TASKS.register("gsm8k")(Task(name="gsm8k", reward="math", load=load, kind="math"))
