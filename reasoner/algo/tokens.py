"""Policy and value losses as per-token tensors, and the ways to reduce them to a scalar.

Shapes: B sequences (completions), T completion tokens (right-padded), V vocabulary.
``mask`` is 1/True on real completion tokens. Per-token losses may hold garbage on masked positions;
``aggregate`` selects with the mask (``where``, not a multiply), so even NaN there cannot leak in.

>>> loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
>>> mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
>>> aggregate(loss, mask, "token-mean").item()            # (1+2+3+4) / 4 tokens
2.5
>>> aggregate(loss, mask, "seq-mean-token-mean").item()   # (6/3 + 4/1) / 2 sequences
3.0
>>> aggregate(loss, mask, "seq-mean-token-sum-norm", norm_length=4).item()  # (6/4 + 4/4) / 2
1.25
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from reasoner.registry import Registry

# Bound on |logp - old_logp| before exp in the importance ratio: exp(20) ≈ 4.85e8 stays finite.
RATIO_LOG_CLAMP = 20.0


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def token_logprobs(logits: Tensor, token_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(token) under ``softmax(logits / temperature)``: logits [B, T, V], token_ids [B, T] -> [B, T] float32.

    ``logits[:, t]`` must already predict ``token_ids[:, t]`` (shift before calling). Computed as
    gathered logit minus logsumexp, one sequence at a time, so the forward pass never holds a full
    [B, T, V] log-softmax (or float32 / temperature copy) beside the logits: the extra peak is one [T, V].

    >>> logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])  # [1, 2, 2]
    >>> [round(v, 4) for v in token_logprobs(logits, torch.tensor([[1, 0]]))[0].tolist()]  # log 1/2, log e²/(e²+1)
    [-0.6931, -0.1269]
    """
    _check_temperature(temperature)
    if logits.dim() < 2 or logits.shape[:-1] != token_ids.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be token_ids {tuple(token_ids.shape)} plus a vocabulary dim"
        )
    picked = logits.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1).float() / temperature  # [B, T]
    lse = torch.stack([torch.logsumexp(_scaled(row, temperature), dim=-1) for row in logits])  # [B, T]
    return picked - lse


def _scaled(row: Tensor, temperature: float) -> Tensor:
    z = row.float()  # [T, V]; upcast so bf16 logits get a float32 logsumexp
    return z if temperature == 1.0 else z / temperature


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of ``softmax(logits / temperature)`` in nats: [B, T, V] -> [B, T] float32.

    Vocabulary entries at -inf (masked tokens) count as probability 0, with finite gradients.

    >>> [round(v, 4) for v in entropy_from_logits(torch.zeros(1, 1, 4))[0].tolist()]  # uniform over 4: log 4
    [1.3863]
    """
    _check_temperature(temperature)
    if logits.dim() < 2:
        raise ValueError(f"logits must be [..., V], got shape {tuple(logits.shape)}")
    return torch.stack([_row_entropy(_scaled(row, temperature)) for row in logits])  # [B, T]


def _row_entropy(z: Tensor) -> Tensor:
    logp = torch.log_softmax(z, dim=-1)  # [T, V]
    p = logp.exp()  # [T, V]
    # 0 * log 0 = 0; zeroing logp *before* the multiply keeps -inf out of the backward pass too.
    logp = torch.where(p > 0, logp, torch.zeros_like(logp))
    return -(p * logp).sum(dim=-1)  # [T]


def clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    clip_low: float,
    clip_high: float,
    *,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate per token: ``-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)``.

    logp, old_logp [B, T]; advantages [B] (one per sequence, broadcast over tokens) or [B, T].
    ``r = exp(logp - old_logp)`` with the log-ratio clamped to ±``RATIO_LOG_CLAMP``. Gradients flow
    through ``logp`` only (old_logp and advantages are detached).
    ``dual_clip`` (c > 1, Ye et al. 2019): for A < 0 also cap the loss at ``-c A``.

    Returns (loss [B, T], was_clipped [B, T] bool: a clipped branch was the active one, so the token
    gives no gradient). Masked positions are not special: aggregate with the mask.

    >>> logp = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5 against old_logp = 0
    >>> loss, clipped = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([1.0]), 0.2, 0.28)
    >>> [round(v, 4) for v in loss[0].tolist()], clipped.tolist()  # -min(1.5, 1.28), -min(0.5, 0.8)
    ([-1.28, -0.5], [[True, False]])
    """
    if logp.shape != old_logp.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)} and old_logp {tuple(old_logp.shape)} must have the same shape"
        )
    if advantages.dim() == 1 and advantages.shape[0] == logp.shape[0]:
        adv = advantages.detach().unsqueeze(-1)  # [B, 1], broadcast over tokens
    elif advantages.shape == logp.shape:
        adv = advantages.detach()  # [B, T]
    else:
        raise ValueError(
            f"advantages must be [B] or [B, T] for logp {tuple(logp.shape)}, got {tuple(advantages.shape)}"
        )
    if not (0 <= clip_low < 1 and clip_high >= 0):
        raise ValueError(
            f"need 0 <= clip_low < 1 and clip_high >= 0, got clip_low={clip_low}, clip_high={clip_high}"
        )
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")

    log_ratio = (logp - old_logp.detach()).clamp(-RATIO_LOG_CLAMP, RATIO_LOG_CLAMP)  # [B, T]
    ratio = log_ratio.exp()  # [B, T]
    unclipped = -adv * ratio  # [B, T]
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)  # [B, T]
    loss = torch.maximum(unclipped, clipped)  # [B, T]; max of negatives = -min of objectives
    was_clipped = clipped > unclipped  # [B, T]
    if dual_clip is not None:
        cap = -adv * dual_clip  # [B, 1] or [B, T]
        capped = (adv < 0) & (loss > cap)  # [B, T]
        loss = torch.where(capped, cap.expand_as(loss), loss)
        was_clipped = was_clipped | capped
    return loss, was_clipped


