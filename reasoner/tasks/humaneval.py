"""HumanEval: 164 Python functions to complete from a signature and docstring, checked by unit tests.

Records ``{task_id, prompt, canonical_solution, test, entry_point}`` (hub ``openai/openai_humaneval``,
split ``test``, or the original ``HumanEval.jsonl.gz``). The prompt is the code to continue; the reference
completion is the canonical function body, the gold the whole reference program.
"""

from __future__ import annotations

import random

from reasoner.data import load_records
from reasoner.tasks import TASKS
from reasoner.tasks.base import Example, Task

HUB_ID = "openai/openai_humaneval"
FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def load(source: str | None, split: str, size: int | None, seed: int) -> list[Example]:
    rows = load_records(source or HUB_ID, split, required=FIELDS)
    examples = [
        Example(
            prompt=row["prompt"],
            gold=row["prompt"] + row["canonical_solution"],
            solution=row["canonical_solution"],
            meta={
                "index": i,
                "task_id": row["task_id"],
                "entry_point": row["entry_point"],
                "test": row["test"],
                "code_prefix": row["prompt"],
            },
            columns=row,
        )
        for i, row in enumerate(rows)
    ]
    if size is not None and size < len(examples):
        examples = random.Random(seed).sample(examples, size)
    return examples


TASKS.register("humaneval")(Task(name="humaneval", reward="code", load=load, kind="code"))
