import math

import pytest
import torch

from reasoner.algo import (
    LOSS_AGGREGATIONS,
    aggregate,
    clipped_surrogate,
    entropy_from_logits,
    token_logprobs,
    value_loss,
)

NAN = float("nan")

# ---------------------------------------------------------------- token_logprobs / entropy


def test_token_logprobs_hand_values():
    # row [0, 0]: log(1/2) = -0.693147; row [2, 0], token 0: 2 - log(e^2 + 1) = 2 - 2.126928 = -0.126928
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    got = token_logprobs(logits, torch.tensor([[1, 0]]))
    assert got[0].tolist() == pytest.approx([-math.log(2), 2 - math.log(math.e**2 + 1)], rel=1e-6)
    # temperature 2: logits become [1, 0] -> 1 - log(e + 1) = -0.313262
    got = token_logprobs(logits[:, 1:], torch.tensor([[0]]), temperature=2.0)
    assert got.item() == pytest.approx(1 - math.log(math.e + 1), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_token_logprobs_match_log_softmax(temperature):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 11, generator=gen) * 4).requires_grad_(True)
    ids = torch.randint(0, 11, (3, 5), generator=gen)
    got = token_logprobs(logits, ids, temperature)
    ref = torch.log_softmax(logits / temperature, dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(got, ref)
    (g_got,) = torch.autograd.grad(got.sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g_got, g_ref)


def test_token_logprobs_bf16_are_computed_in_float32():
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 4, 50, generator=gen) * 8).bfloat16()
    ids = torch.randint(0, 50, (2, 4), generator=gen)
    got = token_logprobs(logits, ids)
    assert got.dtype == torch.float32
    ref = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(got, ref)


def test_token_logprobs_errors():
    with pytest.raises(ValueError, match="vocabulary dim"):
        token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), temperature=0.0)


def test_entropy_hand_values():
    # uniform over 4: log 4 = 1.386294; p = [3/4, 1/4] from logits [log 3, 0]:
    # -(0.75 log 0.75 + 0.25 log 0.25) = 0.215762 + 0.346574 = 0.562335
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [math.log(3), 0.0, -math.inf, -math.inf]]])
    assert entropy_from_logits(logits)[0].tolist() == pytest.approx([math.log(4), 0.5623351446], rel=1e-6)
    # temperature 0.5 doubles the logits: [2 log 3, 0] -> p = [9/10, 1/10]
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert entropy_from_logits(logits, temperature=0.5)[0, 1].item() == pytest.approx(h, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_entropy_matches_reference(temperature):
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(3, 4, 9, generator=gen) * 3).requires_grad_(True)
    got = entropy_from_logits(logits, temperature)
    p = torch.softmax(logits / temperature, dim=-1)
    ref = -(p * torch.log_softmax(logits / temperature, dim=-1)).sum(-1)
    torch.testing.assert_close(got, ref)
    (g_got,) = torch.autograd.grad(got.sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g_got, g_ref)


def test_entropy_with_masked_vocabulary_has_finite_value_and_gradient():
    logits = torch.tensor([[[0.0, 0.0, -math.inf]]], requires_grad=True)
    h = entropy_from_logits(logits)
    assert h.item() == pytest.approx(math.log(2), rel=1e-6)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- clipped surrogate

CLIP_LOW, CLIP_HIGH = 0.2, 0.28  # asymmetric (DAPO's clip-higher): ratio range [0.8, 1.28]

# (advantage, ratio, expected loss, expected was_clipped); loss = max(-r A, -clip(r) A)
SURROGATE_CASES = [
    (2.0, 1.0, -2.0, False),  # on-policy
    (2.0, 1.25, -2.5, False),  # inside the high side (a symmetric 0.2 clip would give -2.4)
    (2.0, 1.5, -2.56, True),  # above 1.28: -2 * 1.28, no gradient
    (2.0, 0.5, -1.0, False),  # A > 0, ratio low: the unclipped (pessimistic) branch stays active
    (-1.0, 0.85, 0.85, False),  # inside the low side
    (-1.0, 0.5, 0.8, True),  # below 0.8: -(-1) * 0.8
    (-1.0, 0.75, 0.8, True),
    (-1.0, 1.5, 1.5, False),  # A < 0, ratio high: unclipped stays active
    (0.0, 3.0, 0.0, False),  # no advantage, nothing clipped
]


def test_clipped_surrogate_hand_values():
    adv = torch.tensor([c[0] for c in SURROGATE_CASES], dtype=torch.float64)
    logp = torch.tensor([[math.log(c[1])] for c in SURROGATE_CASES], dtype=torch.float64)
    loss, clipped = clipped_surrogate(logp, torch.zeros_like(logp), adv, CLIP_LOW, CLIP_HIGH)
    assert loss[:, 0].tolist() == pytest.approx([c[2] for c in SURROGATE_CASES], rel=1e-9)
    assert clipped[:, 0].tolist() == [c[3] for c in SURROGATE_CASES]


