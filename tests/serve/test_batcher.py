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
