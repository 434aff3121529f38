"""Generalised Advantage Estimation (Schulman et al. 2015) over completion tokens.

``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, where the value
after the last real token is 0 (the episode ends there). Masked positions are skipped: they are not
time steps, carry nothing and come back 0. With right padding that is just "stop at the last token".

>>> rewards = torch.tensor([[0.0, 0.0, 1.0]])
>>> values = torch.tensor([[0.5, 0.5, 0.5]])
>>> adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
>>> adv.tolist(), ret.tolist()  # gamma = lam = 1: A_t = (sum of future rewards) - V_t
([[0.5, 0.5, 0.5]], [[1.0, 1.0, 1.0]])
"""

from __future__ import annotations

import torch
from torch import Tensor


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """rewards, values, mask [B, T] -> (advantages [B, T], returns [B, T] = advantages + values).

    Vectorised over B, a loop over T backwards. Both outputs are 0 where mask is 0 and are detached
    (they are targets, not part of the graph).
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask {tuple(mask.shape)} "
            "must all be the same [B, T]"
        )
    with torch.no_grad():
        m = mask.bool()  # [B, T]
        dtype = values.dtype if values.is_floating_point() else torch.get_default_dtype()
        rewards, values = rewards.to(dtype), values.to(dtype)
        next_value = torch.zeros_like(values[:, 0])  # [B]; V after the last real token = 0
        next_adv = torch.zeros_like(values[:, 0])  # [B]
        advantages = torch.zeros_like(values)  # [B, T]
        for t in reversed(range(values.shape[1])):
            delta = rewards[:, t] + gamma * next_value - values[:, t]  # [B]
            adv_t = delta + gamma * lam * next_adv  # [B]
            # A masked position leaves the running value and advantage untouched.
            next_value = torch.where(m[:, t], values[:, t], next_value)
            next_adv = torch.where(m[:, t], adv_t, next_adv)
            advantages[:, t] = torch.where(m[:, t], adv_t, torch.zeros_like(adv_t))
        returns = torch.where(m, advantages + values, torch.zeros_like(values))  # [B, T]
    return advantages, returns
