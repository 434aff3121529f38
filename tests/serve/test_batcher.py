"""The batcher on a real tiny policy, without HTTP: how requests form batches."""

from __future__ import annotations

import asyncio

from reasoner.models import set_cpu_threads
from reasoner.rollout.base import SamplingParams
from reasoner.serve.batcher import Batcher
from reasoner.serve.service import load_policy_version


def test_clients_of_the_last_batch_that_come_back_late_still_share_a_batch(tiny_model_dir):
    set_cpu_threads(1)  # as the served tests do (ServeConfig(cpu_threads=1))
    policy = load_policy_version("v0", str(tiny_model_dir))
    # long enough that the batch takes well over 4 x the late clients' 17.5 ms spread (the wait is a quarter of it)
    params = SamplingParams(n=1, temperature=1.0, max_new_tokens=160)

    async def scenario():
        batcher = Batcher(lambda: policy, window_s=0.005, max_batch=64)
        batcher.start()
        try:
            await asyncio.gather(*(batcher.generate([f"{i} + 1 ="], params, []) for i in range(8)))
            first = batcher.calls

            async def late(i):  # back 0..17.5 ms after the first, well past the 5 ms window
                await asyncio.sleep(0.0025 * i)
                return await batcher.generate([f"{i} + 2 ="], params, [])

            answers = await asyncio.gather(*(late(i) for i in range(8)))
            return first, batcher.calls - first, answers
        finally:
            await batcher.stop()

    first, second, answers = asyncio.run(scenario())
    assert first == 1  # queued together: one generate call
    assert second == 1, f"8 returning clients took {second} generate calls"
    assert all(a.choices[0][0].completion_tokens > 0 for a in answers)


def test_requests_with_their_own_seeds_and_settings_share_one_call_and_keep_their_answers(tiny_model_dir):
    """Issue 32: the batch key held ``seed`` and ``n``, so seeded requests never shared a generate call. Now
    different seed, n, temperature, top_p and max_tokens share one, and a seeded request's answer is the one it
    gets alone."""
    set_cpu_threads(1)
    policy = load_policy_version("v0", str(tiny_model_dir))
    requests = [
        (f"{i} + {i} =", SamplingParams(n=1 + i % 3, temperature=[1.0, 0.7, 0.0][i % 3], top_p=[1.0, 0.9][i % 2],
                                        max_new_tokens=4 + 3 * i, seed=100 + i))
        for i in range(8)
    ]  # fmt: skip

    async def scenario():
        batcher = Batcher(lambda: policy, window_s=0.05, max_batch=64)
        batcher.start()
        try:
            together = await asyncio.gather(*(batcher.generate([p], s, []) for p, s in requests))
            calls = batcher.calls
            alone = [await batcher.generate([p], s, []) for p, s in requests]
            return together, calls, alone
        finally:
            await batcher.stop()

    together, calls, alone = asyncio.run(scenario())
    assert calls == 1, f"8 requests with different settings took {calls} generate calls"
    for (_, params), mixed, single in zip(requests, together, alone, strict=True):
        assert len(mixed.choices[0]) == params.n
        assert all(c.completion_tokens <= params.max_new_tokens for c in mixed.choices[0])
        assert [c.text for c in mixed.choices[0]] == [c.text for c in single.choices[0]]
    tokens = sum(c.completion_tokens for g in together for c in g.choices[0])
    assert tokens > 2 * len(requests)  # not all empty
