"""The canary's decision on live thumbs: pure functions, no I/O.

A candidate that passed the offline gate serves a fraction of live requests (``online.canary_frac``) beside the
deployed version. Once each has at least ``online.canary_min_thumbs`` thumbs, the candidate is promoted unless a
one-sided two-proportion z-test finds its thumbs-up rate *lower* than the deployed version's at level
``online.canary_alpha``:

    p_pool = (up_c + up_d) / (n_c + n_d)
    z      = (up_c / n_c - up_d / n_d) / sqrt(p_pool (1 - p_pool) (1 / n_c + 1 / n_d))
    p      = Φ(z)                  (H0: the rates are equal; H1: the candidate's is lower)

roll back when ``p < alpha``. Equal pooled rates of 0 or 1 (no variance) give z = 0, p = 0.5: not worse.

>>> round(worse_p_value(40, 100, 60, 100), 4)  # 0.40 vs 0.60: z = -0.2 / sqrt(0.25 * 0.02) = -2.828
0.0023
>>> canary_decision(40, 100, 60, 100, alpha=0.05, min_thumbs=50)["decision"]
'rolled_back'
"""

from __future__ import annotations

import math


def normal_cdf(z: float) -> float:
    """Φ(z), the standard normal CDF.

    >>> normal_cdf(0.0), round(normal_cdf(-1.6449), 4)
    (0.5, 0.05)
    """
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def worse_p_value(up_c: int, n_c: int, up_d: int, n_d: int) -> float:
    """One-sided p-value of "the candidate's thumbs-up rate is lower than the deployed one's" (pooled z-test).

    ``up_*`` thumbs up out of ``n_*`` thumbs for the candidate (c) and the deployed version (d).
    """
    for name, up, n in (("candidate", up_c, n_c), ("deployed", up_d, n_d)):
        if n <= 0 or not 0 <= up <= n:
            raise ValueError(f"{name}: need 0 <= thumbs up <= thumbs and thumbs > 0; got {up} of {n}")
    pool = (up_c + up_d) / (n_c + n_d)
    var = pool * (1.0 - pool) * (1.0 / n_c + 1.0 / n_d)
    if var <= 0.0:
        return 0.5  # both all up or all down: the same rate
    return normal_cdf((up_c / n_c - up_d / n_d) / math.sqrt(var))


def canary_decision(up_c: int, n_c: int, up_d: int, n_d: int, *, alpha: float, min_thumbs: int) -> dict:
    """``{"decision": None | "promoted" | "rolled_back", "p_value", "live": {...}}``: None while either side
    has fewer than ``min_thumbs`` thumbs; then rolled back when ``worse_p_value < alpha``, else promoted.

    ``live`` is the JSON line's record: ``{"candidate": rate, "deployed": rate, "thumbs": [n_c, n_d]}``.
    """
    live = {
        "candidate": up_c / n_c if n_c else None,
        "deployed": up_d / n_d if n_d else None,
        "thumbs": [n_c, n_d],
        "up": [up_c, up_d],
    }
    if n_c < min_thumbs or n_d < min_thumbs:
        return {"decision": None, "p_value": None, "live": live}
    p = worse_p_value(up_c, n_c, up_d, n_d)
    return {"decision": "rolled_back" if p < alpha else "promoted", "p_value": p, "live": live}


def route_to_candidate(u: float, frac: float) -> bool:
    """Whether a request with uniform draw ``u`` in [0, 1) goes to the candidate (``frac`` of them do).

    >>> [route_to_candidate(u, 0.25) for u in (0.0, 0.24, 0.25, 0.9)]
    [True, True, False, False]
    """
    return u < frac