def test_clipped_surrogate_gradient_is_zero_exactly_where_clipped():
    adv = torch.tensor([c[0] for c in SURROGATE_CASES], dtype=torch.float64)
    ratios = [c[1] for c in SURROGATE_CASES]
    logp = torch.tensor([[math.log(r)] for r in ratios], dtype=torch.float64, requires_grad=True)
    loss, clipped = clipped_surrogate(logp, torch.zeros_like(logp), adv, CLIP_LOW, CLIP_HIGH)
    loss.sum().backward()
    # d(-r A)/dlogp = -r A on active unclipped tokens, 0 on clipped ones
    expected = [0.0 if c[3] else -c[0] * c[1] for c in SURROGATE_CASES]
    assert logp.grad[:, 0].tolist() == pytest.approx(expected, rel=1e-9)


def test_clipped_surrogate_matches_loop_and_broadcasts_advantages():
    gen = torch.Generator().manual_seed(3)
    logp = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 0.3
    old = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 0.3
    adv = torch.randn(4, generator=gen, dtype=torch.float64)
    loss, clipped = clipped_surrogate(logp, old, adv, CLIP_LOW, CLIP_HIGH)
    loss_bt, clipped_bt = clipped_surrogate(logp, old, adv[:, None].expand(4, 6), CLIP_LOW, CLIP_HIGH)
    assert torch.equal(loss, loss_bt) and torch.equal(clipped, clipped_bt)
    for b in range(4):
        for t in range(6):
            r = math.exp(logp[b, t].item() - old[b, t].item())
            a = adv[b].item()
            r_clip = min(max(r, 1 - CLIP_LOW), 1 + CLIP_HIGH)
            assert loss[b, t].item() == pytest.approx(-min(r * a, r_clip * a), rel=1e-12)
            assert clipped[b, t].item() == (r_clip * a < r * a)
    assert clipped.any() and not clipped.all()  # the random inputs exercise both branches


def test_dual_clip_caps_negative_advantages():
    # A = -1, r = 5: plain loss 5, capped at -A * c = 3; A = -1, r = 2: 2 < 3, untouched;
    # A = +1, r = 5: -1.28 (dual clip only applies to A < 0)
    logp = torch.tensor([[math.log(5.0)], [math.log(2.0)], [math.log(5.0)]], dtype=torch.float64)
    adv = torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)
    loss, clipped = clipped_surrogate(logp, torch.zeros_like(logp), adv, CLIP_LOW, CLIP_HIGH, dual_clip=3.0)
    assert loss[:, 0].tolist() == pytest.approx([3.0, 2.0, -1.28], rel=1e-9)
    assert clipped[:, 0].tolist() == [True, False, True]


def test_huge_log_ratio_stays_finite():
    loss, _ = clipped_surrogate(
        torch.tensor([[500.0]]), torch.tensor([[0.0]]), torch.tensor([-1.0]), 0.2, 0.2
    )
    assert torch.isfinite(loss).all()


def test_clipped_surrogate_errors():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages must be"):
        clipped_surrogate(z, z, torch.zeros(3), 0.2, 0.2)
    with pytest.raises(ValueError, match="clip_low"):
        clipped_surrogate(z, z, torch.zeros(2), 1.0, 0.2)
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_surrogate(z, z, torch.zeros(2), 0.2, 0.2, dual_clip=0.5)


# ---------------------------------------------------------------- aggregation

# Ragged batch; NaN on padding proves masked positions cannot leak in.
LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, NAN, NAN], [7.0, NAN, NAN, NAN]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 28 / 7),  # (10 + 11 + 7) / 7 tokens = 4
        ("seq-mean-token-mean", 5.0),  # (10/4 + 11/2 + 7/1) / 3 = (2.5 + 5.5 + 7) / 3
        ("seq-mean-token-sum", 28 / 3),  # (10 + 11 + 7) / 3
        ("seq-mean-token-sum-norm", 28 / 24),  # (10/8 + 11/8 + 7/8) / 3 with norm_length 8
    ],
)
def test_aggregate_hand_values(mode, expected):
    assert aggregate(LOSS, MASK, mode, norm_length=8).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 4.0),  # the empty sequence adds no tokens
        ("seq-mean-token-mean", 15 / 4),  # it counts in B with a 0 mean
        ("seq-mean-token-sum", 28 / 4),
        ("seq-mean-token-sum-norm", 28 / 32),
    ],
)
def test_aggregate_with_an_empty_sequence_has_no_nan(mode, expected):
    loss = torch.cat([LOSS, torch.full((1, 4), NAN)])
    mask = torch.cat([MASK, torch.zeros(1, 4, dtype=MASK.dtype)])
    assert aggregate(loss, mask, mode, norm_length=8).item() == pytest.approx(expected, rel=1e-6)
    assert aggregate(loss, torch.zeros_like(mask), mode, norm_length=8).item() == 0.0


