"""The online loop's pure parts: the RM window, the held-out split, the gate's decision, the users' judgement,
the users' journal. Fast; the stages on real models and servers are in test_online.py."""

import json
import random

import pytest

from reasoner.config import ConfigError, load_config
from reasoner.online.gate import decide, win_rate
from reasoner.online.loop import rm_window, split_heldout, validate
from reasoner.online.simusers import Journal, judge, make_users

ROUNDS = [[{"id": 1}, {"id": 2}], [{"id": 3}, {"id": 4}], [{"id": 5}]]


@pytest.mark.parametrize(
    "mode, last_n, half_life, expected",
    [
        ("all", 0, 1.0, [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0), (5, 1.0)]),
        ("last", 2, 1.0, [(4, 1.0), (5, 1.0)]),
        ("last", 10, 1.0, [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0), (5, 1.0)]),
        ("recency", 0, 1.0, [(1, 0.25), (2, 0.25), (3, 0.5), (4, 0.5), (5, 1.0)]),
        ("recency", 0, 2.0, [(1, 0.5), (2, 0.5), (3, 2**-0.5), (4, 2**-0.5), (5, 1.0)]),
        ("recency", 0, 0.2, [(3, 0.5**5), (4, 0.5**5), (5, 1.0)]),  # age 2 weighs 0.5**10 < 0.01: dropped
    ],
)
def test_rm_window_honours_its_setting(mode, last_n, half_life, expected):
    got = [(r["id"], r["weight"]) for r in rm_window(ROUNDS, mode, last_n, half_life)]
    assert [g[0] for g in got] == [e[0] for e in expected]
    assert [g[1] for g in got] == pytest.approx([e[1] for e in expected])


def test_rm_window_unknown_mode_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid: all, last, recency"):
        rm_window(ROUNDS, "newest", 1, 1.0)


def test_split_heldout_holds_out_the_newest_prompts():
    rows = [{"prompt": p, "created_at": f"t{i}"} for i, p in enumerate(["a", "b", "c", "d"])]
    train, held = split_heldout(rows, 0.25)
    assert [r["prompt"] for r in train] == ["a", "b", "c"] and [r["prompt"] for r in held] == ["d"]
    assert split_heldout(rows[:1], 0.25) == ([], rows[:1])  # at least one held out


GATE = dict(min_win_rate=0.5, score_tolerance=0.0, verifiable_tolerance=0.0, max_kl=1.0)


@pytest.mark.parametrize(
    "metrics, accept, reason",
    [
        ({"win_rate": 0.6, "score_candidate": 1.0, "score_parent": 0.5, "kl": 0.2}, True, None),
        ({"win_rate": 0.5, "score_candidate": 0.5, "score_parent": 0.5, "kl": 0.2}, True, None),  # not worse
        ({"win_rate": 0.4, "score_candidate": 1.0, "score_parent": 0.5, "kl": 0.2}, False, "win rate"),
        ({"win_rate": 0.6, "score_candidate": 0.4, "score_parent": 0.5, "kl": 0.2}, False, "RM score"),
        ({"win_rate": 0.6, "score_candidate": 1.0, "score_parent": 0.5, "kl": 3.0}, False, "KL"),
        ({"win_rate": 0.6, "score_candidate": 1.0, "score_parent": 0.5, "kl": 0.2,
          "verifiable_candidate": 0.3, "verifiable_parent": 0.5}, False, "verifiable"),
    ],
)  # fmt: skip
def test_gate_decision(metrics, accept, reason):
    ok, reasons = decide(metrics, **GATE)
    assert ok is accept
    assert (reason is None and not reasons) or any(reason in r for r in reasons)


def test_win_rate_counts_ties_as_half():
    assert win_rate([2.0, 1.0], [1.0, 1.0]) == 0.75
    with pytest.raises(ValueError):
        win_rate([], [])


def test_judge_prefers_the_gold_answer_and_noise_flips():
    rng = random.Random(0)
    assert judge((1.0, 0.0), 0.0, rng) == (0, 1)
    assert judge((0.0, 1.0), 0.0, rng) == (1, -1)
    flips = sum(judge((1.0, 0.0), 0.3, rng)[0] == 1 for _ in range(2000)) / 2000
    assert 0.25 < flips < 0.35


def test_users_vary_within_the_spread():
    users = make_users(50, 0.1, 0.05, seed=1)
    assert all(0.05 <= u.noise <= 0.15 for u in users) and len({u.noise for u in users}) == 50


def test_journal_survives_a_torn_line_and_tracks_pending(tmp_path):
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.write({"kind": "ask", "prompt": "p1"})
    j.write({"kind": "intent", "key": "k1", "body": {}})
    j.write({"kind": "ack", "key": "k1", "id": "f1"})
    j.write({"kind": "intent", "key": "k2", "body": {}})
    j.close()
    with path.open("a") as f:
        f.write('{"kind": "ack", "key": "k2", "id"')  # killed mid-write
    j = Journal(path)
    assert j.asked == {"p1"} and j.acks == 1 and list(j.pending) == ["k2"]
    j.write({"kind": "ack", "key": "k2", "id": "f2"})
    j.close()
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{") and x.endswith("}")]
    assert Journal(path).acks == 2 and lines[-1]["id"] == "f2"


def test_validate_names_the_bad_setting():
    with pytest.raises(ConfigError, match="online.min_pairs"):
        validate(load_config(None, ["online.min_pairs=1"]))
    with pytest.raises(ConfigError, match="holdout_frac"):
        validate(load_config(None, ["online.holdout_frac=1.5"]))
