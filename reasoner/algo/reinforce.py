"""REINFORCE++ (Hu et al. 2025) advantages: no critic, no per-group std; normalised over the whole batch.

- ``reinforce_pp_advantages``: the outcome reward on the last token minus ``beta * kl_t`` on every token
  (KL *in the reward*, ``token_rewards``), discounted returns-to-go, then whitened over every real
  token of the batch. No baseline but the batch mean.
- ``reinforce_pp_baseline_advantages``: the group mean is subtracted from the outcome rewards first (as GRPO,
  but not divided by the group's std), broadcast to every token, then whitened over the batch.

Shapes: N sequences (prompt-major groups of G), T completion tokens, ``mask`` [N, T] 1 on real tokens.

>>> r = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
>>> mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
>>> discounted_returns(r, mask, gamma=0.5).tolist()   # returns-to-go: 0.25, 0.5, 1; 0.5
[[0.25, 0.5, 1.0], [0.5, 0.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from reasoner.algo.advantages import _as_groups, whiten

Reduce = Callable[[Tensor], Tensor]  # sums a tensor over the ranks that share a batch (see ``whiten``)


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """``G_t = r_t + gamma * G_{t+1}`` over the real tokens of each row: [N, T] -> [N, T], 0 off the mask."""
    if token_rewards.shape != mask.shape or mask.dim() != 2:
        raise ValueError(
            f"token_rewards {tuple(token_rewards.shape)} and mask {tuple(mask.shape)} must be [N, T]"
        )
    m = mask.bool()
    r = torch.where(m, token_rewards.float(), torch.zeros_like(token_rewards, dtype=torch.float32))
    out = torch.zeros_like(r)  # [N, T]
    running = torch.zeros_like(r[:, 0])  # [N]
    for t in reversed(range(r.shape[1])):
        running = torch.where(m[:, t], r[:, t] + gamma * running, running)
        out[:, t] = torch.where(m[:, t], running, torch.zeros_like(running))
    return out


def _whiten_or_centre(x: Tensor, mask: Tensor, reduce: Reduce | None) -> Tensor:
    count = mask.bool().sum()
    if int(reduce(count) if reduce else count) < 2:  # one real token: nothing to normalise against
        return torch.zeros_like(x)
    return whiten(x, mask, reduce=reduce)


def reinforce_pp_advantages(
    token_rewards: Tensor, mask: Tensor, gamma: float = 1.0, reduce: Reduce | None = None
) -> Tensor:
    """REINFORCE++: returns-to-go of the per-token rewards [N, T], whitened over the batch's real tokens
    (every rank's, with ``reduce``: see ``whiten``).

    >>> r = torch.tensor([[0.0, 1.0], [0.0, 0.0]])     # rewards on the last token: 1 and 0
    >>> [round(v, 4) for v in reinforce_pp_advantages(r, torch.ones(2, 2)).flatten().tolist()]
    [0.866, 0.866, -0.866, -0.866]
    """
    return _whiten_or_centre(discounted_returns(token_rewards, mask, gamma), mask, reduce)


def reinforce_pp_baseline_advantages(
    rewards: Tensor, group_size: int, mask: Tensor, reduce: Reduce | None = None
) -> Tensor:
    """REINFORCE++-baseline: ``r - mean_group`` per sample [N], broadcast over tokens and whitened over the
    batch's real tokens (every rank's, with ``reduce``) -> [N, T].

    >>> rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])   # two prompts, G = 2: centred 0.5, -0.5, 0, 0
    >>> adv = reinforce_pp_baseline_advantages(rewards, 2, torch.ones(4, 1))
    >>> [round(v, 4) for v in adv.flatten().tolist()]   # mean 0, unbiased std sqrt(1/6)
    [1.2247, -1.2247, 0.0, 0.0]
    """
    groups = _as_groups(rewards, group_size)  # [B, G]
    centred = (groups - groups.mean(dim=1, keepdim=True)).reshape(-1)  # [N]
    if mask.dim() != 2 or mask.shape[0] != centred.shape[0]:
        raise ValueError(f"mask must be [N, T] with N = {centred.shape[0]}, got {tuple(mask.shape)}")
    return _whiten_or_centre(centred[:, None].expand(mask.shape).to(mask.device), mask, reduce)


def token_rewards(rewards: Tensor, mask: Tensor, kl: Tensor | None = None, beta: float = 0.0) -> Tensor:
    """Outcome rewards [N] placed on each row's last real token of ``mask`` [N, T], minus ``beta * kl`` [N, T].

    The last real token is the last position where ``mask`` is 1 (multi-turn rollouts have holes where a tool's
    output stands); a row with no real token gets nothing. Positions outside ``mask`` come back 0.

    >>> mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    >>> token_rewards(torch.tensor([1.0, 0.5]), mask).tolist()
    [[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]]
    >>> token_rewards(torch.tensor([1.0, 0.5]), mask, kl=torch.full((2, 3), 0.5), beta=0.5).tolist()
    [[-0.25, -0.25, 0.75], [0.25, 0.0, 0.0]]
    >>> token_rewards(torch.tensor([1.0]), torch.tensor([[1.0, 0.0, 1.0, 0.0]])).tolist()  # a hole, then padding
    [[0.0, 0.0, 1.0, 0.0]]
    """
    if rewards.dim() != 1 or mask.dim() != 2 or rewards.shape[0] != mask.shape[0]:
        raise ValueError(
            f"rewards must be [N] and mask [N, T]; got {tuple(rewards.shape)} and {tuple(mask.shape)}"
        )
    m = mask.bool()
    columns = torch.arange(mask.shape[1], device=mask.device)  # [T]
    last = torch.where(m, columns, -1).max(1).values  # [N] the last real token's column, -1 if none
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # [N, T]
    rows = torch.nonzero(last >= 0).squeeze(1)  # [N'] rows with at least one real token
    out[rows, last[rows]] = rewards.to(out)[rows]
    if kl is not None and beta:
        if kl.shape != mask.shape:
            raise ValueError(f"kl {tuple(kl.shape)} must have the mask's shape {tuple(mask.shape)}")
        out = out - beta * kl.float()
    return torch.where(m, out, torch.zeros_like(out))
