"""The prompt stream of a run: which examples each step sees, and the text the policy continues for each.

The stream is endless and stateless: prompt ``i`` is a function of (seed, i), epoch after epoch, each epoch in its
own seeded order, so a resumed run (or another process, as benchmarks/vs_trl.py's TRL side) sees the same data.
"""

from __future__ import annotations

import random

from reasoner.config import Config, ConfigError
from reasoner.tasks.base import Example


def batch_for_step(examples: list[Example], step: int, size: int, seed: int) -> list[Example]:
    """The prompts of ``step`` without refill: a stateless function of (seed, step), so a resumed run sees the
    same data.

    >>> data = [Example(str(i), str(i)) for i in range(5)]
    >>> [e.prompt for e in batch_for_step(data, 2, 3, seed=0)] == [e.prompt for e in batch_for_step(data, 2, 3, seed=0)]
    True
    """
    return stream_slice(examples, step * size, size, seed)


def stream_slice(examples: list[Example], start: int, size: int, seed: int) -> list[Example]:
    """Prompts ``start .. start + size`` of the endless stream: epoch after epoch, each in its own seeded order.

    >>> data = [Example(str(i), str(i)) for i in range(5)]
    >>> sorted(e.prompt for e in stream_slice(data, 0, 5, seed=0))  # one epoch holds every prompt once
    ['0', '1', '2', '3', '4']
    """
    out = []
    for i in range(start, start + size):
        epoch, j = divmod(i, len(examples))
        out.append(examples[_permutation(len(examples), seed, epoch)[j]])
    return out


_PERMS: dict[tuple[int, int, int], list[int]] = {}


def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    key = (n, seed, epoch)
    if key not in _PERMS:
        perm = list(range(n))
        random.Random(f"{seed}-{epoch}").shuffle(perm)
        _PERMS.clear()  # keep only the current epoch's order
        _PERMS[key] = perm
    return _PERMS[key]


def prompt_renderer(tokenizer, cfg: Config):
    """The text the policy continues: a conversational example (``ex.messages``) always goes through the chat
    template, as TRL does; a plain prompt only with ``task.chat_template``."""
    name = cfg.model.tokenizer or cfg.model.path
    return chat_renderer(
        tokenizer, cfg.task.system_prompt, cfg.task.chat_template, name, "task.chat_template=true"
    )


def chat_renderer(tokenizer, system: str | None, chat_template: bool, name: str, flag: str):
    """:func:`prompt_renderer` from its parts (``reasoner eval`` passes its flags); ``flag`` names the setting that
    turns the template on, for the error when the tokenizer has none."""

    def render(ex: Example) -> str:
        if ex.messages is None and not chat_template:
            return ex.prompt
        messages = ex.messages if ex.messages is not None else [{"role": "user", "content": ex.prompt}]
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"the tokenizer of {name!r} has no chat template, which "
                + ("the conversational prompts of the data need (task.prompt names a field of chat messages): "
                   "give a template over a text field instead, or a model with a chat template"
                   if ex.messages is not None else f"{flag} needs")
            )  # fmt: skip
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return render
