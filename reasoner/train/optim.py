"""Optimizer and learning-rate schedule shared by SFT, GRPO and PPO."""

from __future__ import annotations

import math

import torch


def make_optimizer(params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    params = [p for p in params if p.requires_grad]
    fused = all(p.is_cuda for p in params)  # the fused kernel is CUDA-only
    return torch.optim.AdamW(
        params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), fused=fused or None
    )


def make_scheduler(
    optimizer, warmup_steps: int, total_steps: int, kind: str
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then constant or cosine decay to 0 at ``total_steps``.

    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    >>> f = make_scheduler(opt, 2, 10, "cosine").lr_lambdas[0]
    >>> [round(f(s), 3) for s in (0, 1, 2, 6, 10)]
    [0.333, 0.667, 1.0, 0.5, 0.0]
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1) if warmup_steps else 1.0
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
