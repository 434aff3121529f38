"""MBPP: short Python programming problems, each checked by three asserts.

Records of the sanitized set ``{task_id, prompt, code, test_imports, test_list}`` (hub
``google-research-datasets/mbpp:sanitized``, split ``test``); the full set's ``text`` and
``test_setup_code`` are read too. The prompt is the problem statement and its first test inside a
docstring (the bigcode-evaluation-harness format), so a base model answers with code; the completion is a
whole program (bare or fenced), scored by ``test_imports + program + test_list``.
"""

from __future__ import annotations

import random

from reasoner.data import DataError, load_records
from reasoner.tasks import TASKS
from reasoner.tasks.base import Example, Task

HUB_ID = "google-research-datasets/mbpp:sanitized"
PROMPT = '"""\n{description}\n{first_test}\n"""\n'


def load(source: str | None, split: str, size: int | None, seed: int) -> list[Example]:
    where = source or HUB_ID
    rows = load_records(where, split, required=("task_id", "code", "test_list"))
    examples = []
    for i, row in enumerate(rows):
        description = row.get("prompt") or row.get("text")
        if not description:
            raise DataError(
                f"{where}: row {i + 1} has neither 'prompt' (sanitized MBPP) nor 'text' (full MBPP)"
            )
        tests = list(row["test_list"])
        if not tests or not all(isinstance(t, str) for t in tests):
            raise DataError(f"{where}: row {i + 1}: 'test_list' must be a non-empty list of assert strings")
        imports = list(row.get("test_imports") or [])
        if row.get("test_setup_code"):
            imports.append(row["test_setup_code"])
        examples.append(
            Example(
                prompt=PROMPT.format(description=description.strip(), first_test=tests[0]),
                gold=row["code"],
                solution=row["code"],
                meta={
                    "index": i,
                    "task_id": row["task_id"],
                    "test_list": tests,
                    "test_imports": imports,
                    "code_prefix": "",
                },
                columns=row,
            )
        )
    if size is not None and size < len(examples):
        examples = random.Random(seed).sample(examples, size)
    return examples


TASKS.register("mbpp")(Task(name="mbpp", reward="code", load=load, kind="code"))
