import math

import pytest
import torch

from reasoner.algo.pairwise import bradley_terry_loss, ensemble_aggregate, pairwise_accuracy, response_lm_loss


def _sig(x):
    return 1 / (1 + math.exp(-x))


RC = torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64)
RR = torch.tensor([0.0, 1.0, -3.0], dtype=torch.float64)  # diffs 1, -0.5, 2


def test_bt_loss_hand_values():
    expected = -(math.log(_sig(1.0)) + math.log(_sig(-0.5)) + math.log(_sig(2.0))) / 3
    assert bradley_terry_loss(RC, RR).item() == pytest.approx(expected, rel=1e-12)


def test_bt_loss_margin_shifts_the_difference():
    margin = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)  # diffs become 0, -0.5, 1.5
    expected = -(math.log(0.5) + math.log(_sig(-0.5)) + math.log(_sig(1.5))) / 3
    assert bradley_terry_loss(RC, RR, margin=margin).item() == pytest.approx(expected, rel=1e-12)


def test_bt_loss_weights_are_a_weighted_mean():
    w = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    expected = -(2 * math.log(_sig(1.0)) + 1 * math.log(_sig(2.0))) / 3
    assert bradley_terry_loss(RC, RR, weight=w).item() == pytest.approx(expected, rel=1e-12)


def test_centring_adds_coef_times_mean_square_of_sums():
    # sums r_c + r_r: 1, 1.5, -4 -> squares 1, 2.25, 16 -> mean 6.41666...
    plain = bradley_terry_loss(RC, RR).item()
    centred = bradley_terry_loss(RC, RR, center_coef=0.01).item()
    assert centred - plain == pytest.approx(0.01 * (1 + 2.25 + 16) / 3, rel=1e-12)


def test_loss_gradient_pushes_chosen_up():
    rc = torch.tensor([0.0], requires_grad=True)
    rr = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(rc, rr).backward()
    assert rc.grad.item() == pytest.approx(-0.5) and rr.grad.item() == pytest.approx(0.5)  # -(1 - σ(0))


def test_pairwise_accuracy_counts_ties_as_half():
    acc = pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0]))
    assert acc.tolist() == [1.0, 0.5, 0.0]


@pytest.mark.parametrize(
    ("mode", "lam", "expected"),
    [
        ("mean", 1.0, [2.0, 1.0]),
        ("mean-std", 1.0, [2.0 - math.sqrt(2 / 3), 1.0]),  # std of (1, 2, 3) = sqrt(2/3); of (1,1,1) = 0
        ("mean-std", 0.5, [2.0 - 0.5 * math.sqrt(2 / 3), 1.0]),
        ("min", 1.0, [1.0, 1.0]),
    ],
)
def test_ensemble_aggregate_hand_values(mode, lam, expected):
    scores = torch.tensor([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]], dtype=torch.float64)  # [K=3, N=2]
    assert ensemble_aggregate(scores, mode, lam).tolist() == pytest.approx(expected, rel=1e-12)


def test_ensemble_aggregate_rejects_unknown_mode():
    with pytest.raises(ValueError, match="valid: mean, mean-std, min"):
        ensemble_aggregate(torch.zeros(2, 3), "median")


def test_response_lm_loss_is_the_mean_cross_entropy_of_the_masked_next_tokens():
    # Two rows, vocabulary 3; position t predicts token t+1. Row 0 targets tokens 1 and 2 (mask 0 1 1),
    # row 1 only token 2 (mask 0 0 1; its token 1 is prompt), so 3 targets in all.
    logits = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [9.0, 9.0, 9.0]],
                           [[0.0, 0.0, 0.0], [0.0, 0.0, 3.0], [9.0, 9.0, 9.0]]], dtype=torch.float64)  # fmt: skip
    ids = torch.tensor([[0, 2, 1], [0, 1, 2]])
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    lse = [math.log(math.e + 2), math.log(math.exp(2) + 2), math.log(math.exp(3) + 2)]
    expected = ((lse[0] - 0.0) + (lse[1] - 2.0) + (lse[2] - 3.0)) / 3  # -log p of token 2, token 1, token 2
    assert response_lm_loss(logits, ids, mask).item() == pytest.approx(expected, rel=1e-6)  # float32 inside
    assert (
        response_lm_loss(logits, ids, torch.zeros_like(mask)).item() == 0.0
    )  # nothing to predict: 0, not NaN
    with pytest.raises(ValueError, match="mask"):
        response_lm_loss(logits, ids, mask[:, :2])
