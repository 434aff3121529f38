"""GSPO, CISPO and PPO-clip policy losses: values and gradients worked by hand, and GSPO against a slow loop."""

import math

import pytest
import torch

from reasoner.algo import POLICY_LOSSES, aggregate


def _close(tensor, expected):
    torch.testing.assert_close(tensor.double(), torch.tensor(expected, dtype=torch.float64))


def _leaf(values):
    return torch.tensor(values, dtype=torch.float64).log().requires_grad_(True)


def test_unknown_loss_lists_the_valid_ones():
    with pytest.raises(KeyError, match="cispo, gspo, ppo-clip"):
        POLICY_LOSSES.get("gpso")


def test_gspo_clips_the_sequence_ratio_not_the_token_ratios():
    # Sequence 0: token ratios 1.1 and 1.1 (geometric mean 1.1), A = +1, eps 0.05 -> clipped at 1.05.
    # Sequence 1: token ratios 4 and 0.25 (geometric mean 1), A = -1 -> inside the range, loss +1 on each token
    # (a token-level clip would have clipped both tokens).
    logp = _leaf([[1.1, 1.1], [4.0, 0.25]])
    old = torch.zeros(2, 2, dtype=torch.float64)
    loss, clipped = POLICY_LOSSES.get("gspo")(
        logp, old, torch.tensor([1.0, -1.0]), torch.ones(2, 2), 0.05, 0.05
    )
    _close(loss, [[-1.05, -1.05], [1.0, 1.0]])
    assert clipped.tolist() == [[True, True], [False, False]]
    aggregate(loss, torch.ones(2, 2), "seq-mean-token-mean").backward()
    # Clipped sequence: no gradient. Sequence 1: d/dlogp_t of mean_t(-A * s) = s / |y| / B = 1 / 2 / 2.
    _close(logp.grad, [[0.0, 0.0], [0.25, 0.25]])


def test_gspo_averages_the_log_ratio_over_real_tokens_only():
    logp = _leaf([[2.0, 123.0]])  # the second position is padding
    loss, _ = POLICY_LOSSES.get("gspo")(logp, torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1.0]),
                                        torch.tensor([[1.0, 0.0]]), 0.2, 10.0)  # fmt: skip
    assert loss[0, 0].item() == pytest.approx(-2.0)


def _gspo_loop(logp, old, adv, mask, lo, hi):
    """The paper's sequence objective, one sequence at a time: mean_i -min(s_i A_i, clip(s_i) A_i)."""
    total = 0.0
    for i in range(logp.shape[0]):
        real = [t for t in range(logp.shape[1]) if mask[i, t]]
        s = torch.exp(sum(logp[i, t] - old[i, t] for t in real) / len(real))
        total = total + torch.maximum(-adv[i] * s, -adv[i] * s.clamp(1 - lo, 1 + hi))
    return total / logp.shape[0]


def test_gspo_token_form_equals_the_sequence_objective_and_its_gradient():
    torch.manual_seed(0)
    logp = (torch.randn(4, 5, dtype=torch.float64) * 0.1 - 1).requires_grad_(True)
    old = logp.detach() + torch.randn(4, 5, dtype=torch.float64) * 0.05
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).double()
    loss, _ = POLICY_LOSSES.get("gspo")(logp, old, adv, mask, 0.03, 0.04)
    fast = aggregate(loss, mask, "seq-mean-token-mean")
    (g_fast,) = torch.autograd.grad(fast, logp)
    slow = _gspo_loop(logp, old, adv, mask, 0.03, 0.04)
    (g_slow,) = torch.autograd.grad(slow, logp)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-10)
    torch.testing.assert_close(g_fast, g_slow)


def test_cispo_keeps_the_gradient_of_clipped_tokens_with_a_detached_weight():
    logp = _leaf([[2.0, 0.5, 1.0]])  # ratios 2 (clipped to 1.2), 0.5 (clipped to 0.8), 1
    loss, clipped = POLICY_LOSSES.get("cispo")(logp, torch.zeros(1, 3, dtype=torch.float64), torch.tensor([1.0]),
                                               torch.ones(1, 3), 0.2, 0.2)  # fmt: skip
    assert loss[0].tolist() == pytest.approx([-1.2 * math.log(2), -0.8 * math.log(0.5), 0.0])
    assert clipped.tolist() == [[True, True, False]]
    loss.sum().backward()
    _close(logp.grad, [[-1.2, -0.8, -1.0]])  # d(-w A logp)/dlogp = -w A


def test_ppo_clip_drops_the_gradient_where_cispo_keeps_it():
    logp = _leaf([[2.0]])
    loss, _ = POLICY_LOSSES.get("ppo-clip")(logp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([1.0]),
                                            torch.ones(1, 1), 0.2, 0.2)  # fmt: skip
    loss.sum().backward()
    assert loss.item() == pytest.approx(-1.2) and logp.grad.item() == 0.0


@pytest.mark.parametrize("name", ["ppo-clip", "gspo", "cispo"])
def test_on_policy_every_loss_is_the_plain_policy_gradient(name):
    # ratio 1 everywhere: the gradient of each token is -A (per-token loss, summed).
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    adv = torch.tensor([1.0, -2.0])
    loss, clipped = POLICY_LOSSES.get(name)(logp, logp.detach(), adv, torch.ones(2, 2), 0.2, 0.2)
    loss.sum().backward()
    expected = [[-1.0, -1.0], [2.0, 2.0]]
    _close(logp.grad, expected)
    assert not clipped.any()


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="must all be the same"):
        POLICY_LOSSES.get("gspo")(
            torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 2), 0.2, 0.2
        )
    with pytest.raises(ValueError, match="advantages must be"):
        POLICY_LOSSES.get("cispo")(
            torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3), 0.2, 0.2
        )
