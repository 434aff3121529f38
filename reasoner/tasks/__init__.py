"""Tasks by name. A task module registers a ``Task`` in ``TASKS``; ``get_task`` imports the built-in ones lazily."""

from __future__ import annotations

from reasoner.registry import Registry
from reasoner.tasks.base import Example, Task

TASKS: Registry[Task] = Registry("task")

_BUILTIN = (
    "arithmetic",
    "products",
    "gsm8k",
    "math",
    "humaneval",
    "mbpp",
    "codegen",
    "preference",
    "prompts",
    "dataset",
)


def get_task(name: str) -> Task:
    import importlib

    for module in _BUILTIN:
        if module not in TASKS:
            try:
                importlib.import_module(f"reasoner.tasks.{module}")
            except ModuleNotFoundError as e:
                if e.name != f"reasoner.tasks.{module}":
                    raise
    return TASKS.get(name)


def load_examples(task_cfg, split: str, seed: int) -> list[Example]:
    """The examples of ``split`` ("train" or "test") as the run's ``task`` config describes them.

    The ``dataset`` task reads ``task.prompt`` / ``task.answer`` / ``task.solution`` as it loads; a built-in
    task loads as it always has, and a ``task.prompt`` then replaces its template, filled from each example's
    ``columns`` (GSM8K: question, answer; MATH: problem, solution, answer; ...).
    """
    from reasoner.config import ConfigError

    tc = task_cfg
    task = get_task(tc.name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    source, hub_split, size = (
        (tc.train, tc.train_split, tc.train_size)
        if split == "train"
        else (tc.test, tc.test_split, tc.eval_size)
    )
    if task.from_fields:
        if split == "test" and source is None and tc.train is not None:
            raise ConfigError(
                "task.test is not set: give held-out data for the evaluation (task.test=FILE_OR_HUB_ID; for a hub "
                "dataset the same id as task.train with task.test_split)"
            )
        if tc.answer is None and task.reward in ([t.name for t in tc.rewards] or [tc.reward or task.reward]):
            raise ConfigError(
                f"task.name=dataset scores with the {task.reward!r} reward unless told otherwise, which compares a "
                "completion with the gold answer: name the field that holds it (task.answer=FIELD, nested keys "
                "as a.b), or give your own reward (task.reward=path/to/file.py:function)"
            )
        return task.load(
            source, hub_split, size, seed, prompt=tc.prompt, answer=tc.answer, solution=tc.solution
        )
    for key in ("answer", "solution"):
        if getattr(tc, key) is not None:
            raise ConfigError(
                f"task.{key} names a field of your data for task.name=dataset; task {tc.name!r} reads its own fields"
            )
    examples = task.load(source, hub_split, size, seed)
    if tc.prompt is not None:
        from reasoner.tasks.fields import render_prompt

        if any(not ex.columns for ex in examples):
            raise ConfigError(f"task.prompt: task {tc.name!r} has no fields to fill a template with")
        where = source or f"task {tc.name}"
        for ex in examples:
            ex.prompt, ex.messages = render_prompt(ex.columns, tc.prompt, where, ex.meta.get("index", 0))
    return examples


__all__ = ["TASKS", "Example", "Task", "get_task", "load_examples"]
