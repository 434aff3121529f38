"""From a request's token ids to its text: ``cut`` (its own ``max_tokens`` and ``stop`` strings applied to a
completion generated for a longer budget) and ``TokenStream`` (the same, as the tokens arrive).

A ``TokenStream`` is one streaming request: its choices' text as the shared ``generate`` call decodes them. The
batcher's generate thread calls ``push(choice, token_id)`` for each new token of the request's rows and
``flush()`` once per decoding step; the request's handler reads the events on the event loop:

- ``("start", version)`` when its batch begins (the policy version that answers it),
- ``("text", choice, delta)`` as text becomes final,
- ``("done", choice, Choice)`` when a choice ends: EOS, a stop string, or its own ``max_tokens``,
- ``("error", exception)`` when the generate call fails.

Text is decoded incrementally (the whole choice each step, so merges across tokens come out right) and held back
while it could still change: a trailing U+FFFD (half of a multi-byte character) or a tail that starts a stop
string. So the deltas of a choice join to exactly the text a non-streamed request gets (``cut``). Each
step's events reach the loop in one ``call_soon_threadsafe``. A stream whose client went away (``cancel``) stops
decoding; the batch it shares goes on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Choice:
    text: str
    finish_reason: str  # stop | length
    completion_tokens: int


def cut(text: str, ids: list[int], finish: str, max_tokens: int, stop: list[str], tokenizer, eos: int):
    """Apply one request's ``max_tokens`` and ``stop`` to a completion generated for a longer budget."""
    if len(ids) > max_tokens:
        ids, finish = ids[:max_tokens], "length"
        text = tokenizer.decode(ids, skip_special_tokens=True)
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    if hits:
        text, finish = text[: min(hits)], "stop"
        return Choice(text, finish, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return Choice(text, finish, len([t for t in ids if t != eos]) + (1 if ids and ids[-1] == eos else 0))


@dataclass
class _ChoiceState:
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already sent
    done: bool = False


class TokenStream:
    def __init__(self, loop: asyncio.AbstractEventLoop, n: int, max_tokens: int, stop: list[str]):
        self.loop, self.max_tokens, self.stop = loop, max_tokens, stop
        self.events: asyncio.Queue[tuple] = asyncio.Queue()
        self.cancelled = False
        self._choices = [_ChoiceState() for _ in range(n)]
        self._pending: list[tuple] = []
        self._tok = None
        self._eos: int | None = None

    # --- the generate thread ------------------------------------------------------------------------------
    def begin(self, version: str, tokenizer) -> None:
        self._tok, self._eos = tokenizer, tokenizer.eos_token_id
        self._pending.append(("start", version))
        self.flush()

    def push(self, choice: int, token_id: int) -> None:
        state = self._choices[choice]
        if state.done or self.cancelled:
            return
        state.ids.append(token_id)
        if token_id == self._eos:
            return self._finish(choice, "stop")
        if len(state.ids) >= self.max_tokens:
            return self._finish(choice, "length")
        text = self._tok.decode(state.ids, skip_special_tokens=True)
        if any(s in text for s in self.stop):
            return self._finish(choice, "stop")
        ready = len(text.rstrip("\ufffd"))
        ready -= max((_overlap(text[:ready], s) for s in self.stop), default=0)
        if ready > state.sent:
            self._pending.append(("text", choice, text[state.sent : ready]))
            state.sent = ready

    def end(self) -> None:
        """The generate call is over: a choice still open ran out of tokens."""
        for i, state in enumerate(self._choices):
            if not state.done and not self.cancelled:
                self._finish(i, "length")
        self.flush()

    def fail(self, error: BaseException) -> None:
        self._pending.append(("error", error))
        self.flush()

    def flush(self) -> None:
        if self._pending:
            events, self._pending = self._pending, []
            self.loop.call_soon_threadsafe(_deliver, self.events, events)

    def _finish(self, choice: int, reason: str) -> None:
        state = self._choices[choice]
        text = self._tok.decode(state.ids, skip_special_tokens=True)
        final = cut(text, state.ids, reason, self.max_tokens, self.stop, self._tok, self._eos)
        if len(final.text) > state.sent:
            self._pending.append(("text", choice, final.text[state.sent :]))
        state.done = True
        self._pending.append(("done", choice, final))

    # --- the event loop -----------------------------------------------------------------------------------
    def cancel(self) -> None:
        self.cancelled = True


def _deliver(queue: asyncio.Queue, events: list[tuple]) -> None:
    for event in events:
        queue.put_nowait(event)


def _overlap(text: str, stop: str) -> int:
    """The length of the longest tail of ``text`` that is a proper prefix of ``stop`` (it may yet become it).

    >>> _overlap("the answer is 4\\nUs", "\\nUser:"), _overlap("abc", "xyz")
    (3, 0)
    """
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0