@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS.names())
def test_aggregate_matches_loop(mode):
    gen = torch.Generator().manual_seed(4)
    loss = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    lengths = [9, 1, 4, 0, 6]
    mask = torch.tensor([[1] * n + [0] * (9 - n) for n in lengths])
    rows = [[loss[b, t].item() for t in range(n)] for b, n in enumerate(lengths)]
    expected = {
        "token-mean": sum(map(sum, rows)) / sum(lengths),
        "seq-mean-token-mean": sum(sum(r) / len(r) if r else 0.0 for r in rows) / len(rows),
        "seq-mean-token-sum": sum(map(sum, rows)) / len(rows),
        "seq-mean-token-sum-norm": sum(sum(r) / 12 for r in rows) / len(rows),
    }[mode]
    assert aggregate(loss, mask, mode, norm_length=12).item() == pytest.approx(expected, rel=1e-12)


def test_aggregate_gradient_ignores_padding():
    loss = LOSS.clone().requires_grad_(True)
    aggregate(loss, MASK, "token-mean").backward()
    assert torch.equal(loss.grad, MASK / 7.0)


def test_aggregate_errors():
    with pytest.raises(
        KeyError, match="valid: seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm, token-mean"
    ):
        aggregate(LOSS, MASK, "sum")
    with pytest.raises(ValueError, match="norm_length"):
        aggregate(LOSS, MASK, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="must both be"):
        aggregate(LOSS, MASK[:, :2], "token-mean")


# ---------------------------------------------------------------- value loss

# token 0: v=2,  old=0, R=3:  (2-3)^2 = 1;  clip(2, -0.5, 0.5) = 0.5 -> (0.5-3)^2 = 6.25  -> 6.25, clipped
# token 1: v=0,  old=0, R=1:  1;             clip(0) = 0            -> 1                 -> 1,    not clipped
# token 2: v=-1, old=0, R=-1: 0;             clip(-1) = -0.5        -> 0.25              -> 0.25, clipped
# token 3: padding (garbage)
VALUES = torch.tensor([[2.0, 0.0, -1.0, 50.0]])
OLD = torch.tensor([[0.0, 0.0, 0.0, NAN]])
RETURNS = torch.tensor([[3.0, 1.0, -1.0, 0.0]])
VMASK = torch.tensor([[1, 1, 1, 0]])


def test_value_loss_clipped_hand_values():
    loss, frac = value_loss(VALUES, OLD, RETURNS, VMASK, clip=0.5)
    assert loss.item() == pytest.approx(0.5 * (6.25 + 1 + 0.25) / 3)  # 1.25
    assert frac.item() == pytest.approx(2 / 3)


def test_value_loss_clips_around_the_old_value():
    # token 0: v=1,   old=2, R=0: (1-0)^2 = 1;      clip to old ± 0.5 -> 1.5 -> 2.25  -> 2.25, clipped
    # token 1: v=2.3, old=2, R=2: 0.3^2 = 0.09;     inside old ± 0.5  -> 0.09         -> 0.09, not clipped
    values = torch.tensor([[1.0, 2.3]], dtype=torch.float64)
    old = torch.tensor([[2.0, 2.0]], dtype=torch.float64)
    returns = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    loss, frac = value_loss(values, old, returns, torch.ones(1, 2), clip=0.5)
    assert loss.item() == pytest.approx(0.5 * (2.25 + 0.09) / 2)
    assert frac.item() == 0.5


def test_value_loss_unclipped_hand_values():
    loss, frac = value_loss(VALUES, OLD, RETURNS, VMASK, clip=None)
    assert loss.item() == pytest.approx(0.5 * (1 + 1 + 0) / 3)
    assert frac.item() == 0.0


def test_value_loss_gradient():
    v = VALUES.clone().requires_grad_(True)
    loss, _ = value_loss(v, OLD, RETURNS, VMASK, clip=0.5)
    loss.backward()
    # token 0: the clipped term is active and flat in v -> 0; token 1: d 0.5 (v-1)^2 / 3 = (0-1)/3;
    # token 2: clipped term active -> 0; padding -> 0
    assert v.grad[0].tolist() == pytest.approx([0.0, -1 / 3, 0.0, 0.0])


def test_value_loss_other_aggregation_and_errors():
    loss, _ = value_loss(
        VALUES, OLD, RETURNS, VMASK, clip=0.5, mode="seq-mean-token-sum-norm", norm_length=10
    )
    assert loss.item() == pytest.approx(0.5 * 7.5 / 10)
    with pytest.raises(ValueError, match="value clip"):
        value_loss(VALUES, OLD, RETURNS, VMASK, clip=0.0)
    with pytest.raises(ValueError, match="same shape"):
        value_loss(VALUES, OLD, RETURNS[:, :2], VMASK, clip=0.5)
