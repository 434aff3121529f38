"""Reading a task's fields out of a data row: nested keys, prompt templates and conversational prompts.

``task.prompt`` is either a template over the row's fields (it contains ``{``: ``"Solve: {problem}\\nAnswer:"``,
``"{extra_info[question]}"``; a ``\\n`` typed in it is a newline) or the name of one field, holding a string
or a list of chat messages (TRL's conversational format). ``task.answer`` / ``task.solution`` name a field,
nested keys joined by dots (``reward_model.ground_truth``, verl's layout). A row that lacks a field fails
with a ``DataError`` naming the source, the row and the field.

>>> row = {"q": "2+2?", "reward_model": {"ground_truth": 4}}
>>> get_field(row, "reward_model.ground_truth", "data.parquet", 0)
4
>>> render_prompt(row, "Q: {q}\\nA:", "data.jsonl", 0)
('Q: 2+2?\\nA:', None)
>>> get_field(row, "answer", "data.jsonl", 2)
Traceback (most recent call last):
...
reasoner.data.DataError: data.jsonl: row 3 has no field 'answer' (present: q, reward_model)
"""

from __future__ import annotations

import string
from typing import Any

from reasoner.config import ConfigError
from reasoner.data import DataError


def is_template(spec: str) -> bool:
    return "{" in spec


def unescape(template: str) -> str:
    r"""``\n`` and ``\t`` typed in a template (a command line cannot hold a newline) become the characters.

    >>> unescape(r"Q: {q}\nA:")
    'Q: {q}\nA:'
    """
    return template.replace("\\n", "\n").replace("\\t", "\t")


def get_field(row: dict, key: str, where: str, i: int) -> Any:
    """``row[key]``, where ``key`` may be dotted (``a.b.c``) to reach into nested mappings; None is missing."""
    if row.get(key) is not None:  # a column whose name has dots in it wins over the nested reading
        return row[key]
    value: Any = row
    for depth, part in enumerate(key.split(".")):
        if (
            not isinstance(value, dict) or value.get(part) is None
        ):  # datasets fills a row's missing keys with None
            reached = ".".join(key.split(".")[:depth]) or None
            present = ", ".join(sorted(k for k, v in value.items() if v is not None)) if isinstance(
                value, dict) else f"a {type(value).__name__}, not a mapping"  # fmt: skip
            inside = f" inside {reached!r}" if reached else ""
            raise DataError(f"{where}: row {i + 1} has no field {key!r}{inside} (present: {present})")
        value = value[part]
    return value


def render_prompt(row: dict, spec: str, where: str, i: int) -> tuple[str, list[dict] | None]:
    """The prompt text of ``row`` and, for a conversational prompt, its messages (else None)."""
    name = _single_field(spec)
    if name is None:
        return _format(unescape(spec), row, where, i), None
    value = get_field(row, name, where, i)
    if isinstance(value, str):
        return value, None
    if isinstance(value, list) and value and all(_is_message(m) for m in value):
        messages = [{"role": m["role"], "content": m["content"]} for m in value]
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages), messages
    raise DataError(
        f"{where}: row {i + 1}: prompt field {name!r} must hold a string or a list of chat messages "
        f"[{{'role': ..., 'content': ...}}, ...]; got {_short(value)}"
    )


def _single_field(spec: str) -> str | None:
    """The field a prompt spec names: ``"question"`` or the one-placeholder template ``"{question}"``."""
    if not is_template(spec):
        return spec
    try:
        parts = list(string.Formatter().parse(spec))
    except ValueError:  # malformed: formatting it reports the error
        return None
    if len(parts) == 1 and parts[0][0] == "" and parts[0][1] and not parts[0][2] and not parts[0][3]:
        field = parts[0][1]
        return field if "[" not in field else None
    return None


def _format(template: str, row: dict, where: str, i: int) -> str:
    try:
        return template.format_map(_Row(row))
    except _Missing as e:
        present = ", ".join(sorted(k for k, v in row.items() if v is not None))
        raise DataError(
            f"{where}: row {i + 1} has no field {e.args[0]!r}, which task.prompt {template!r} uses "
            f"(present: {present})"
        ) from None
    except (KeyError, IndexError, TypeError) as e:  # {a[b]} into a value without b
        raise DataError(
            f"{where}: row {i + 1}: task.prompt {template!r} cannot be filled: {type(e).__name__}: {e}"
        ) from None
    except ValueError as e:  # a malformed template: one brace alone, a bad format spec
        raise ConfigError(
            f"task.prompt {template!r} is not a valid template ({e}); fields go in braces, "
            "e.g. 'Question: {question}\\nAnswer:', and a literal brace is written twice: {{ }}"
        ) from None


class _Missing(KeyError):
    pass


class _Row(dict):
    def __missing__(self, key):
        raise _Missing(key)

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if value is None:
            raise _Missing(key)
        return value


def _is_message(m: Any) -> bool:
    return isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
