"""Engine/trainer log-prob mismatch metrics and truncated importance sampling, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from reasoner.rollout.base import Rollout
from reasoner.rollout.mismatch import engine_logprob_tensor, mismatch_metrics, tis_weights


def rollout(logprobs: list[float] | None, length: int | None = None) -> Rollout:
    n = len(logprobs) if length is None else length
    return Rollout(0, [1], list(range(n)), "", "length", logprobs)


def test_tis_weights_are_the_ratio_capped_from_above_only():
    trainer = torch.tensor([[-1.0, -1.0, -1.0, -5.0]])
    engine = torch.tensor([[-1.0, -1.5, -3.0, -1.0]])  # log_r = 0, 0.5, 2, -4
    w = tis_weights(trainer, engine, cap=2.0)
    expected = [1.0, math.exp(0.5), 2.0, math.exp(-4.0)]
    assert w[0].tolist() == pytest.approx(expected, rel=1e-6)


def test_tis_weights_carry_no_gradient():
    trainer = torch.tensor([[-0.5, -2.0]], requires_grad=True)
    w = tis_weights(trainer, torch.tensor([[-1.0, -1.0]]), cap=3.0)
    assert not w.requires_grad


def test_tis_weights_stay_finite_for_huge_log_ratios():
    w = tis_weights(torch.tensor([[0.0, -1e4]]), torch.tensor([[-1e4, 0.0]]), cap=1e30)
    assert torch.isfinite(w).all() and w[0, 0].item() == pytest.approx(math.exp(20.0), rel=1e-5)


@pytest.mark.parametrize("cap", [0.5, 0.0, float("nan")])
def test_a_cap_below_one_is_refused(cap):
    with pytest.raises(ValueError, match="cap"):
        tis_weights(torch.zeros(1, 1), torch.zeros(1, 1), cap=cap)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="shape"):
        tis_weights(torch.zeros(2, 3), torch.zeros(2, 4), cap=2.0)
    with pytest.raises(ValueError, match="shape"):
        mismatch_metrics(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4), cap=2.0)


def test_metrics_use_masked_tokens_only():
    trainer = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -9.0, -9.0]])
    engine = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])  # tokens: log_r = 0.5, -1, 0
    m = mismatch_metrics(trainer, engine, mask, cap=1.5)
    log_r = torch.tensor([0.5, -1.0, 0.0])
    assert m["mismatch/k1"] == pytest.approx((-log_r).mean().item())  # (-0.5 + 1 + 0) / 3
    assert m["mismatch/k3"] == pytest.approx(((log_r.exp() - 1 - log_r).mean()).item())
    assert m["mismatch/abs_diff_mean"] == pytest.approx(0.5)
    assert m["mismatch/abs_diff_max"] == pytest.approx(1.0)
    assert m["tis/capped_frac"] == pytest.approx(1 / 3)  # e^0.5 = 1.65 > 1.5
    assert m["tis/weight_mean"] == pytest.approx((1.5 + math.exp(-1) + 1.0) / 3)


def test_identical_log_probs_mean_no_mismatch():
    lp = torch.tensor([[-0.3, -2.0, -0.01]])
    m = mismatch_metrics(lp, lp.clone(), torch.ones(1, 3), cap=2.0)
    assert m == {"mismatch/k1": 0.0, "mismatch/k3": 0.0, "mismatch/abs_diff_mean": 0.0, "mismatch/abs_diff_max": 0.0,
                 "tis/weight_mean": 1.0, "tis/capped_frac": 0.0}  # fmt: skip


def test_an_empty_mask_gives_zeros_not_nan():
    m = mismatch_metrics(torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1, 2), cap=2.0)
    assert set(m.values()) == {0.0}


def test_engine_logprobs_are_laid_out_like_the_batch():
    out = engine_logprob_tensor([rollout([-0.1, -0.2]), rollout([-0.3])], width=3)
    assert torch.equal(out, torch.tensor([[-0.1, -0.2, 0.0], [-0.3, 0.0, 0.0]]))
    assert out.dtype == torch.float32


def test_engine_logprobs_refuse_missing_or_misaligned_values():
    with pytest.raises(ValueError, match="rollout.engine=vllm"):
        engine_logprob_tensor([rollout(None, length=2)], width=2)
    with pytest.raises(ValueError, match="1 log-probs for 2 completion tokens"):
        engine_logprob_tensor([rollout([-0.1], length=2)], width=2)
    with pytest.raises(ValueError, match="batch width"):
        engine_logprob_tensor([rollout([-0.1, -0.1, -0.1])], width=2)
