import pytest
import torch

from reasoner.algo import gae


def _slow_gae(rewards, values, lengths, gamma, lam):
    """Straight from the definition: A_t = sum_l (gamma lam)^l delta_{t+l}, with V after the end = 0."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        n = lengths[b]
        v = values[b][:n] + [0.0]
        deltas = [rewards[b][t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            adv[b][t] = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
    ret = [[adv[b][t] + values[b][t] if t < lengths[b] else 0.0 for t in range(T)] for b in range(B)]
    return adv, ret


def test_three_token_hand_case_and_padding():
    # gamma 0.9, lam 0.8 (gamma * lam = 0.72)
    # row 0, r = [0, 0, 1], V = [0.2, 0.4, 0.6]:
    #   d2 = 1 - 0.6 = 0.4                     A2 = 0.4
    #   d1 = 0.9 * 0.6 - 0.4 = 0.14            A1 = 0.14 + 0.72 * 0.4   = 0.428
    #   d0 = 0.9 * 0.4 - 0.2 = 0.16            A0 = 0.16 + 0.72 * 0.428 = 0.46816
    # row 1, two real tokens then padding (garbage 100s must be ignored), r = [0, 1], V = [0.5, 0.3]:
    #   d1 = 1 - 0.3 = 0.7                     A1 = 0.7
    #   d0 = 0.9 * 0.3 - 0.5 = -0.23           A0 = -0.23 + 0.72 * 0.7 = 0.274
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 100.0]], dtype=torch.float64)
    values = torch.tensor([[0.2, 0.4, 0.6], [0.5, 0.3, 100.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert adv.tolist()[0] == pytest.approx([0.46816, 0.428, 0.4], abs=1e-12)
    assert adv.tolist()[1] == pytest.approx([0.274, 0.7, 0.0], abs=1e-12)
    assert ret.tolist()[0] == pytest.approx([0.66816, 0.828, 1.0], abs=1e-12)
    assert ret.tolist()[1] == pytest.approx([0.774, 1.0, 0.0], abs=1e-12)


@pytest.mark.parametrize(("gamma", "lam"), [(0.9, 0.8), (1.0, 1.0), (1.0, 0.95), (0.99, 0.0)])
def test_vectorised_matches_slow_reference(gamma, lam):
    gen = torch.Generator().manual_seed(0)
    B, T = 6, 9
    rewards = torch.randn(B, T, generator=gen, dtype=torch.float64)
    values = torch.randn(B, T, generator=gen, dtype=torch.float64)
    lengths = [9, 1, 5, 0, 3, 8]
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = _slow_gae(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor(ref_adv, dtype=torch.float64))
    torch.testing.assert_close(ret, torch.tensor(ref_ret, dtype=torch.float64))


def test_gamma_lam_one_is_monte_carlo_return_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    adv, ret = gae(rewards, values, torch.ones(1, 4), 1.0, 1.0)
    assert ret[0].tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert adv[0].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])


def test_outputs_are_detached_and_shape_checked():
    values = torch.zeros(1, 3, requires_grad=True)
    adv, ret = gae(torch.ones(1, 3), values, torch.ones(1, 3), 1.0, 1.0)
    assert not adv.requires_grad and not ret.requires_grad
    with pytest.raises(ValueError, match="same"):
        gae(torch.ones(1, 3), torch.ones(1, 2), torch.ones(1, 3), 1.0, 1.0)
