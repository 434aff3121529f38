"""Per-token estimators of KL(policy || reference) from tokens sampled from the policy.

With the log-ratio ``x = logp - ref_logp`` of a sampled token (Schulman, "Approximating KL Divergence"):

- ``k1 = x`` — unbiased, high variance, negative on some tokens;
- ``k2 = x**2 / 2`` — biased, low variance, >= 0;
- ``k3 = exp(-x) - (-x) - 1`` — unbiased, low variance, >= 0; the GRPO paper's estimator.

For k3 the log-ratio is clamped to ``[-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP] = [-20, 20]`` before the
``exp``, so a token is never worth more than ``exp(20) - 21 ≈ 4.85e8`` (finite in float32 and bf16)
and its gradient is zero beyond the clamp.

>>> logp = torch.tensor([[-1.0, -2.0]])
>>> ref = torch.tensor([[-1.0, -1.0]])      # x = [0, -1]
>>> kl_penalty(logp, ref, "k1").tolist()
[[0.0, -1.0]]
>>> kl_penalty(logp, ref, "k2").tolist()
[[0.0, 0.5]]
>>> [round(v, 6) for v in kl_penalty(logp, ref, "k3")[0].tolist()]  # e - 1 - 1 = 0.718282
[0.0, 0.718282]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from reasoner.registry import Registry

KL_LOG_RATIO_CLAMP = 20.0

# Each estimator maps the per-token log-ratio logp - ref_logp [B, T] to a per-token estimate [B, T].
KL_ESTIMATORS: Registry[Callable[[Tensor], Tensor]] = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def _k1(log_ratio: Tensor) -> Tensor:
    return log_ratio


@KL_ESTIMATORS.register("k2")
def _k2(log_ratio: Tensor) -> Tensor:
    return 0.5 * log_ratio.square()


@KL_ESTIMATORS.register("k3")
def _k3(log_ratio: Tensor) -> Tensor:
    d = (-log_ratio).clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)  # ref - logp, [B, T]
    # expm1(d) - d == exp(d) - d - 1 without the cancellation near d = 0; clamp_min guards rounding.
    return (torch.expm1(d) - d).clamp_min(0.0)


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token [B, T] estimate of KL(policy || ref); ``estimator`` in ``KL_ESTIMATORS`` (k1, k2, k3).

    Gradients flow through both arguments; detach ``ref_logp`` (it comes from a frozen model anyway).
    Masked (padding) positions are not special here: aggregate with a mask afterwards.
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} must have the same shape"
        )
    return KL_ESTIMATORS.get(estimator)(logp - ref_logp)
