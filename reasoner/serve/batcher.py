"""Concurrent requests share ``Engine.generate`` calls.

Requests wait in an asyncio queue; the batch loop takes the first, then whatever else arrives within
``window_s`` (up to ``max_batch`` sequences; longer, up to ``MAX_WAIT_S``, while it holds fewer than the last batch
did: those clients are on their way back), and decodes them together in one ``generate_mixed`` call on a single
worker thread (torch runs one generate at a time; the event loop stays free for other requests and feedback).
Requests with different ``n``, temperature, top_p, ``max_tokens`` and seed share the batch: every row samples with
its own settings and generator and leaves the batch at its own EOS or budget, so a seeded request's answer is the
one it gets alone (reasoner.rollout.hf.HFEngine.generate_mixed). ``stop`` strings are applied afterwards. An
engine without ``generate_mixed`` gets one ``generate`` call per group of equal settings. While a batch runs, new
requests queue up and form the next batch.

A streaming request (``stream``) joins the same batches; its rows' tokens go to its ``TokenStream`` at each
decoding step of the shared call (reasoner.serve.decode), so its text flows while the batch decodes and its
stream ends as soon as its own choices are done.

The policy is read once per batch: a hot swap (``ServeService.deploy``) takes effect at the next batch and never
touches one in flight.

Every call reports the sampled tokens' log-probs (the store keeps them with the completion: the behaviour
policy's); a request's ``SamplingParams.logprobs`` (the top-k it asked for, None: none) sets what its response
reports, the group's call computing the largest top-k among its requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from reasoner.rollout.base import SamplingParams
from reasoner.serve.decode import Choice, Sampled, TokenStream, cut


@dataclass
class Generated:
    version: str
    prompt_tokens: list[int]  # per prompt
    choices: list[list[Choice]]  # [prompt][n]


@dataclass
class _Item:
    prompts: list[str]
    params: SamplingParams  # max_new_tokens = this request's max_tokens
    stop: list[str]
    future: asyncio.Future | None = field(default=None, repr=False)  # a non-streaming request's result
    stream: TokenStream | None = field(default=None, repr=False)  # a streaming request's (one prompt)

    @property
    def gone(self) -> bool:
        """Its client went away (or it has its answer)."""
        return self.stream.cancelled if self.stream is not None else self.future.done()

    def answer(self, result: Generated) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(result)

    def fail(self, error: BaseException) -> None:
        if self.stream is not None:
            self.stream.fail(error)
        elif not self.future.done():
            self.future.set_exception(error)

    @property
    def key(self) -> tuple:
        p = self.params
        return (p.n, p.temperature, p.top_p, p.seed)

    @property
    def sequences(self) -> int:
        return len(self.prompts) * self.params.n


MAX_WAIT_S = 0.05  # the longest a batch waits for the clients of the last one


class Batcher:
    def __init__(self, policy: Callable[[], object], window_s: float = 0.005, max_batch: int = 64):
        self.policy, self.window_s, self.max_batch = policy, window_s, max_batch
        self.queue: asyncio.Queue[_Item] | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self.calls = 0  # generate calls made (the benchmark reads it)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def generate(self, prompts: list[str], params: SamplingParams, stop: list[str]) -> Generated:
        if self.queue is None:
            raise RuntimeError("Batcher.start() has not run (the app's lifespan starts it)")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Item(prompts, params, stop, future=future))
        return await future

    async def stream(self, prompt: str, params: SamplingParams, stop: list[str]) -> TokenStream:
        """Queue one streaming request; read its events from the returned stream's ``events`` queue."""
        if self.queue is None:
            raise RuntimeError("Batcher.start() has not run (the app's lifespan starts it)")
        stream = TokenStream(
            asyncio.get_running_loop(), params.n, params.max_new_tokens, stop, params.logprobs
        )
        await self.queue.put(_Item([prompt], params, stop, stream=stream))
        return stream

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        expected, last_s = 1, 0.0  # the sequences of the last batch and how long it took
        while True:
            batch = [await self.queue.get()]
            window = loop.time() + self.window_s
            # The clients the last batch answered come back over several ms (each answer is committed to the
            # store first), some after the window: a batch that has fewer sequences than the last one waits for
            # them, for at most a quarter of the last batch's time (measured: 32 clients were served as batches
            # of 14 and 18 half the time). One client at a time never waits past the window.
            patient = loop.time() + max(self.window_s, min(last_s / 4, MAX_WAIT_S))
            while (size := sum(i.sequences for i in batch)) < self.max_batch:
                if not self.queue.empty():  # queued while the last batch ran: take it without waiting
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = (patient if size < expected else window) - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            expected, started = sum(i.sequences for i in batch), loop.time()
            policy = self.policy()  # one version per batch: a hot swap applies from the next batch on
            groups: dict[tuple, list[_Item]] = {}
            mixed = hasattr(policy.engine, "generate_mixed")
            for item in batch:
                groups.setdefault(() if mixed else item.key, []).append(item)
            for items in groups.values():
                items = [i for i in items if not i.gone]
                if not items:
                    continue
                try:
                    results = await loop.run_in_executor(self.executor, self._run_group, policy, items)
                except Exception as e:  # a failed generate fails its requests, not the server
                    for i in items:
                        i.fail(e)
                    continue
                for i, r in zip(items, results, strict=True):
                    i.answer(r)
            last_s = loop.time() - started

    def _run_group(self, policy, items: list[_Item]) -> list[Generated]:
        self.calls += 1
        tok = policy.tokenizer
        # every call computes the sampled tokens' log-probs (the store keeps the behaviour policy's); a request's
        # own top-k (logprobs) only sets what its response reports
        requests = [(p, replace(i.params, logprobs=i.params.logprobs or 0)) for i in items for p in i.prompts]
        streams = [i.stream for i in items if i.stream is not None]
        on_tokens = None
        if streams:
            owners: list[tuple[TokenStream, int] | None] = []  # each output row's stream and choice
            for i in items:
                owners += [
                    (i.stream, k) if i.stream is not None else None
                    for _ in i.prompts
                    for k in range(i.params.n)
                ]
            for stream in streams:
                stream.begin(policy.name, tok)

            def on_tokens(rows, ids, lps):
                for j, (row, token) in enumerate(zip(rows, ids, strict=True)):
                    if owners[row] is not None:
                        lp = (
                            None
                            if lps is None
                            else (lps.sampled[j], list(zip(lps.top_ids[j], lps.top_logprobs[j], strict=True)))
                        )
                        owners[row][0].push(owners[row][1], token, lp)
                for stream in streams:
                    stream.flush()

        step = {"on_tokens": on_tokens} if streams else {}  # only a streaming batch needs each step reported
        if hasattr(policy.engine, "generate_mixed"):
            rollouts = policy.engine.generate_mixed(requests, **step)  # [request][n]
        else:  # one call for requests of equal settings: the batch loop grouped them by key
            params = replace(
                items[0].params,
                max_new_tokens=max(p.max_new_tokens for _, p in requests),
                logprobs=max(p.logprobs for _, p in requests),
            )
            flat = policy.engine.generate([p for p, _ in requests], params, **step)  # prompt-major
            rollouts = [flat[j * params.n : (j + 1) * params.n] for j in range(len(requests))]
        for stream in streams:
            stream.end()
        out, start = [], 0
        for item in items:
            mine = rollouts[start : start + len(item.prompts)]
            start += len(item.prompts)
            choices = [
                [
                    cut(
                        r.text,
                        r.completion_ids,
                        r.finish_reason,
                        item.params.max_new_tokens,
                        item.stop,
                        tok,
                        tok.eos_token_id,
                        None
                        if r.logprobs is None
                        else Sampled(r.logprobs, r.top_logprobs, item.params.logprobs),
                    )
                    for r in prompt
                ]
                for prompt in mine
            ]
            out.append(Generated(policy.name, [len(prompt[0].prompt_ids) for prompt in mine], choices))
        return out
