"""From a request's token ids to its text: ``cut`` (its own ``max_tokens`` and ``stop`` strings applied to a
completion generated for a longer budget) and ``TokenStream`` (the same, as the tokens arrive).

A ``TokenStream`` is one streaming request: its choices' text as the shared ``generate`` call decodes them. The
batcher's generate thread calls ``push(choice, token_id)`` for each new token of the request's rows and
``flush()`` once per decoding step; the request's handler reads the events on the event loop:

- ``("start", version)`` when its batch begins (the policy version that answers it),
- ``("text", choice, delta, entries)`` as text becomes final, with the ``TokenLogprob`` entries of the tokens
  it completes when the request asked for log-probs (else None),
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
class TokenLogprob:
    """One sampled token as a response reports it: its text, its log-prob, the k most likely tokens' (text,
    log-prob) at its position."""

    token: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass
class Choice:
    text: str
    finish_reason: str  # stop | length
    completion_tokens: int
    # the sampled tokens kept (the EOS included) and their log-probs, when the engine reported them: the
    # behaviour policy's log-probs, stored with the completion
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    # the kept tokens but the EOS as the response reports them, when the request asked for log-probs
    entries: list[TokenLogprob] | None = None


@dataclass
class Sampled:
    """The log-probs the engine reported for a completion's tokens (``Rollout.logprobs``, ``.top_logprobs``) and
    how many of the top ones the request asked for (None: no entries in the response)."""

    logprobs: list[float]
    top: list[list[tuple[int, float]]]
    k: int | None


def cut(text: str, ids: list[int], finish: str, max_tokens: int, stop: list[str], tokenizer, eos: int,
        sampled: Sampled | None = None) -> Choice:  # fmt: skip
    """Apply one request's ``max_tokens`` and ``stop`` to a completion generated for a longer budget.

    A stop string keeps the log-probs of the tokens that lie wholly before it."""
    if len(ids) > max_tokens:
        ids, finish = ids[:max_tokens], "length"
        text = tokenizer.decode(ids, skip_special_tokens=True)
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    if hits:
        text, finish = text[: min(hits)], "stop"
        choice = Choice(text, finish, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        ids = ids[: _tokens_within(ids, len(text), tokenizer)]
    else:
        choice = Choice(
            text, finish, len([t for t in ids if t != eos]) + (1 if ids and ids[-1] == eos else 0)
        )
    if sampled is not None:
        choice.token_ids, choice.logprobs = list(ids), sampled.logprobs[: len(ids)]
        if sampled.k is not None:
            choice.entries = token_entries(ids, sampled.logprobs, sampled.top, sampled.k, tokenizer, eos)
    return choice


def _tokens_within(ids: list[int], length: int, tokenizer) -> int:
    """The most leading tokens of ``ids`` whose text is at most ``length`` characters (binary search)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.decode(ids[:mid], skip_special_tokens=True)) <= length:
            lo = mid
        else:
            hi = mid - 1
    return lo


def token_entries(ids, logprobs, top, k: int, tokenizer, eos: int) -> list[TokenLogprob]:
    """The response's log-prob entries of ``ids``: one per token but the EOS (it has no text), each with the
    ``k`` most likely tokens at its position. A sampled special token's text is "" (the text leaves it out, and
    the entries join to the text); among the alternatives it shows as itself."""
    texts: dict[tuple[int, bool], str] = {}

    def text(i: int, skip: bool) -> str:
        if (i, skip) not in texts:
            texts[i, skip] = tokenizer.decode([i], skip_special_tokens=skip)
        return texts[i, skip]

    return [
        TokenLogprob(text(i, True), lp, [(text(t, False), v) for t, v in alts[:k]])
        for i, lp, alts in zip(ids, logprobs, top, strict=False)
        if i != eos
    ]


@dataclass
class _ChoiceState:
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already sent
    done: bool = False
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # the text's length once each token is in
    entries_sent: int = 0  # tokens whose log-prob entries were sent


class TokenStream:
    def __init__(self, loop: asyncio.AbstractEventLoop, n: int, max_tokens: int, stop: list[str],
                 logprobs: int | None = None):  # fmt: skip
        """``logprobs``: the top log-probs the request asked for (None: no entries in its events)."""
        self.loop, self.max_tokens, self.stop, self.k = loop, max_tokens, stop, logprobs
        self.events: asyncio.Queue[tuple] = asyncio.Queue()
        self.cancelled = False
        self.prompt_tokens = 0  # the prompt's token count (the service sets it)
        self._choices = [_ChoiceState() for _ in range(n)]
        self._pending: list[tuple] = []
        self._tok = None
        self._eos: int | None = None

    # --- the generate thread ------------------------------------------------------------------------------
    def begin(self, version: str, tokenizer) -> None:
        self._tok, self._eos = tokenizer, tokenizer.eos_token_id
        self._pending.append(("start", version))
        self.flush()

    def push(
        self, choice: int, token_id: int, logprob: tuple[float, list[tuple[int, float]]] | None = None
    ) -> None:
        """``logprob``: the token's (log-prob, top k (id, log-prob)) when the engine reports them."""
        state = self._choices[choice]
        if state.done or self.cancelled:
            return
        state.ids.append(token_id)
        if logprob is not None:
            state.logprobs.append(logprob[0])
            state.top.append(logprob[1])
        if token_id == self._eos:
            return self._finish(choice, "stop")
        if len(state.ids) >= self.max_tokens:
            return self._finish(choice, "length")
        text = self._tok.decode(state.ids, skip_special_tokens=True)
        if any(s in text for s in self.stop):
            return self._finish(choice, "stop")
        state.ends.append(len(text))
        ready = len(text.rstrip("\ufffd"))
        ready -= max((_overlap(text[:ready], s) for s in self.stop), default=0)
        if ready > state.sent:
            settled = state.entries_sent
            while settled < len(state.ends) and state.ends[settled] <= ready:
                settled += 1
            self._pending.append(("text", choice, text[state.sent : ready], self._entries(state, settled)))
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

    def _entries(self, state: _ChoiceState, upto: int) -> list[TokenLogprob] | None:
        """The entries of tokens ``entries_sent .. upto`` (None: not asked for, or not reported)."""
        if self.k is None or len(state.logprobs) < upto:
            return None
        start, state.entries_sent = state.entries_sent, upto
        ids = state.ids[start:upto]
        return token_entries(
            ids, state.logprobs[start:upto], state.top[start:upto], self.k, self._tok, self._eos
        )

    def _finish(self, choice: int, reason: str) -> None:
        state = self._choices[choice]
        text = self._tok.decode(state.ids, skip_special_tokens=True)
        sampled = Sampled(state.logprobs, state.top, None) if len(state.logprobs) == len(state.ids) else None
        final = cut(text, state.ids, reason, self.max_tokens, self.stop, self._tok, self._eos, sampled)
        kept = len(final.token_ids) if final.token_ids is not None else len(state.ids)
        entries = self._entries(state, max(kept, state.entries_sent))
        if len(final.text) > state.sent or entries:
            self._pending.append(("text", choice, final.text[state.sent :], entries))
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
