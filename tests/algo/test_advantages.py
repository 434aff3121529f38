import math
import statistics

import pytest
import torch

from reasoner.algo import group_advantages, whiten, zero_variance_groups
from tests.algo.two_ranks import run_on_two_ranks

# Two prompts, G=4, prompt-major.
# group 0: [1, 0, 0, 0]  mean 0.25, centred [0.75, -0.25, -0.25, -0.25]
#          unbiased var = (0.5625 + 3 * 0.0625) / 3 = 0.25 -> std 0.5 -> [1.5, -0.5, -0.5, -0.5]
# group 1: [2, 4, 6, 8]  mean 5,    centred [-3, -1, 1, 3]
#          unbiased var = (9 + 1 + 1 + 9) / 3 = 20/3 -> std 2.581989 -> [-1.161895, -0.387298, 0.387298, 1.161895]
REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0, 6.0, 8.0])
CENTRED = [0.75, -0.25, -0.25, -0.25, -3.0, -1.0, 1.0, 3.0]


def test_group_scale_hand_values():
    s1 = math.sqrt(20 / 3)
    expected = [1.5, -0.5, -0.5, -0.5, -3 / s1, -1 / s1, 1 / s1, 3 / s1]
    assert group_advantages(REWARDS, 4).tolist() == pytest.approx(expected, rel=1e-5)


def test_no_scale_is_centred_rewards_exactly():
    assert group_advantages(REWARDS, 4, scale="none").tolist() == CENTRED


def test_batch_scale_hand_values():
    # batch mean = 21/8 = 2.625; squared deviations:
    # 1.625^2 + 3 * 2.625^2 + 0.625^2 + 1.375^2 + 3.375^2 + 5.375^2
    # = 2.640625 + 20.671875 + 0.390625 + 1.890625 + 11.390625 + 28.890625 = 65.875
    std = math.sqrt(65.875 / 7)  # unbiased: 7 = 8 - 1
    expected = [c / std for c in CENTRED]
    assert group_advantages(REWARDS, 4, scale="batch").tolist() == pytest.approx(expected, rel=1e-5)


def _loop_group_advantages(rewards: list[float], g: int, scale: str, eps: float) -> list[float]:
    out = []
    batch_std = statistics.stdev(rewards) if len(rewards) > 1 else float("nan")
    for i in range(0, len(rewards), g):
        group = rewards[i : i + g]
        mean = statistics.mean(group)
        for r in group:
            if all(x == group[0] for x in group):
                out.append(0.0)
            elif scale == "group":
                out.append((r - mean) / (statistics.stdev(group) + eps))
            elif scale == "batch":
                out.append((r - mean) / (batch_std + eps))
            else:
                out.append(r - mean)
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_vectorised_matches_loop(scale):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 3, (6 * 5,), generator=gen).double() / 2  # {0, 0.5, 1}: some groups all equal
    rewards[:5] = 1.0  # make sure one group has zero variance
    got = group_advantages(rewards, 5, scale=scale).tolist()
    assert got == pytest.approx(_loop_group_advantages(rewards.tolist(), 5, scale, 1e-6), abs=1e-12)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_all_equal_group_is_exactly_zero(scale):
    # In float32 the mean of eight 0.1s is 0.1 + 7.45e-9, not 0.1: "r - mean" alone would not be 0.
    rewards = torch.tensor([0.1] * 8 + [1.0, 0.0] * 4)
    assert rewards[:8].mean() != rewards[0]  # the premise of this test
    adv = group_advantages(rewards, 8, scale=scale)
    assert torch.equal(adv[:8], torch.zeros(8))
    assert torch.isfinite(adv).all()
    assert (adv[8:] != 0).all()


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_whole_batch_equal_and_group_of_one_give_zeros_not_nan(scale):
    assert torch.equal(group_advantages(torch.ones(6), 3, scale=scale), torch.zeros(6))
    # G = 1: the unbiased std of one sample is NaN; the advantage must still be exactly 0
    assert torch.equal(group_advantages(torch.tensor([0.0, 1.0, 5.0]), 1, scale=scale), torch.zeros(3))
    assert torch.equal(group_advantages(torch.tensor([3.0]), 1, scale=scale), torch.zeros(1))


def test_integer_rewards_are_accepted():
    assert group_advantages(torch.tensor([1, 0]), 2, scale="none").tolist() == [0.5, -0.5]


def test_zero_variance_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0])
    assert zero_variance_groups(rewards, 2).tolist() == [True, True, False, False, True, True]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="NaN/inf at indices \\[1\\]"):
        group_advantages(torch.tensor([0.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2)
    with pytest.raises(KeyError, match="valid: batch, group, none"):
        group_advantages(torch.zeros(2), 2, scale="std")


def test_whiten_hand_values():
    # masked values 1, 3: mean 2, unbiased var ((-1)^2 + 1^2) / 1 = 2 -> (x - 2) / sqrt(2)
    x = torch.tensor([[1.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 0]])
    h = 1 / math.sqrt(2)
    assert whiten(x, mask).tolist()[0] == pytest.approx([-h, h, 0.0], rel=1e-6)
    assert whiten(x, mask, shift_mean=False).tolist()[0] == pytest.approx([2 - h, 2 + h, 0.0], rel=1e-6)


def test_whiten_matches_loop():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 7, generator=gen, dtype=torch.float64) * 3 + 1
    mask = torch.rand(4, 7, generator=gen) > 0.3
    vals = [x[i, j].item() for i in range(4) for j in range(7) if mask[i, j]]
    mean, var = statistics.mean(vals), statistics.variance(vals)
    got = whiten(x, mask, eps=0.0)
    for i in range(4):
        for j in range(7):
            expected = (x[i, j].item() - mean) / math.sqrt(var) if mask[i, j] else 0.0
            assert got[i, j].item() == pytest.approx(expected, abs=1e-12)


def test_whiten_needs_two_positions():
    with pytest.raises(ValueError, match="at least 2"):
        whiten(torch.ones(1, 3), torch.tensor([[0, 1, 0]]))


def test_whiten_of_pieces_with_a_summing_reduce_equals_whiten_of_the_whole_batch():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 2 + 0.5
    mask = torch.rand(6, 5, generator=gen) > 0.3
    out = run_on_two_ranks(
        lambda i, reduce: whiten(x[3 * i : 3 * i + 3], mask[3 * i : 3 * i + 3], reduce=reduce)
    )
    assert torch.allclose(torch.cat(out), whiten(x, mask), atol=1e-12)
    assert not torch.allclose(out[0], whiten(x[:3], mask[:3]))  # the half alone is whitened differently
