import math

import pytest
import torch

from reasoner.algo import kl_penalty

# x = logp - ref = [0, -1, 0.5]; d = ref - logp = [0, 1, -0.5]
LOGP = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
REF = torch.tensor([[-1.0, -1.0, -1.0]], dtype=torch.float64)


def test_k1_hand_values():
    assert kl_penalty(LOGP, REF, "k1").tolist() == [[0.0, -1.0, 0.5]]


def test_k2_hand_values():
    # 0.5 * x^2
    assert kl_penalty(LOGP, REF, "k2").tolist() == [[0.0, 0.5, 0.125]]


def test_k3_hand_values():
    # exp(d) - d - 1: e^0 - 0 - 1 = 0; e - 1 - 1 = 0.718281828; e^-0.5 + 0.5 - 1 = 0.106530660
    expected = [0.0, math.e - 2, math.exp(-0.5) - 0.5]
    assert kl_penalty(LOGP, REF, "k3")[0].tolist() == pytest.approx(expected, rel=1e-12)
    assert kl_penalty(LOGP, REF).tolist() == kl_penalty(LOGP, REF, "k3").tolist()  # k3 is the default


def test_k3_nonnegative_and_zero_at_equality():
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(64, 32, generator=gen) * 5
    ref = torch.randn(64, 32, generator=gen) * 5
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, logp + 1e-7, "k3") >= 0).all()  # tiny log-ratios: no rounding below 0
    assert torch.equal(kl_penalty(logp, logp.clone(), "k3"), torch.zeros_like(logp))


def test_k3_clamps_the_log_ratio():
    logp = torch.tensor([[-200.0, 0.0]])
    ref = torch.tensor([[0.0, -200.0]])  # d = 200 and d = -200, clamped to ±20
    logp.requires_grad_(True)
    k3 = kl_penalty(logp, ref, "k3")
    assert k3[0].tolist() == pytest.approx([math.exp(20) - 21, math.exp(-20) + 19], rel=1e-6)
    k3.sum().backward()
    assert torch.isfinite(logp.grad).all()


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_estimators_average_to_the_exact_kl(estimator):
    # E_{x~p}[k(x)] must equal KL(p || q) = sum p log(p / q): a sign slip (KL(q||p)) would fail.
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    exact = (p * (p / q).log()).sum()
    per_token = kl_penalty(p.log()[None], q.log()[None], estimator)[0]  # one "token" per vocabulary entry
    assert (p * per_token).sum().item() == pytest.approx(exact.item(), rel=1e-12)


def test_k3_gradient_is_one_minus_q_over_p():
    # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp); at d = 1: 1 - e
    logp = LOGP.clone().requires_grad_(True)
    kl_penalty(logp, REF, "k3").sum().backward()
    assert logp.grad[0].tolist() == pytest.approx([0.0, 1 - math.e, 1 - math.exp(-0.5)], rel=1e-12)


def test_errors():
    with pytest.raises(KeyError, match="valid: k1, k2, k3"):
        kl_penalty(LOGP, REF, "k4")
    with pytest.raises(ValueError, match="same shape"):
        kl_penalty(LOGP, REF[:, :2])
