"""Engine vs trainer log-probs: the mismatch metrics, and truncated importance sampling (TIS) weights.

The engine samples token ``y`` from its own distribution ``q`` (vLLM: bf16 kernels, other numerics), while the
loss treats it as sampled from the trainer's ``p``. Per completion token, with ``log_r = logp_trainer -
logp_engine``:

- ``mismatch/k1 = mean(-log_r)`` and ``mismatch/k3 = mean(exp(log_r) - 1 - log_r)``: estimates of
  KL(q || p) from tokens drawn from ``q`` (k3: unbiased and >= 0; k1 can go negative on a small sample);
- ``mismatch/abs_diff_mean``, ``mismatch/abs_diff_max``: ``|log_r|`` over the tokens;
- TIS (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"; TRL's
  ``vllm_importance_sampling_cap``, verl's ``rollout_is``): weight each token's policy-gradient loss by
  ``w = min(exp(log_r), cap)``, a constant (no gradient). ``tis/capped_frac`` is the share of tokens at the cap.

Shapes: N completions, T completion tokens (right-padded), ``mask`` [N, T] is 1 on real tokens.

>>> trainer = torch.tensor([[-1.0, -2.0]])
>>> engine = torch.tensor([[-1.0, -3.0]])           # log_r = [0, 1]
>>> tis_weights(trainer, engine, cap=2.0).tolist()  # min(e^0, 2), min(e^1, 2)
[[1.0, 2.0]]
>>> m = mismatch_metrics(trainer, engine, torch.ones(1, 2), cap=2.0)
>>> round(m["mismatch/k1"], 4), round(m["mismatch/k3"], 4), m["tis/capped_frac"]  # k3 = (e - 2) / 2
(-0.5, 0.3591, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reasoner.rollout.base import Rollout

LOG_RATIO_CLAMP = 20.0  # bound on |log_r| before exp: exp(20) ≈ 4.85e8 stays finite in float32


def engine_logprob_tensor(
    rollouts: Sequence[Rollout], width: int, device: torch.device | str = "cpu"
) -> Tensor:
    """The engine's per-token log-probs as [N, width] float32, right-padded with 0 (the layout of ``make_batch``)."""
    out = torch.zeros(len(rollouts), width, dtype=torch.float32)
    for i, r in enumerate(rollouts):
        if r.logprobs is None:
            raise ValueError(
                f"rollout {i} has no engine log-probs; rollout.use_engine_logprobs needs an engine that reports "
                "them (rollout.engine=vllm)"
            )
        if len(r.logprobs) != len(r.completion_ids):
            raise ValueError(
                f"rollout {i}: {len(r.logprobs)} log-probs for {len(r.completion_ids)} completion tokens"
            )
        if len(r.logprobs) > width:
            raise ValueError(f"rollout {i} has {len(r.logprobs)} tokens, more than the batch width {width}")
        out[i, : len(r.logprobs)] = torch.tensor(r.logprobs, dtype=torch.float32)
    return out.to(device)


def tis_weights(trainer_logp: Tensor, engine_logp: Tensor, cap: float) -> Tensor:
    """Truncated importance weights ``min(p / q, cap)`` per token: [N, T] -> [N, T], detached.

    Multiply the per-token policy-gradient loss by them before aggregating. Padding positions get whatever
    the padded log-probs give; ``aggregate`` masks them out.
    """
    if trainer_logp.shape != engine_logp.shape:
        raise ValueError(
            f"trainer log-probs {tuple(trainer_logp.shape)} and engine log-probs {tuple(engine_logp.shape)} differ in shape"
        )
    if not cap >= 1.0:
        raise ValueError(f"the TIS cap must be >= 1 (1 = no reweighting upwards), got {cap}")
    log_r = _log_ratio(trainer_logp, engine_logp)  # [N, T]
    return log_r.exp().clamp(max=cap)


def mismatch_metrics(trainer_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float) -> dict[str, float]:
    """Scalar summaries over the masked tokens (see the module docstring); empty mask -> zeros."""
    if not (trainer_logp.shape == engine_logp.shape == mask.shape):
        raise ValueError(
            f"trainer {tuple(trainer_logp.shape)}, engine {tuple(engine_logp.shape)} and mask {tuple(mask.shape)} "
            "log-probs must have the same [N, T] shape"
        )
    m = mask.bool()  # [N, T]
    if not m.any():
        keys = ("mismatch/k1", "mismatch/k3", "mismatch/abs_diff_mean", "mismatch/abs_diff_max")
        return dict.fromkeys(keys + ("tis/weight_mean", "tis/capped_frac"), 0.0)
    log_r = _log_ratio(trainer_logp, engine_logp)[m]  # [tokens]
    ratio = log_r.exp()
    return {
        "mismatch/k1": (-log_r).mean().item(),
        "mismatch/k3": (torch.expm1(log_r) - log_r).mean().item(),
        "mismatch/abs_diff_mean": log_r.abs().mean().item(),
        "mismatch/abs_diff_max": log_r.abs().max().item(),
        "tis/weight_mean": ratio.clamp(max=cap).mean().item(),
        "tis/capped_frac": (ratio > cap).float().mean().item(),
    }


def _log_ratio(trainer_logp: Tensor, engine_logp: Tensor) -> Tensor:
    return (trainer_logp.detach().float() - engine_logp.detach().float()).clamp(
        -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP
    )
