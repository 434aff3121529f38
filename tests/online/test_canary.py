"""The canary's test on live thumbs (hand-computed), the decisions and thumbs in the store, the pointwise export,
the pointwise RM loss, and users that repeat prompts instead of running out. Fast."""

import random

import pytest
import torch

from reasoner.algo.pairwise import pointwise_accuracy, pointwise_loss
from reasoner.online.canary import canary_decision, normal_cdf, route_to_candidate, worse_p_value
from reasoner.online.simusers import FRESH_TRIES, Population, thumb_of
from reasoner.serve.pairs import pointwise_rows, preference_pairs
from reasoner.serve.store import FeedbackStore

# (up_c, n_c, up_d, n_d) -> p. By hand: pool = (up_c + up_d) / (n_c + n_d),
# se = sqrt(pool (1 - pool) (1/n_c + 1/n_d)), z = (up_c/n_c - up_d/n_d) / se, p = Φ(z).
TABLE = [
    ((40, 100, 60, 100), 0.0023389),  # pool 0.5, se sqrt(0.005) = 0.070711, z = -2.8284
    ((60, 100, 40, 100), 0.9976611),  # the mirror: z = +2.8284
    ((30, 50, 20, 40), 0.8286091),  # pool 5/9, se sqrt(0.246914 * 0.045) = 0.105409, z = 0.94868
    ((30, 40, 36, 40), 0.0387424),  # pool 0.825, se sqrt(0.144375 * 0.05) = 0.084963, z = -1.76547
    ((32, 40, 36, 40), 0.1052032),  # pool 0.85, se sqrt(0.1275 * 0.05) = 0.079844, z = -1.25245
    ((50, 100, 50, 100), 0.5),  # equal rates: z = 0
    ((0, 10, 0, 20), 0.5),  # all down on both sides: no variance, the same rate
    ((10, 10, 20, 20), 0.5),  # all up on both sides
]


@pytest.mark.parametrize("counts, p", TABLE)
def test_worse_p_value_matches_the_hand_computed_table(counts, p):
    assert worse_p_value(*counts) == pytest.approx(p, abs=1e-6)


def test_normal_cdf_known_points():
    assert normal_cdf(0.0) == 0.5
    assert normal_cdf(1.959964) == pytest.approx(0.975, abs=1e-6)
    assert normal_cdf(-1.644854) == pytest.approx(0.05, abs=1e-6)


@pytest.mark.parametrize(
    "counts, min_thumbs, decision",
    [
        ((30, 40, 36, 40), 40, "rolled_back"),  # p 0.0387 < 0.05: worse
        ((32, 40, 36, 40), 40, "promoted"),  # p 0.105: not shown worse
        ((60, 100, 40, 100), 40, "promoted"),  # better
        ((30, 40, 36, 39), 40, None),  # the deployed side has 39 thumbs: wait
        ((3, 39, 36, 40), 40, None),  # far worse, but too few thumbs yet
    ],
)
def test_canary_decision_waits_then_tests(counts, min_thumbs, decision):
    d = canary_decision(*counts, alpha=0.05, min_thumbs=min_thumbs)
    assert d["decision"] == decision
    up_c, n_c, up_d, n_d = counts
    assert d["live"] == {
        "candidate": up_c / n_c,
        "deployed": up_d / n_d,
        "thumbs": [n_c, n_d],
        "up": [up_c, up_d],
    }


def test_worse_p_value_names_bad_counts():
    with pytest.raises(ValueError, match="candidate: .* 5 of 4"):
        worse_p_value(5, 4, 1, 2)
    with pytest.raises(ValueError, match="deployed"):
        worse_p_value(1, 2, 0, 0)


def test_route_sends_the_fraction():
    rng = random.Random(0)
    share = sum(route_to_candidate(rng.random(), 0.3) for _ in range(20000)) / 20000
    assert 0.29 < share < 0.31 and not route_to_candidate(0.0, 0.0)


def test_pointwise_loss_by_hand():
    r, label = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 0.0])
    # -log σ(0) = log 2; -log σ(-2) = log(1 + e²); -log σ(1) = log(1 + e⁻¹)
    terms = [0.693147, 2.126928, 0.313262]
    assert pointwise_loss(r, label).item() == pytest.approx(sum(terms) / 3, abs=1e-5)
    w = torch.tensor([1.0, 0.0, 3.0])
    assert pointwise_loss(r, label, w).item() == pytest.approx((terms[0] + 3 * terms[2]) / 4, abs=1e-5)
    assert pointwise_accuracy(r, label).tolist() == [0.5, 0.0, 1.0]
    with pytest.raises(ValueError, match="one shape"):
        pointwise_loss(r, label[:2])


def _resp(cid, text, version="v0", prompt="p"):
    return {"completion_id": cid, "choice": 0, "prompt": prompt, "text": text, "version": version}


