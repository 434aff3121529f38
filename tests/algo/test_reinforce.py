"""RLOO, REINFORCE++ and REINFORCE++-baseline advantages, and DAPO's overlong shaping: hand values and loops."""

import math
import statistics

import pytest
import torch

from reasoner.algo import (
    discounted_returns,
    overlong_penalty,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    varying_groups,
)
from tests.algo.two_ranks import run_on_two_ranks

REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0, 6.0, 8.0])  # two prompts, G = 4


def test_rloo_hand_values():
    # group 0: others' means 0, 1/3, 1/3, 1/3; group 1: (18/3, 16/3, 14/3, 12/3)
    expected = [1.0, -1 / 3, -1 / 3, -1 / 3, 2 - 6, 4 - 16 / 3, 6 - 14 / 3, 8 - 4]
    assert rloo_advantages(REWARDS, 4).tolist() == pytest.approx(expected)


def test_rloo_matches_a_leave_one_out_loop():
    torch.manual_seed(0)
    rewards, g = torch.rand(30, dtype=torch.float64), 5
    loop = []
    for i in range(0, 30, g):
        group = rewards[i : i + g].tolist()
        loop += [r - statistics.mean(group[:j] + group[j + 1 :]) for j, r in enumerate(group)]
    assert rloo_advantages(rewards, g).tolist() == pytest.approx(loop, abs=1e-12)


def test_rloo_gives_exact_zeros_to_equal_groups_and_refuses_groups_of_one():
    assert rloo_advantages(torch.tensor([0.3, 0.3, 0.3]), 3).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="rollout.n >= 2"):
        rloo_advantages(torch.tensor([1.0, 0.0]), 1)


def test_discounted_returns_skip_padding():
    r = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # gamma 0.5: G2 = 3, G1 = 2 + 1.5 = 3.5, G0 = 1 + 1.75 = 2.75; padding stays 0
    assert discounted_returns(r, mask, 0.5).tolist() == [[2.75, 3.5, 3.0, 0.0]]


def test_reinforce_pp_whitens_returns_with_kl_over_all_real_tokens():
    # Token rewards after the KL: row 0 [-0.1, 0.9] (outcome 1), row 1 [-0.2] (outcome 0, one token).
    token_r = torch.tensor([[-0.1, 0.9], [-0.2, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    returns = [0.8, 0.9, -0.2]  # gamma 1: returns-to-go
    mean, std = statistics.mean(returns), statistics.stdev(returns)
    adv = reinforce_pp_advantages(token_r, mask)
    assert adv[mask.bool()].tolist() == pytest.approx([(x - mean) / std for x in returns], rel=1e-5)
    assert adv[1, 1].item() == 0.0


def test_reinforce_pp_baseline_centres_per_group_then_whitens_over_tokens():
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])  # G = 2, two prompts
    rewards = torch.tensor([1.0, 0.0, 3.0, 1.0])  # centred: 0.5, -0.5, 1, -1
    tokens = [0.5, 0.5, -0.5, 1.0, 1.0, -1.0, -1.0]  # one value per real token
    mean, std = statistics.mean(tokens), statistics.stdev(tokens)
    adv = reinforce_pp_baseline_advantages(rewards, 2, mask)
    assert adv[mask.bool()].tolist() == pytest.approx([(x - mean) / std for x in tokens], rel=1e-5)


def test_reinforce_pp_whitening_over_two_ranks_equals_one_process_with_the_whole_batch():
    gen = torch.Generator().manual_seed(3)
    token_r, mask = torch.randn(8, 5, generator=gen), (torch.rand(8, 5, generator=gen) > 0.2).float()
    half = [slice(0, 4), slice(4, 8)]
    out = run_on_two_ranks(
        lambda i, reduce: reinforce_pp_advantages(token_r[half[i]], mask[half[i]], 0.9, reduce)
    )
    assert torch.allclose(torch.cat(out), reinforce_pp_advantages(token_r, mask, 0.9), atol=1e-6)
    out = run_on_two_ranks(
        lambda i, reduce: reinforce_pp_baseline_advantages(REWARDS[half[i]], 4, mask[half[i]], reduce)
    )
    assert torch.allclose(torch.cat(out), reinforce_pp_baseline_advantages(REWARDS, 4, mask), atol=1e-6)
    # one real token on each rank: two in all, so both ranks whiten (alone each would return zeros)
    one = torch.tensor([[1.0, 0.0]])
    out = run_on_two_ranks(
        lambda i, reduce: reinforce_pp_advantages(torch.full((1, 2), float(i)), one, 1.0, reduce)
    )
    assert [o[0, 0].item() for o in out] == pytest.approx([-0.7071, 0.7071], abs=1e-4)


def test_reinforce_pp_with_one_real_token_is_zero_not_nan():
    assert reinforce_pp_advantages(torch.ones(1, 2), torch.tensor([[1.0, 0.0]])).tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize(
    "length, expected",
    [(0, 0.0), (12, 0.0), (13, -0.25), (14, -0.5), (15, -0.75), (16, -1.0), (40, -1.0)],
)
def test_overlong_penalty_ramps_linearly_over_the_buffer(length, expected):
    # max_len 16, buffer 4: free up to 12 tokens, -1 at 16 (DAPO eq. 13), times the penalty 1
    assert overlong_penalty(torch.tensor([length]), 16, 4).item() == pytest.approx(expected)


def test_overlong_penalty_scales_and_validates():
    assert overlong_penalty(torch.tensor([16]), 16, 4, penalty=0.5).item() == -0.5
    with pytest.raises(ValueError, match="overlong buffer"):
        overlong_penalty(torch.tensor([3]), 16, 0)


def test_varying_groups_ignore_unscored_samples():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    scored = torch.tensor([True, True, True, False, True, True])
    assert varying_groups(rewards, scored, 2).tolist() == [True, False, False]
    assert varying_groups(rewards, torch.ones(6, dtype=torch.bool), 3).tolist() == [True, True]


def test_whitening_uses_the_unbiased_std():
    adv = reinforce_pp_advantages(torch.tensor([[1.0], [0.0]]), torch.ones(2, 1))
    assert adv.flatten().tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)], rel=1e-5)
