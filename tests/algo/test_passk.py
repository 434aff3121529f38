import itertools
from fractions import Fraction
from math import comb

import pytest

from reasoner.algo import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),  # c / n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (5, 2, 4, 1.0),  # n - c = 3 < k: every draw of 4 holds a correct one
        (5, 0, 3, 0.0),  # nothing correct
        (5, 5, 1, 1.0),
        (10, 3, 5, 1 - 21 / 252),  # C(7,5) = 21, C(10,5) = 252 -> 0.916667
        (1, 1, 1, 1.0),
    ],
)
def test_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_matches_brute_force_enumeration():
    # Samples 0..c-1 are correct; count the k-subsets that contain at least one.
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                hits = sum(any(i < c for i in s) for s in subsets)
                assert pass_at_k(n, c, k) == pytest.approx(hits / len(subsets), abs=1e-12), (n, c, k)


def test_large_n_is_stable():
    exact = 1 - Fraction(comb(100, 50), comb(200, 50))
    assert pass_at_k(200, 100, 50) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001, rel=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k", "match"),
    [
        (5, 2, 6, "1 <= k <= n"),
        (5, 6, 1, "0 <= c <= n"),
        (5, -1, 1, "0 <= c <= n"),
        (5, 2, 0, "1 <= k <= n"),
        (5, 2, 1.5, "k must be an integer"),
    ],
)
def test_bad_arguments_raise(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def test_mean_pass_at_k():
    assert mean_pass_at_k([(5, 2), (5, 0), (4, 4)], k=1) == pytest.approx((0.4 + 0.0 + 1.0) / 3)
    with pytest.raises(ValueError, match="empty"):
        mean_pass_at_k([], k=1)