def test_pointwise_rows_and_pairs_keep_reason_and_comment():
    rows = [
        {"id": "f1", "kind": "rating", "rating": 1, "created_at": 0.0, "user": "u", "reason": "clear",
         "comment": "thanks", "responses": [_resp("a", "A")]},
        {"id": "f2", "kind": "rating", "rating": -1, "created_at": 1.0, "user": "u", "reason": "rude",
         "comment": None, "responses": [_resp("b", "B", "v1")]},
        {"id": "f3", "kind": "rating", "rating": 1, "created_at": 2.0, "user": "w", "reason": None,
         "comment": None, "responses": [_resp("b", "B", "v1")]},  # b: +1 -1 = no opinion
        {"id": "f4", "kind": "choice", "created_at": 3.0, "user": "u", "reason": "shorter", "comment": "ok",
         "responses": [_resp("c", "C"), _resp("d", "D")]},
    ]  # fmt: skip
    points = pointwise_rows(rows)
    assert [(p["completion"], p["label"], p["reason"], p["comment"]) for p in points] == [
        ("A", True, "clear", "thanks")
    ]
    pairs = preference_pairs(rows)
    assert [(p["chosen"], p["rejected"], p["reason"], p["comment"]) for p in pairs] == [
        ("C", "D", "shorter", "ok")
    ]
    rows[2]["rating"] = -1  # now b is down: a thumbs pair (A over B) carries both ratings' reasons
    thumbs = [p for p in preference_pairs(rows) if p["source"] == "thumbs"]
    assert [(p["chosen"], p["rejected"], p["reason"]) for p in thumbs] == [("A", "B", "clear | rude")]
    assert [p["completion"] for p in pointwise_rows(rows, versions=["v1"])] == ["B"]


def test_store_thumbs_and_decisions(tmp_path):
    store = FeedbackStore(str(tmp_path / "f.db"))
    a = store.record_completion(prompt="p", texts=["x", "y"], version="v0")
    b = store.record_completion(prompt="q", texts=["z"], version="v1")
    for cid, choice, rating in [(a, 0, 1), (a, 1, -1), (b, 0, 1), (b, 0, 1)]:
        store.record_feedback("rating", [(cid, choice)], rating=rating)
    store.record_feedback("tie", [(a, 0), (a, 1)], both_bad=True)
    assert store.thumbs() == {"v0": (1, 2), "v1": (2, 2)}
    assert store.thumbs(since=1e18) == {}
    assert [(p["completion"], p["label"], p["source"]) for p in store.export_points()] == [
        ("x", True, "thumbs"), ("y", False, "thumbs"), ("z", True, "thumbs"), ("x", False, "both_bad"),
        ("y", False, "both_bad")]  # fmt: skip
    live = {"up": [2, 1], "thumbs": [2, 2]}
    first = store.record_decision("round/1", "v1", "promoted", against="v0", live=live, p_value=0.8)
    again = store.record_decision("round/1", "v1", "rolled_back", against="v0")  # a rerun after a kill: once
    assert again == first and len(store.decisions()) == 1
    assert (first["rate"], first["against_rate"], first["thumbs"], first["by"]) == (1.0, 0.5, 2, "loop")
    with pytest.raises(ValueError, match="valid: promoted, rolled_back, refused"):
        store.record_decision("round/2", "v2", "kept")
    store.close()


def test_an_older_store_gains_the_decisions_table(tmp_path):
    import sqlalchemy as sa

    from reasoner.serve.tables import MIGRATIONS, schema_version

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a store written by the schema-1 reasoner
        schema_version.create(conn)
        conn.execute(schema_version.insert().values(version=1))
        MIGRATIONS[0](conn)
    engine.dispose()
    store = FeedbackStore(url)
    assert store.schema_version() == 3 and store.decisions() == []
    store.record_decision("hand/v1", "v1", "rolled_back", by="hand")
    assert [d["by"] for d in store.decisions()] == ["hand"]
    store.close()


def test_users_repeat_prompts_instead_of_running_out(tmp_path):
    """A prompt space of 3: the fourth ask repeats one (before, the users raised and the run stopped)."""
    pop = Population("http://127.0.0.1:9", [], lambda r, p, x: 1.0, lambda rng: rng.choice("abc"),
                     tmp_path / "journal.jsonl", "rule")  # fmt: skip
    rng = random.Random(0)
    asked = [pop._next_prompt(rng) for _ in range(10)]
    assert set(asked[:3]) == {"a", "b", "c"} and set(asked) == {"a", "b", "c"}
    assert pop.stats["repeats"] == 7 and FRESH_TRIES >= 10
    pop.close()
    with pytest.raises(ValueError, match="valid: mixed, thumbs"):
        Population("http://x", [], None, None, tmp_path / "j2.jsonl", "rule", feedback="ratings")


def test_thumb_follows_the_gold_score_with_noise():
    rng = random.Random(0)
    assert thumb_of(0.9, 0.0, rng) == 1 and thumb_of(0.1, 0.0, rng) == -1
    flips = sum(thumb_of(1.0, 0.2, rng) == -1 for _ in range(5000)) / 5000
    assert 0.18 < flips < 0.22
