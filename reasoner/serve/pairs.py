"""Feedback rows -> preference pairs and per-version statistics. Pure functions, no SQL.

A feedback row (``FeedbackStore.feedback()``) has a ``kind`` and its ``responses`` in position order, each with
its ``prompt``, ``text`` and ``version``. Pairs come from:

- ``choice``: chosen (position 0) over rejected (position 1);
- ``ranking``: every pair the order implies (best first: k responses give k(k-1)/2 pairs);
- ``rating``: on the same prompt, every response rated up over every response rated down (a response's rating
  is the sign of the sum of its ratings; 0 = no opinion).

Ties give no pair (the reward model's data has none) but count as half a win each in the version statistics.

A pair carries ``chosen_logprobs`` / ``rejected_logprobs`` (``{"token_ids", "logprobs"}``: the sampled tokens
and the behaviour policy's log-probs of them, at the sampling temperature in the response's ``sampling``) when
the store holds them for that response (the server stores them for every completion since schema v2).
Each pair keeps the ``reason`` and ``comment`` people gave with it (for thumbs: those of its two ratings).

``pointwise_rows`` turns single judgements into the RM's unpaired format (TRL's ``{prompt, completion, label}``):
every rated response (label: the sign of the sum of its ratings) and both responses of a ``both_bad`` tie (label
False). A thumb with no opposite thumb on its prompt forms no pair, so without these rows it teaches nothing.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable

import numpy as np


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).isoformat(timespec="milliseconds")


def _pair(
    prompt: str,
    chosen: dict,
    rejected: dict,
    source: str,
    created_at: float,
    user,
    feedback_id,
    reason: str | None = None,
    comment: str | None = None,
) -> dict:
    behaviour = {
        f"{side}_logprobs": {**r["logprobs"], "temperature": r.get("sampling", {}).get("temperature")}
        for side, r in (("chosen", chosen), ("rejected", rejected))
        if r.get("logprobs") is not None
    }
    return {
        "prompt": prompt,
        "chosen": chosen["text"],
        "rejected": rejected["text"],
        "source": source,
        "policy_version": chosen["version"],
        "chosen_version": chosen["version"],
        "rejected_version": rejected["version"],
        "chosen_ref": {"completion_id": chosen["completion_id"], "choice": chosen["choice"]},
        "rejected_ref": {"completion_id": rejected["completion_id"], "choice": rejected["choice"]},
        "user": user,
        "feedback_id": feedback_id,
        "reason": reason,
        "comment": comment,
        "created_at": _iso(created_at),
        **behaviour,
    }


def _joined(values) -> str | None:
    kept = [v for v in dict.fromkeys(values) if v]
    return " | ".join(kept) if kept else None


def preference_pairs(rows: list[dict], versions: Iterable[str] | None = None) -> list[dict]:
    """Pairs in the RM's format ``{prompt, chosen, rejected}`` plus metadata; ``versions`` keeps pairs whose two
    responses both came from one of those versions.

    >>> r = lambda cid, text, v="v0": {"completion_id": cid, "choice": 0, "prompt": "p", "text": text, "version": v}
    >>> rows = [{"id": "f1", "kind": "ranking", "created_at": 0.0, "user": None,
    ...          "responses": [r("a", "A"), r("b", "B"), r("c", "C")]}]
    >>> [(p["chosen"], p["rejected"]) for p in preference_pairs(rows)]
    [('A', 'B'), ('A', 'C'), ('B', 'C')]
    """
    keep = None if versions is None else set(versions)
    pairs: list[dict] = []
    ratings: dict[str, dict[tuple[str, int], dict]] = defaultdict(dict)  # prompt -> ref -> response + score
    for fb in rows:
        resp = fb["responses"]
        if fb["kind"] == "choice":
            pairs.append(
                _pair(resp[0]["prompt"], resp[0], resp[1], "choice", fb["created_at"], fb["user"], fb["id"],
                      fb.get("reason"), fb.get("comment"))
            )  # fmt: skip
        elif fb["kind"] == "ranking":
            for i in range(len(resp)):
                for j in range(i + 1, len(resp)):
                    pairs.append(
                        _pair(
                            resp[i]["prompt"],
                            resp[i],
                            resp[j],
                            "ranking",
                            fb["created_at"],
                            fb["user"],
                            fb["id"],
                            fb.get("reason"),
                            fb.get("comment"),
                        )
                    )
        elif fb["kind"] == "rating":
            r = resp[0]
            entry = ratings[r["prompt"]].setdefault(
                (r["completion_id"], r["choice"]),
                {"response": r, "score": 0, "at": 0.0, "users": set(), "reasons": [], "comments": []},
            )
            entry["score"] += fb["rating"]
            entry["reasons"].append(fb.get("reason"))
            entry["comments"].append(fb.get("comment"))
            entry["at"] = max(entry["at"], fb["created_at"])
            entry["users"].add(fb["user"])
    for prompt, by_ref in ratings.items():
        ups = [e for e in by_ref.values() if e["score"] > 0]
        downs = [e for e in by_ref.values() if e["score"] < 0]
        for up in ups:
            for down in downs:
                users = up["users"] | down["users"]
                user = next(iter(users)) if len(users) == 1 else None
                pairs.append(
                    _pair(
                        prompt,
                        up["response"],
                        down["response"],
                        "thumbs",
                        max(up["at"], down["at"]),
                        user,
                        None,
                        _joined(up["reasons"] + down["reasons"]),
                        _joined(up["comments"] + down["comments"]),
                    )
                )
    if keep is not None:
        pairs = [p for p in pairs if p["chosen_version"] in keep and p["rejected_version"] in keep]
    return pairs


def pointwise_rows(rows: list[dict], versions: Iterable[str] | None = None) -> list[dict]:
    """Single judgements ``{prompt, completion, label, ...metadata}``: each rated response once (label True when
    its ratings sum above 0, False below, none at 0) and both responses of a ``both_bad`` tie (False).

    >>> r = lambda cid, text: {"completion_id": cid, "choice": 0, "prompt": "p", "text": text, "version": "v0"}
    >>> rows = [{"id": "f1", "kind": "rating", "rating": -1, "created_at": 0.0, "user": "u", "reason": "rude",
    ...          "responses": [r("a", "A")]},
    ...         {"id": "f2", "kind": "tie", "both_bad": True, "created_at": 1.0, "user": "u",
    ...          "responses": [r("b", "B"), r("c", "C")]}]
    >>> [(x["completion"], x["label"], x["source"], x["reason"]) for x in pointwise_rows(rows)]
    [('A', False, 'thumbs', 'rude'), ('B', False, 'both_bad', None), ('C', False, 'both_bad', None)]
    """
    keep = None if versions is None else set(versions)
    rated: dict[tuple[str, int], dict] = {}
    out: list[dict] = []
    for fb in rows:
        if fb["kind"] == "rating":
            r = fb["responses"][0]
            e = rated.setdefault((r["completion_id"], r["choice"]), {"response": r, "fb": fb, "score": 0,
                                                                     "reasons": [], "comments": []})  # fmt: skip
            e["score"] += fb["rating"]
            e["reasons"].append(fb.get("reason"))
            e["comments"].append(fb.get("comment"))
            e["at"] = fb["created_at"]
        elif fb["kind"] == "tie" and fb.get("both_bad"):
            for r in fb["responses"]:
                out.append(
                    _point(r, False, "both_bad", fb["created_at"], fb, fb.get("reason"), fb.get("comment"))
                )
    for e in rated.values():
        if e["score"]:
            out.append(_point(e["response"], e["score"] > 0, "thumbs", e["at"], e["fb"],
                              _joined(e["reasons"]), _joined(e["comments"])))  # fmt: skip
    out.sort(key=lambda x: x["created_at"])
    if keep is not None:
        out = [x for x in out if x["version"] in keep]
    return out


def _point(resp: dict, label: bool, source: str, created_at: float, fb: dict, reason, comment) -> dict:
    return {
        "prompt": resp["prompt"],
        "completion": resp["text"],
        "label": label,
        "source": source,
        "version": resp["version"],
        "ref": {"completion_id": resp["completion_id"], "choice": resp["choice"]},
        "user": fb.get("user"),
        "feedback_id": fb["id"],
        "reason": reason,
        "comment": comment,
        "created_at": _iso(created_at),
    }


def bradley_terry(
    names: list[str], wins: np.ndarray, prior: float = 0.1, iters: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Bradley–Terry strengths and their standard errors on the Elo scale (400 log10, mean 1000).

    ``wins[i, j]`` (shape [K, K]) counts the times ``names[i]`` beat ``names[j]`` (ties as 0.5 each way).
    Newton's method on the log-likelihood plus a Gaussian prior of precision ``prior`` on the log-strengths
    (it keeps them finite when one version always wins); standard errors from the inverse Hessian.

    >>> r, se = bradley_terry(["a", "b"], np.array([[0.0, 30.0], [10.0, 0.0]]))
    >>> bool(r[0] > r[1]), round(float(r[0] - r[1]))  # 3:1 odds -> ~191 Elo points (shrunk a little by the prior)
    (True, 190)
    """
    k = len(names)
    theta = np.zeros(k)
    n = wins + wins.T  # [K, K] games between i and j
    hess = np.eye(k) * prior
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(theta[None, :] - theta[:, None]))  # [K, K] P(i beats j)
        grad = (wins - n * p).sum(axis=1) - prior * theta  # [K]
        w = n * p * (1 - p)  # [K, K]
        hess = np.diag(w.sum(axis=1)) - w + prior * np.eye(k)  # negative Hessian, positive definite
        step = np.linalg.solve(hess, grad)
        theta = theta + step
        if np.abs(step).max() < 1e-9:
            break
    cov = np.linalg.inv(hess)
    scale = 400.0 / math.log(10.0)
    return 1000.0 + scale * (theta - theta.mean()), scale * np.sqrt(np.diag(cov))


