"""Feedback -> preference pairs and version ratings: tables worked by hand; `cut` (max_tokens / stop) too."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reasoner.models import build_char_tokenizer
from reasoner.serve.decode import Sampled, cut
from reasoner.serve.pairs import bradley_terry, preference_pairs, version_stats


def resp(cid, text, prompt="p", version="v0", choice=0):
    return {"completion_id": cid, "choice": choice, "prompt": prompt, "text": text, "version": version}


def fb(kind, *responses, rating=None, t=0.0, user=None, fid="f"):
    return {
        "id": fid,
        "kind": kind,
        "created_at": t,
        "rating": rating,
        "user": user,
        "responses": list(responses),
    }


# (feedback rows, expected (prompt, chosen, rejected) pairs, in export order)
PAIR_TABLE = [
    ([fb("choice", resp("a", "A"), resp("b", "B"))], [("p", "A", "B")]),
    ([fb("tie", resp("a", "A"), resp("b", "B"))], []),
    (
        [fb("ranking", resp("a", "A"), resp("b", "B"), resp("c", "C"))],
        [("p", "A", "B"), ("p", "A", "C"), ("p", "B", "C")],
    ),
    (  # thumbs on one prompt: every up over every down
        [
            fb("rating", resp("a", "A"), rating=1),
            fb("rating", resp("b", "B"), rating=-1),
            fb("rating", resp("c", "C"), rating=-1),
        ],
        [("p", "A", "B"), ("p", "A", "C")],
    ),
    (  # thumbs on different prompts never pair
        [
            fb("rating", resp("a", "A", prompt="p1"), rating=1),
            fb("rating", resp("b", "B", prompt="p2"), rating=-1),
        ],
        [],
    ),
    (  # a response rated up and down once nets 0: no opinion
        [
            fb("rating", resp("a", "A"), rating=1),
            fb("rating", resp("a", "A"), rating=-1),
            fb("rating", resp("b", "B"), rating=-1),
        ],
        [],
    ),
    (  # two choices of one completion are two responses
        [
            fb("rating", resp("a", "A0", choice=0), rating=1),
            fb("rating", resp("a", "A1", choice=1), rating=-1),
        ],
        [("p", "A0", "A1")],
    ),
]


@pytest.mark.parametrize("rows, expected", PAIR_TABLE)
def test_preference_pairs(rows, expected):
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in preference_pairs(rows)] == expected


def test_pair_metadata_and_version_filter():
    rows = [
        fb("choice", resp("a", "A", version="v1"), resp("b", "B", version="v0"), t=1.5, user="ann", fid="f9")
    ]
    (pair,) = preference_pairs(rows)
    assert pair["source"] == "choice" and pair["user"] == "ann" and pair["feedback_id"] == "f9"
    assert (pair["policy_version"], pair["chosen_version"], pair["rejected_version"]) == ("v1", "v1", "v0")
    assert pair["chosen_ref"] == {"completion_id": "a", "choice": 0}
    assert pair["created_at"].startswith("1970-01-01T00:00:01.500")
    assert preference_pairs(rows, versions=["v1"]) == []
    assert len(preference_pairs(rows, versions=["v0", "v1"])) == 1


def test_bradley_terry_two_players_matches_the_closed_form():
    # without a prior the MLE is log-odds = log(wins / losses); 400/ln(10) per unit on the Elo scale
    r, se = bradley_terry(["a", "b"], np.array([[0.0, 30.0], [10.0, 0.0]]), prior=1e-9)
    assert r[0] - r[1] == pytest.approx(400 / math.log(10) * math.log(3), abs=0.01)
    # Fisher information of the difference: n p (1 - p) = 40 * 0.75 * 0.25; each side carries half of it
    assert se[0] > 0 and se[0] == pytest.approx(se[1])


def test_bradley_terry_orders_three_and_stays_finite_when_one_always_wins():
    wins = np.array([[0, 8, 9], [2, 0, 6], [1, 4, 0]], dtype=float)
    r, se = bradley_terry(["a", "b", "c"], wins)
    assert r[0] > r[1] > r[2] and r.mean() == pytest.approx(1000.0)
    sweep, _ = bradley_terry(["a", "b"], np.array([[0.0, 5.0], [0.0, 0.0]]))
    assert np.isfinite(sweep).all() and sweep[0] > sweep[1]


def test_version_stats_ties_count_half():
    rows = [
        fb("tie", resp("a", "A", version="v0"), resp("b", "B", version="v1")),
        fb("choice", resp("b", "B", version="v1"), resp("a", "A", version="v0")),
        fb("rating", resp("a", "A", version="v0"), rating=-1),
    ]
    stats = {v["version"]: v for v in version_stats(rows, ["v0", "v1"], {"v0": 5})["versions"]}
    assert stats["v1"]["win_rate"] == pytest.approx(0.75) and stats["v0"]["win_rate"] == pytest.approx(0.25)
    assert stats["v0"]["thumbs_up_rate"] == 0.0 and stats["v1"]["thumbs_up_rate"] is None
    assert stats["v0"]["served"] == 5


TOK = build_char_tokenizer()
EOS = TOK.eos_token_id


def ids(text, eos=False):
    return TOK(text, add_special_tokens=False)["input_ids"] + ([EOS] if eos else [])


# (text, completion ids, finish, max_tokens, stop) -> (text, finish, completion_tokens)
CUT_TABLE = [
    (("abcdef", ids("abcdef"), "length", 10, []), ("abcdef", "length", 6)),
    (("abc", ids("abc", eos=True), "stop", 10, []), ("abc", "stop", 4)),
    (("abcdef", ids("abcdef"), "length", 3, []), ("abc", "length", 3)),
    (("abc", ids("abc", eos=True), "stop", 3, []), ("abc", "length", 3)),  # the EOS did not fit
    (("12 = 19\nnext", ids("12 = 19\nnext"), "length", 20, ["\n"]), ("12 = 19", "stop", 7)),
    (("a#b;c", ids("a#b;c"), "length", 20, [";", "#"]), ("a", "stop", 1)),  # the earliest stop wins
    (("abcdef", ids("abcdef"), "length", 4, ["e"]), ("abcd", "length", 4)),  # stop beyond max_tokens
]


@pytest.mark.parametrize("args, expected", CUT_TABLE)
def test_cut(args, expected):
    text, completion, finish, max_tokens, stop = args
    c = cut(text, completion, finish, max_tokens, stop, TOK, EOS)
    assert (c.text, c.finish_reason, c.completion_tokens) == expected


@pytest.mark.parametrize("args, expected", CUT_TABLE)
def test_cut_keeps_the_logprobs_of_the_tokens_it_keeps(args, expected):
    text, completion, finish, max_tokens, stop = args
    logprobs = [-(i + 1) / 10 for i in range(len(completion))]
    top = [[(t, lp), (EOS, -9.0)] for t, lp in zip(completion, logprobs, strict=True)]
    c = cut(text, completion, finish, max_tokens, stop, TOK, EOS, Sampled(logprobs, top, k=1))
    kept = len(c.token_ids)
    assert c.token_ids == completion[:kept] and c.logprobs == logprobs[:kept]
    assert TOK.decode(c.token_ids, skip_special_tokens=True) == c.text  # one character per token here
    assert "".join(e.token for e in c.entries) == c.text and EOS not in c.token_ids[:-1]
    assert [e.logprob for e in c.entries] == [
        lp for t, lp in zip(c.token_ids, c.logprobs, strict=True) if t != EOS
    ]
    assert all(len(e.top) == 1 for e in c.entries)  # k=1 of the two reported
    assert (
        cut(text, completion, finish, max_tokens, stop, TOK, EOS, Sampled(logprobs, top, k=None)).entries
        is None
    )


def test_a_version_never_compared_has_no_rating():
    rows = [fb("rating", resp("a", "A", version="v0"), rating=1)]
    (v0,) = version_stats(rows, ["v0"])["versions"]
    assert v0["rating"] is None and v0["rating_ci95"] is None and v0["thumbs_up_rate"] == 1.0
