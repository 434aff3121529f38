"""Reward-model math: the Bradley–Terry pairwise loss, its metrics, and the conservative ensemble aggregate.

Bradley–Terry models P(chosen > rejected) = σ(r_c − r_r); the loss is its negative log-likelihood,
−log σ(r_c − r_r − m) with an optional per-pair margin m (Llama 2's margin loss: pairs rated far apart must be
separated by more). Centring (TRL's ``center_rewards_coefficient``, Eisenstein et al. 2023) adds
c · mean((r_c + r_r)²), which pins the scale's zero so rewards from different runs are comparable.
``response_lm_loss`` is the auxiliary language-modelling term of a hidden-state-regularised RM (Yang et al. 2024,
"Regularizing Hidden States Enables Learning Generalizable Reward Models"): the mean next-token cross-entropy of
the chosen responses under the backbone's LM head, which keeps the features the score head reads predictive of
the text.

>>> r_c, r_r = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
>>> round(bradley_terry_loss(r_c, r_r).item(), 4)  # (-log σ(2) - log σ(0)) / 2
0.41
>>> ensemble_aggregate(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), "mean-std", lam=1.0).tolist()
[1.0, 0.0]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ENSEMBLE_AGGREGATES = ("mean", "mean-std", "min")


def bradley_terry_loss(
    r_chosen: torch.Tensor,  # [B]
    r_rejected: torch.Tensor,  # [B]
    margin: torch.Tensor | None = None,  # [B]; 0 = plain Bradley–Terry
    weight: torch.Tensor | None = None,  # [B] per-pair loss weight (e.g. recency); None = 1
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Weighted mean over pairs of −log σ(r_c − r_r − margin), plus ``center_coef`` · mean((r_c + r_r)²)."""
    diff = r_chosen - r_rejected  # [B]
    if margin is not None:
        diff = diff - margin
    nll = -F.logsigmoid(diff)  # [B]
    if weight is None:
        loss = nll.mean()
    else:
        loss = (nll * weight).sum() / weight.sum().clamp(min=1e-12)
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss


def response_lm_loss(logits: torch.Tensor, token_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the tokens where ``mask`` is set: logits [B, L, V] from positions
    0..L-1, token_ids and mask [B, L]; position t predicts token t+1, so token 0 is never a target. 0 (with a
    gradient) when no token is masked in.

    >>> logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])  # [1, 3, 2]
    >>> ids, mask = torch.tensor([[0, 0, 1]]), torch.tensor([[0, 1, 1]])  # targets: token 0, then token 1
    >>> round(response_lm_loss(logits, ids, mask).item(), 4)  # (log 2 + log(1 + e²)) / 2
    1.41
    """
    from reasoner.algo.tokens import aggregate, token_logprobs

    if logits.shape[:-1] != token_ids.shape or token_ids.shape != mask.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be token_ids {tuple(token_ids.shape)} plus a vocabulary dim, "
            f"and mask {tuple(mask.shape)} the shape of token_ids"
        )
    logp = token_logprobs(logits[:, :-1], token_ids[:, 1:])  # [B, L-1]
    return -aggregate(logp, mask[:, 1:], "token-mean")


def pointwise_loss(
    r: torch.Tensor,  # [B] scores of single responses
    label: torch.Tensor,  # [B] 1 = thumbs up, 0 = thumbs down (or "both bad")
    weight: torch.Tensor | None = None,  # [B] per-row loss weight; None = 1
) -> torch.Tensor:
    """Weighted mean of −log σ(r) over liked responses and −log σ(−r) over disliked ones: a binary (logistic)
    term for single thumbs beside the pairwise one. It fixes the score's zero at "as likely liked as not", which
    Bradley–Terry leaves free, so pairs and thumbs train one scale.

    >>> round(pointwise_loss(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])).item(), 4)  # (log 2 + log(1+e²)) / 2
    1.41
    """
    if r.shape != label.shape:
        raise ValueError(f"scores {tuple(r.shape)} and labels {tuple(label.shape)} must have one shape")
    sign = 2.0 * label.float() - 1.0  # [B] +1 liked, -1 disliked
    nll = -F.logsigmoid(sign * r)  # [B]
    if weight is None:
        return nll.mean()
    return (nll * weight).sum() / weight.sum().clamp(min=1e-12)


def pointwise_accuracy(r: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """[B] 1 where the score's sign matches the thumb (r > 0 liked, r < 0 disliked), 0.5 at r == 0, else 0."""
    sign = 2.0 * label.float() - 1.0
    return (sign * r > 0).float() + 0.5 * (r == 0).float()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """[B] 1 where the chosen response scores higher, 0.5 on an exact tie, else 0."""
    return (r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()


def ensemble_aggregate(scores: torch.Tensor, mode: str = "mean-std", lam: float = 1.0) -> torch.Tensor:
    """Combine K reward models' scores [K, N] into one [N]: ``mean``, ``mean-std`` (mean − λ·std, the
    uncertainty-weighted objective of Coste et al. 2023) or ``min`` (worst case). std is the population std
    over the K members, so K = 1 gives std 0."""
    if scores.dim() != 2:
        raise ValueError(f"ensemble_aggregate wants scores shaped [K, N], got {tuple(scores.shape)}")
    if mode == "mean":
        return scores.mean(0)
    if mode == "mean-std":
        return scores.mean(0) - lam * scores.std(0, unbiased=False)
    if mode == "min":
        return scores.min(0).values
    raise ValueError(f"unknown ensemble aggregate {mode!r}; valid: {', '.join(ENSEMBLE_AGGREGATES)}")