def version_stats(rows: list[dict], versions: list[str], served: dict[str, int] | None = None) -> dict:
    """Per version: responses served, thumbs up/down and rate, comparison wins/losses/ties against *other*
    versions and the win rate, and a Bradley–Terry (Elo-scale) rating with a 95% interval."""
    served = served or {}
    names = list(dict.fromkeys([*versions, *served, *(r["version"] for fb in rows for r in fb["responses"])]))
    index = {v: i for i, v in enumerate(names)}
    stat = {
        v: {"served": served.get(v, 0), "up": 0, "down": 0, "wins": 0, "losses": 0, "ties": 0} for v in names
    }
    wins = np.zeros((len(names), len(names)))
    comparisons = 0
    for fb in rows:
        resp = fb["responses"]
        if fb["kind"] == "rating":
            stat[resp[0]["version"]]["up" if fb["rating"] > 0 else "down"] += 1
            continue
        order = [(resp[0], resp[1])] if fb["kind"] in ("choice", "tie") else []
        if fb["kind"] == "ranking":
            order = [(resp[i], resp[j]) for i in range(len(resp)) for j in range(i + 1, len(resp))]
        for a, b in order:
            va, vb = a["version"], b["version"]
            if va == vb:
                continue  # two answers of one version say nothing about versions
            comparisons += 1
            if fb["kind"] == "tie":
                stat[va]["ties"] += 1
                stat[vb]["ties"] += 1
                wins[index[va], index[vb]] += 0.5
                wins[index[vb], index[va]] += 0.5
            else:
                stat[va]["wins"] += 1
                stat[vb]["losses"] += 1
                wins[index[va], index[vb]] += 1
    rating, se = bradley_terry(names, wins) if names else (np.zeros(0), np.zeros(0))
    out = []
    for v in names:
        s = stat[v]
        rated, games = s["up"] + s["down"], s["wins"] + s["losses"] + s["ties"]
        i = index[v]
        out.append(
            {
                "version": v,
                **s,
                "thumbs_up_rate": s["up"] / rated if rated else None,
                "win_rate": (s["wins"] + 0.5 * s["ties"]) / games if games else None,
                # no comparison against another version: the rating is the prior's, with no interval to show
                "rating": round(float(rating[i]), 1) if games else None,
                "rating_ci95": [
                    round(float(rating[i] - 1.96 * se[i]), 1),
                    round(float(rating[i] + 1.96 * se[i]), 1),
                ]
                if games
                else None,
            }
        )
    return {"versions": out, "comparisons": comparisons, "feedback_rows": len(rows)}
