"""Reward shaping by completion length: DAPO's soft overlong punishment (Yu et al. 2025, eq. 13).

With ``L = max_new_tokens`` and a buffer of ``b`` tokens before it, a completion of ``|y|`` tokens gets

    0                         if |y| <= L - b
    ((L - b) - |y|) / b       if L - b < |y| <= L      (falls linearly from 0 to -1)
    -1                        if |y| > L

times ``penalty``, added to its reward. The punishment starts before the hard cut, so the policy learns to
finish in time instead of being cut mid-answer.

>>> overlong_penalty(torch.tensor([10, 16, 18, 20]), max_len=20, buffer=4).tolist()
[0.0, 0.0, -0.5, -1.0]
"""

from __future__ import annotations

import torch  # noqa: F401  (the doctest uses it)
from torch import Tensor


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, penalty: float = 1.0) -> Tensor:
    """Per-completion shaping term [N] (<= 0) from completion lengths [N] in tokens."""
    if not 0 < buffer <= max_len:
        raise ValueError(f"the overlong buffer must be in 1..max_new_tokens={max_len}, got {buffer}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D [N], got shape {tuple(lengths.shape)}")
    start = max_len - buffer
    over = (lengths.float() - start).clamp(min=0.0)  # [N] tokens into the buffer
    return -penalty * (over / buffer).clamp(max=1.0) + 0.0  # + 0.0: no -0.0 in the output