# Each aggregation maps (loss [B, T], mask [B, T] bool, norm_length) to a scalar [].
LOSS_AGGREGATIONS: Registry[Callable[[Tensor, Tensor, int | None], Tensor]] = Registry("loss aggregation")


def _masked(loss: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, loss, torch.zeros_like(loss))  # [B, T]


@LOSS_AGGREGATIONS.register("token-mean")
def _token_mean(loss: Tensor, mask: Tensor, norm_length: int | None) -> Tensor:
    # Every token of the batch weighs the same (DAPO); long answers weigh more.
    return _masked(loss, mask).sum() / mask.sum().clamp_min(1)


@LOSS_AGGREGATIONS.register("seq-mean-token-mean")
def _seq_mean_token_mean(loss: Tensor, mask: Tensor, norm_length: int | None) -> Tensor:
    # Every sequence weighs the same (the GRPO paper). An empty sequence contributes 0 but still
    # counts in the B of the mean, so the denominator does not depend on the data.
    per_seq = _masked(loss, mask).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1)  # [B]
    return per_seq.mean()


@LOSS_AGGREGATIONS.register("seq-mean-token-sum")
def _seq_mean_token_sum(loss: Tensor, mask: Tensor, norm_length: int | None) -> Tensor:
    return _masked(loss, mask).sum(dim=-1).mean()  # [B] -> []


@LOSS_AGGREGATIONS.register("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(loss: Tensor, mask: Tensor, norm_length: int | None) -> Tensor:
    # Dr. GRPO: a constant normaliser (max_new_tokens) removes the length bias of a per-sequence mean.
    if norm_length is None or norm_length <= 0:
        raise ValueError(
            f"loss aggregation 'seq-mean-token-sum-norm' needs norm_length=max_new_tokens > 0, got {norm_length}"
        )
    return (_masked(loss, mask).sum(dim=-1) / norm_length).mean()  # [B] -> []


def aggregate(loss: Tensor, mask: Tensor, mode: str, *, norm_length: int | None = None) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar over the tokens where ``mask`` is set.

    Modes (``LOSS_AGGREGATIONS``): ``token-mean``, ``seq-mean-token-mean``, ``seq-mean-token-sum``,
    ``seq-mean-token-sum-norm`` (needs ``norm_length``). Unknown mode -> KeyError listing the valid ones.
    All-zero masks (a whole sequence or the whole batch) give 0 contributions, never NaN.
    """
    fn = LOSS_AGGREGATIONS.get(mode)
    if loss.shape != mask.shape or loss.dim() != 2:
        raise ValueError(f"loss {tuple(loss.shape)} and mask {tuple(mask.shape)} must both be [B, T]")
    return fn(loss, mask.bool(), norm_length)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None,
    mode: str = "token-mean",
    *,
    norm_length: int | None = None,
) -> tuple[Tensor, Tensor]:
    """PPO clipped value loss ``0.5 * max((v - R)^2, (clip(v, old - c, old + c) - R)^2)``, aggregated.

    values, old_values, returns, mask [B, T]. ``clip=None`` gives the plain ``0.5 (v - R)^2``.
    Returns (loss [], clip fraction []: token-mean share of masked tokens where the clipped term was
    strictly larger, detached).

    >>> v, old, ret = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 1.0]])
    >>> loss, frac = value_loss(v, old, ret, torch.ones(1, 2), clip=0.5)
    >>> loss.item(), frac.item()  # token 0: max(1, (0.5-3)^2=6.25); token 1: max(1, 1)  -> (6.25+1)/2/2
    (1.8125, 0.5)
    """
    if not (values.shape == old_values.shape == returns.shape == mask.shape):
        raise ValueError(
            f"values {tuple(values.shape)}, old_values {tuple(old_values.shape)}, returns {tuple(returns.shape)} "
            f"and mask {tuple(mask.shape)} must have the same shape"
        )
    returns = returns.detach()
    unclipped = (values - returns).square()  # [B, T]
    if clip is None:
        return aggregate(0.5 * unclipped, mask, mode, norm_length=norm_length), torch.zeros(
            (), device=values.device
        )
    if not clip > 0:
        raise ValueError(f"value clip must be > 0 (or None to disable), got {clip}")
    old_values = old_values.detach()
    clipped_v = old_values + (values - old_values).clamp(-clip, clip)  # [B, T]
    clipped = (clipped_v - returns).square()  # [B, T]
    loss = aggregate(0.5 * torch.maximum(unclipped, clipped), mask, mode, norm_length=norm_length)
    frac = aggregate((clipped > unclipped).float(), mask, "token-mean").detach()
    return loss, frac
