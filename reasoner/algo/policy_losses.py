"""Per-token policy-gradient losses, one registry entry per algorithm's importance weighting.

Every loss has the same signature, so the trainer calls ``POLICY_LOSSES.get(cfg.algo.loss)`` and nothing else
changes: ``(logp, old_logp, advantages, mask, clip_low, clip_high) -> (loss [B, T], clipped [B, T] bool)``.

Shapes: B sequences, T completion tokens (right-padded); ``logp`` carries the gradient, ``old_logp`` and
``advantages`` ([B] or [B, T]) are constants; ``mask`` [B, T] is 1 on real tokens. Aggregate the loss with
``reasoner.algo.aggregate``.

- ``ppo-clip`` (GRPO paper, PPO): the token ratio ``r_t = pi / pi_old``, loss ``-min(r A, clip(r) A)``.
- ``gspo`` (Zheng et al. 2025, GSPO-token form): one ratio per sequence, the geometric mean of its token
  ratios ``s = exp(mean_t log r_t)``, clipped per sequence; the token form ``sg[s] * pi_t / sg[pi_t]`` has the
  value ``s`` on every token and the gradient ``s * grad log pi_t``, so with ``seq-mean-token-mean`` it is
  exactly the paper's sequence-level objective. Its clip ranges are ~1e-3 (the paper: 3e-4 / 4e-4).
- ``cispo`` (MiniMax-M1, 2025): ``-sg[clip(r_t, 1 - clip_low, 1 + clip_high)] * A * log pi_t``: the importance
  weight is clipped and detached, but *every* token keeps its gradient (PPO-clip drops the clipped ones).
  ``clipped`` marks tokens whose weight was truncated.

>>> logp = torch.log(torch.tensor([[2.0, 0.5]]))  # token ratios 2 and 0.5 against old_logp = 0
>>> old, adv, mask = torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2)
>>> loss, clipped = POLICY_LOSSES.get("gspo")(logp, old, adv, mask, 0.2, 0.2)
>>> [round(v, 4) for v in loss[0].tolist()], clipped.tolist()  # s = exp(mean(log 2, log 0.5)) = 1: no clip
([-1.0, -1.0], [[False, False]])
>>> loss, clipped = POLICY_LOSSES.get("cispo")(logp, old, adv, mask, 0.2, 0.2)
>>> [round(v, 4) for v in loss[0].tolist()], clipped.tolist()  # -1.2 * log 2, -0.8 * log 0.5
([-0.8318, 0.5545], [[True, True]])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from reasoner.algo.tokens import RATIO_LOG_CLAMP, clipped_surrogate
from reasoner.registry import Registry

PolicyLoss = Callable[[Tensor, Tensor, Tensor, Tensor, float, float], tuple[Tensor, Tensor]]
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")


def _check(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """Validate shapes and return the advantages as [B, 1] or [B, T] (detached)."""
    if not (logp.shape == old_logp.shape == mask.shape) or logp.dim() != 2:
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask {tuple(mask.shape)} "
            "must all be the same [B, T]"
        )
    if advantages.dim() == 1 and advantages.shape[0] == logp.shape[0]:
        return advantages.detach().unsqueeze(-1)  # [B, 1]
    if advantages.shape == logp.shape:
        return advantages.detach()  # [B, T]
    raise ValueError(
        f"advantages must be [B] or [B, T] for logp {tuple(logp.shape)}, got {tuple(advantages.shape)}"
    )


@POLICY_LOSSES.register("ppo-clip")
def ppo_clip_loss(logp, old_logp, advantages, mask, clip_low, clip_high):
    _check(logp, old_logp, advantages, mask)
    return clipped_surrogate(logp, old_logp, advantages, clip_low, clip_high)


@POLICY_LOSSES.register("gspo")
def gspo_loss(logp, old_logp, advantages, mask, clip_low, clip_high):
    adv = _check(logp, old_logp, advantages, mask)
    m = mask.bool()  # [B, T]
    log_ratio = torch.where(m, logp - old_logp.detach(), torch.zeros_like(logp))  # [B, T]
    seq_log_ratio = log_ratio.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1)  # [B, 1]
    # Value s (per sequence) on every token; gradient s * d log pi_t (the sg[pi_t] cancels in the value).
    token_log_ratio = logp - logp.detach() + seq_log_ratio.detach()  # [B, T]
    token_log_ratio = token_log_ratio.clamp(-RATIO_LOG_CLAMP, RATIO_LOG_CLAMP)
    ratio = token_log_ratio.exp()  # [B, T]
    unclipped = -adv * ratio  # [B, T]
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)  # [B, T]
    return torch.maximum(unclipped, clipped), clipped > unclipped


@POLICY_LOSSES.register("cispo")
def cispo_loss(logp, old_logp, advantages, mask, clip_low, clip_high):
    adv = _check(logp, old_logp, advantages, mask)
    if not (0 <= clip_low <= 1 and clip_high >= 0):
        raise ValueError(f"need 0 <= clip_low <= 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    log_ratio = (logp.detach() - old_logp.detach()).clamp(-RATIO_LOG_CLAMP, RATIO_LOG_CLAMP)  # [B, T]
    ratio = log_ratio.exp()
    weight = ratio.clamp(1 - clip_low, 1 + clip_high)  # [B, T], a constant
    return -weight * adv * logp, weight != ratio
