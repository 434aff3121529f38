"""Two threads standing in for two ranks that share a batch: each computes on its piece with a ``reduce`` that adds
up what both hand it, the shape of ``reasoner.train.distributed.all_reduce_sum``. Pure math stays testable without
processes; tests/train/test_distributed.py runs the real gloo collectives."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch


def run_on_two_ranks(
    fn: Callable[[int, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor],
) -> list[torch.Tensor]:
    """``[fn(0, reduce), fn(1, reduce)]``, run concurrently; ``reduce(t)`` returns the sum of both ranks' ``t``."""
    meeting, box, out, errors = threading.Barrier(2, timeout=10), [None, None], [None, None], []

    def rank(i: int) -> None:
        def reduce(t: torch.Tensor) -> torch.Tensor:
            box[i] = t
            meeting.wait()
            total = box[0] + box[1]
            meeting.wait()  # both have read before either writes its next value
            return total

        try:
            out[i] = fn(i, reduce)
        except BaseException as e:  # re-raised below, in the test's thread
            errors.append(e)
            meeting.abort()

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    if errors:
        raise errors[0]
    return out
