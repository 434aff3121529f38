"""Unbiased pass@k (Chen et al. 2021, the Codex paper).

From n samples of which c are correct, the chance that k samples drawn without replacement contain
at least one correct one: ``1 - C(n-c, k) / C(n, k)``, computed as the product
``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` so that no huge binomials appear.

>>> round(pass_at_k(5, 2, 1), 12)   # c / n
0.4
>>> round(pass_at_k(5, 2, 2), 12)   # 1 - C(3,2)/C(5,2) = 1 - 3/10
0.7
>>> round(mean_pass_at_k([(5, 2), (5, 0)], k=1), 12)
0.2
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples, ``c`` of them correct.

    Raises ValueError unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"pass_at_k: {name} must be an integer, got {value!r}")
    if c < 0 or c > n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n (correct samples out of n), got n={n}, c={c}")
    if k < 1 or k > n:
        raise ValueError(
            f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}; draw at least k samples per problem to report pass@{k}"
        )
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    prob_all_wrong = 1.0  # C(n-c, k) / C(n, k)
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean of ``pass_at_k(n, c, k)`` over problems given as ``(n, c)`` pairs."""
    if len(counts) == 0:
        raise ValueError("mean_pass_at_k: no problems given (counts is empty)")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
