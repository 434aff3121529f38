"""The generic task ``task.name=dataset``: any file or hub dataset, its fields named in the config.

``task.train`` / ``task.test``: a .jsonl / .json / .jsonl.gz / .parquet file or a hub id
(``name:config``; the splits are ``task.train_split`` / ``task.test_split``). ``task.prompt``: a template over
the row's fields or the name of a field holding a string or chat messages (default ``prompt``, TRL's column);
``task.answer``: the gold field, dotted for nested keys (``reward_model.ground_truth`` reads verl's parquet as
it is); ``task.solution``: an optional reference completion, the SFT warm start's target. Every column of the
row travels with its example (``Example.columns``), so a user reward (``task.reward=file.py:function``) gets
them as keyword arguments.

The reward defaults to ``math`` (the final answer of a completion against ``task.answer``); evaluation reports
the mean reward (``kind="reward"``), which for a 0/1 reward is the accuracy.
"""

from __future__ import annotations

import random
from pathlib import Path

from reasoner.config import ConfigError
from reasoner.data import DataError, load_records
from reasoner.tasks import TASKS
from reasoner.tasks.base import Example, Task
from reasoner.tasks.fields import get_field, render_prompt

DEFAULT_PROMPT = "prompt"


def load(
    source: str | None,
    split: str,
    size: int | None,
    seed: int,
    *,
    prompt: str | None = None,
    answer: str | None = None,
    solution: str | None = None,
) -> list[Example]:
    if source is None:
        raise ConfigError(
            "task.name=dataset reads your data: set task.train=FILE_OR_HUB_ID and task.test=FILE_OR_HUB_ID "
            "(a .jsonl, .json, .jsonl.gz or .parquet file, or a hub dataset id)"
        )
    prompt = prompt or DEFAULT_PROMPT
    rows = load_records(source, split)
    if not rows:
        raise DataError(f"{source}: no rows")
    where = source if Path(source).exists() else f"{source} (split {split})"
    examples = []
    for i, row in enumerate(rows):
        text, messages = render_prompt(row, prompt, where, i)
        examples.append(
            Example(
                prompt=text,
                gold="" if answer is None else str(get_field(row, answer, where, i)),
                solution=None
                if solution is None
                else _solution(get_field(row, solution, where, i), where, i),
                meta={"index": i, "source": where},
                columns=row,
                messages=messages,
            )
        )
    if size is not None and size < len(examples):
        examples = random.Random(seed).sample(examples, size)
    return examples


def _solution(value, where: str, i: int) -> str:
    if not isinstance(value, str):
        raise DataError(
            f"{where}: row {i + 1}: the task.solution field must hold the reference completion as a string; "
            f"got {type(value).__name__}"
        )
    return value


TASKS.register("dataset")(Task(name="dataset", reward="math", load=load, kind="reward", from_fields=True))
