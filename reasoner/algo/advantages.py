"""Advantages from rewards: GRPO's group-relative baseline, and PPO's masked whitening.

Rewards arrive *prompt-major*: the G completions of prompt 0, then the G of prompt 1, and so on,
so ``rewards.view(B, G)`` puts one group on each row.

Standard deviations are **unbiased** (Bessel's correction, ``torch.std``'s default), as in the GRPO
paper, TRL and verl. For a group of two with rewards ``[1, 0]`` that gives ``±0.5 / 0.7071 = ±0.7071``
(a biased std would give ``±1``).

>>> rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])  # two prompts, G=2; the second group has no signal
>>> [round(a, 4) for a in group_advantages(rewards, group_size=2).tolist()]
[0.7071, -0.7071, 0.0, 0.0]
>>> group_advantages(rewards, group_size=2, scale="none").tolist()  # Dr. GRPO: centre, don't scale
[0.5, -0.5, 0.0, 0.0]
>>> zero_variance_groups(rewards, group_size=2).tolist()
[False, False, True, True]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from reasoner.registry import Registry

# A scale maps the grouped rewards [B, G] (and eps) to the denominator of the centred rewards,
# broadcastable to [B, G].
ADVANTAGE_SCALES: Registry[Callable[[Tensor, float], Tensor]] = Registry("advantage scale")


@ADVANTAGE_SCALES.register("group")
def _group_std(groups: Tensor, eps: float) -> Tensor:
    if groups.shape[1] < 2:  # no unbiased std of one sample; every such group is zero-variance anyway
        return torch.ones((), dtype=groups.dtype, device=groups.device)
    return groups.std(dim=1, keepdim=True) + eps  # [B, 1], unbiased


@ADVANTAGE_SCALES.register("batch")
def _batch_std(groups: Tensor, eps: float) -> Tensor:
    # The std of the raw rewards over the whole batch (TRL's scale_rewards="batch").
    if groups.numel() < 2:
        return torch.ones((), dtype=groups.dtype, device=groups.device)
    return groups.std() + eps  # [], unbiased over all B*G rewards


@ADVANTAGE_SCALES.register("none")
def _no_scale(groups: Tensor, eps: float) -> Tensor:
    return torch.ones((), dtype=groups.dtype, device=groups.device)  # [] — no eps: leave values exact


def _as_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Validate prompt-major rewards [B*G] and return them as [B, G] floats."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B*G] (prompt-major), got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() == 0 or rewards.numel() % group_size:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of {group_size}; "
            "pass every completion of every prompt, prompt-major"
        )
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    if not torch.isfinite(rewards).all():
        bad = torch.nonzero(~torch.isfinite(rewards)).flatten().tolist()
        raise ValueError(
            f"rewards contain NaN/inf at indices {bad[:10]}; a reward that could not be scored (None) "
            "must be dropped or given a value before computing advantages"
        )
    return rewards.reshape(-1, group_size)  # [B, G]


def _zero_variance(groups: Tensor) -> Tensor:
    return (groups == groups[:, :1]).all(dim=1, keepdim=True)  # [B, 1] bool


def zero_variance_groups(rewards: Tensor, group_size: int) -> Tensor:
    """[B*G] bool: True for samples whose group's rewards are all equal (no learning signal)."""
    groups = _as_groups(rewards, group_size)  # [B, G]
    return _zero_variance(groups).expand_as(groups).reshape(-1)  # [B*G]


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-6) -> Tensor:
    """GRPO advantages ``(r - mean_group) / denominator`` for prompt-major rewards [B*G] -> [B*G].

    ``scale``: ``"group"`` divides by the group's std + eps, ``"batch"`` by the std of all rewards in
    the batch + eps, ``"none"`` does not divide (Dr. GRPO). Stds are unbiased (see the module docstring).
    A group whose rewards are all equal gets exactly 0 (never NaN), whatever the scale, including G=1.
    Unknown ``scale`` -> KeyError listing the valid ones.
    """
    denominator = ADVANTAGE_SCALES.get(scale)
    groups = _as_groups(rewards, group_size)  # [B, G]
    centred = groups - groups.mean(dim=1, keepdim=True)  # [B, G]
    adv = centred / denominator(groups, eps)  # [B, G]
    # Forced rather than trusted: the float mean of equal values need not equal them bit for bit.
    adv = torch.where(_zero_variance(groups), torch.zeros_like(adv), adv)  # [B, G]
    return adv.reshape(-1)  # [B*G]


def whiten(
    x: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Masked whitening (PPO advantages): ``(x - mean) / sqrt(var + eps)`` over positions where mask is set.

    Mean and (unbiased) variance come from the masked positions only; masked-out positions come back 0.
    ``shift_mean=False`` rescales but keeps the mean (adds it back). Needs at least 2 masked positions.
    ``reduce`` sums a tensor over the pieces of a batch split across processes
    (``reasoner.train.distributed.all_reduce_sum``): the count, sum and squared deviations then come from the
    whole batch, so each piece is whitened exactly as it would be in one process. None = this batch alone.

    >>> whiten(torch.tensor([[1.0, 3.0, 99.0]]), torch.tensor([[1, 1, 0]])).tolist()  # mean 2, var 2
    [[-0.7071067690849304, 0.7071067690849304, 0.0]]
    """
    if x.shape != mask.shape:
        raise ValueError(f"x {tuple(x.shape)} and mask {tuple(mask.shape)} must have the same shape")
    reduce = reduce or (lambda t: t)
    m = mask.bool()  # same shape as x
    zero = torch.zeros_like(x)
    n, total = reduce(torch.stack([m.sum().to(x.dtype), torch.where(m, x, zero).sum()]))  # [], []
    if int(n) < 2:
        raise ValueError(f"whiten needs at least 2 unmasked positions for a variance, got {int(n)}")
    mean = total / n  # []
    var = reduce(torch.where(m, (x - mean) ** 2, zero).sum()) / (n - 1)  # [] unbiased
    out = (x - mean) * torch.rsqrt(var + eps)  # same shape as x
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, zero)


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): each sample's baseline is the mean of the *other*
    G - 1 rewards of its group, ``A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean)``: [B*G] -> [B*G].

    No division by a std. Needs G >= 2 (a group of one has no other sample to compare with).

    >>> rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 3.0, 1.0, 2.0]), group_size=3).tolist()
    [1.0, -0.5, -0.5, 1.5, -1.5, 0.0]
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs at least 2 completions per prompt (rollout.n >= 2), got {group_size}")
    groups = _as_groups(rewards, group_size)  # [B, G]
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)  # [B, G] leave-one-out means
    adv = torch.where(_zero_variance(groups), torch.zeros_like(groups), groups - others)  # [B, G]
    return adv.reshape(-1)  # [B*G]


def varying_groups(rewards: Tensor, scored: Tensor, group_size: int) -> Tensor:
    """[B] bool: True for groups whose *scored* rewards are not all equal (DAPO's dynamic-sampling filter).

    rewards, scored [B*G] (prompt-major). A group with fewer than two scored samples does not vary.

    >>> varying_groups(torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0]), torch.tensor([1, 1, 1, 1, 0, 1]).bool(), 2).tolist()
    [True, False, False]
    """
    groups = _as_groups(rewards, group_size)  # [B, G]
    ok = scored.reshape(groups.shape).bool()  # [B, G]
    high = torch.where(ok, groups, torch.full_like(groups, -torch.inf)).amax(dim=1)  # [B]
    low = torch.where(ok, groups, torch.full_like(groups, torch.inf)).amin(dim=1)  # [B]
    return (ok.sum(dim=1) >= 2) & (high > low)
