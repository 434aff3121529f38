"""The feedback store on a real SQLite file and on a real PostgreSQL server (started by the tests)."""

from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa

from reasoner.serve.store import SCHEMA_VERSION, FeedbackStore, IdempotencyConflict, NotFound


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])])
def url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "feedback.db")
    base = request.getfixturevalue("postgres_url")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with sa.create_engine(base, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    return base.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def store(url):
    s = FeedbackStore(url)
    yield s
    s.close()


def _completion(store, prompt="user: 2+2?\nassistant:", texts=("4", "5"), version="v0"):
    return store.record_completion(
        prompt=prompt, texts=list(texts), version=version, sampling={"temperature": 1.0}
    )


def test_schema_is_versioned_and_reopening_keeps_rows(url):
    s = FeedbackStore(url)
    cid = _completion(s)
    s.record_feedback("rating", [(cid, 0)], rating=1)
    assert s.schema_version() == SCHEMA_VERSION
    s.close()
    again = FeedbackStore(url)  # migrations already applied: a no-op
    assert again.schema_version() == SCHEMA_VERSION
    assert again.count_feedback() == 1
    assert again.completion(cid)["choices"][1]["text"] == "5"
    again.close()


def test_a_newer_schema_is_refused(url):
    s = FeedbackStore(url)
    with s.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1}")
    s.close()
    with pytest.raises(RuntimeError, match="newer than this reasoner"):
        FeedbackStore(url)


def test_every_feedback_kind_round_trips(store):
    cid = _completion(store, texts=("a", "b", "c"))
    store.record_feedback("rating", [(cid, 0)], rating=-1, reason="wrong", comment="it says 5", user="ann")
    store.record_feedback("choice", [(cid, 1), (cid, 2)], user="bob")
    store.record_feedback("tie", [(cid, 0), (cid, 1)], both_bad=True)
    store.record_feedback("ranking", [(cid, 2), (cid, 0), (cid, 1)])
    rows = store.feedback()
    assert [r["kind"] for r in rows] == ["rating", "choice", "tie", "ranking"]
    assert rows[0]["reason"] == "wrong" and rows[0]["user"] == "ann" and rows[0]["rating"] == -1
    assert rows[2]["both_bad"] is True
    assert [r["text"] for r in rows[3]["responses"]] == ["c", "a", "b"]
    assert store.count_feedback() == 4 and store.count_feedback(kind="choice") == 1


def test_unknown_refs_and_mixed_prompts_are_refused(store):
    cid = _completion(store)
    other = _completion(store, prompt="user: 3+3?\nassistant:")
    with pytest.raises(NotFound, match="nope"):
        store.record_feedback("rating", [("nope", 0)], rating=1)
    with pytest.raises(NotFound, match="choice: 7"):
        store.record_feedback("rating", [(cid, 7)], rating=1)
    with pytest.raises(ValueError, match="same prompt"):
        store.record_feedback("choice", [(cid, 0), (other, 0)])
    assert store.count_feedback() == 0


def test_sql_metacharacters_are_data(store):
    evil = "'); DROP TABLE feedback; --\x00?"
    cid = _completion(store, prompt=evil.replace("\x00", ""), texts=(evil.replace("\x00", ""),))
    store.record_feedback(
        "rating", [(cid, 0)], rating=1, comment="' OR 1=1 --", user='"; DELETE FROM completions'
    )
    with pytest.raises(NotFound):
        store.record_feedback("rating", [("' OR '1'='1", 0)], rating=1)
    assert store.feedback()[0]["comment"] == "' OR 1=1 --"
    assert store.completion(cid)["prompt"] == evil.replace("\x00", "")


def test_idempotency_key_counts_once_even_under_concurrent_retries(store):
    cid = _completion(store)
    results = []

    def post():
        results.append(
            store.record_feedback("rating", [(cid, 0)], rating=1, idempotency_key="k1", body_hash="h")
        )

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r["id"] for r in results}) == 1
    assert sum(r["created"] for r in results) == 1
    assert store.count_feedback() == 1
    with pytest.raises(IdempotencyConflict):
        store.record_feedback("rating", [(cid, 0)], rating=-1, idempotency_key="k1", body_hash="other")


def test_concurrent_writers_lose_nothing(store):
    cid = _completion(store)
    ids, errors = [], []

    def writer(w):
        try:
            for i in range(15):
                ids.append(store.record_feedback("rating", [(cid, i % 2)], rating=1, user=f"w{w}")["id"])
        except Exception as e:  # surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count_feedback() == len(ids) == 120
    assert {r["id"] for r in store.feedback()} == set(ids)


def test_writes_queued_together_share_a_commit_and_fail_alone(store):
    """Group commit: one transaction for the writes queued beside each other, each write with its own answer."""
    cid = _completion(store)
    commits = []
    sa.event.listen(store.engine, "commit", lambda conn: commits.append(1))
    futures = [store.submit_feedback("rating", [(cid, i % 2)], rating=1) for i in range(40)]
    futures += [
        store.submit_feedback("rating", [("nope", 0)], rating=1),
        store.submit_feedback("rating", [(cid, 0)], rating=1, idempotency_key="k", body_hash="a"),
        store.submit_feedback("rating", [(cid, 0)], rating=1, idempotency_key="k", body_hash="a"),
        store.submit_feedback("rating", [(cid, 0)], rating=-1, idempotency_key="k", body_hash="b"),
        store.submit_completion(prompt="user: 1+1?\nassistant:", texts=["2"], version="v0"),
        store.submit_feedback("choice", [(cid, 0), (cid, 1)]),
    ]
    assert all(f.result()["created"] for f in futures[:40])
    with pytest.raises(NotFound, match="nope"):
        futures[40].result()
    first, retry = futures[41].result(), futures[42].result()
    assert first["created"] and not retry["created"] and retry["id"] == first["id"]
    with pytest.raises(IdempotencyConflict):
        futures[43].result()
    other = futures[44].result()
    assert futures[45].result()["created"]
    assert store.count_feedback() == 40 + 1 + 1
    assert store.completion(other)["choices"][0]["text"] == "2"
    assert len(commits) < len(futures) / 4, f"{len(commits)} commits for {len(futures)} writes"


def test_export_pairs_filters_by_time_and_version(store):
    a = _completion(store, texts=("good", "bad"), version="v0")
    b = _completion(store, texts=("newer",), version="v1")
    store.record_feedback("choice", [(a, 0), (a, 1)])
    cut = store.feedback()[0]["created_at"]
    store.record_feedback("rating", [(a, 1)], rating=-1)
    store.record_feedback("rating", [(b, 0)], rating=1)  # same prompt: thumbs up v1 vs thumbs down v0
    pairs = store.export_pairs()
    assert sorted((p["source"], p["chosen"], p["rejected"]) for p in pairs) == [
        ("choice", "good", "bad"),
        ("thumbs", "newer", "bad"),
    ]
    thumbs = next(p for p in pairs if p["source"] == "thumbs")
    assert (thumbs["chosen_version"], thumbs["rejected_version"]) == ("v1", "v0")
    assert {"prompt", "chosen", "rejected", "policy_version", "user", "source", "created_at"} <= set(thumbs)
    assert [p["source"] for p in store.export_pairs(versions=["v0"])] == ["choice"]
    assert [p["source"] for p in store.export_pairs(since=cut + 1e-3)] == ["thumbs"]
    assert [p["source"] for p in store.export_pairs(until=cut + 1e-3)] == ["choice"]


def test_behaviour_logprobs_are_stored_and_exported_for_rated_answers(store):
    lp = {"token_ids": [5, 2], "logprobs": [-0.25, -1.5]}
    a = store.record_completion(prompt="p", texts=["A", "B"], version="v0", sampling={"temperature": 0.7},
                                logprobs=[lp, None])  # fmt: skip
    assert [c["logprobs"] for c in store.completion(a)["choices"]] == [lp, None]
    store.record_feedback("rating", [(a, 0)], rating=1)
    store.record_feedback("rating", [(a, 1)], rating=-1)
    (pair,) = store.export_pairs()
    assert pair["chosen_logprobs"] == {**lp, "temperature": 0.7} and "rejected_logprobs" not in pair


def test_a_v1_store_gains_the_logprobs_column(tmp_path):
    url = f"sqlite:///{tmp_path / 'v1.db'}"
    with sa.create_engine(url).begin() as conn:  # the v1 schema as v1 created it
        conn.exec_driver_sql("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.exec_driver_sql("INSERT INTO schema_version VALUES (1)")
        conn.exec_driver_sql("CREATE TABLE completions (id VARCHAR(64) PRIMARY KEY, created_at FLOAT NOT NULL, "
                             "kind VARCHAR(16) NOT NULL, prompt TEXT NOT NULL, messages TEXT, "
                             "version VARCHAR(64) NOT NULL, sampling TEXT NOT NULL, user VARCHAR(256))")  # fmt: skip
        conn.exec_driver_sql("CREATE TABLE choices (completion_id VARCHAR(64), idx INTEGER, text TEXT NOT NULL, "
                             "finish_reason VARCHAR(16) NOT NULL, PRIMARY KEY (completion_id, idx))")  # fmt: skip
        conn.exec_driver_sql("INSERT INTO completions VALUES ('old', 0, 'chat', 'p', NULL, 'v0', '{}', NULL)")
        conn.exec_driver_sql("INSERT INTO choices VALUES ('old', 0, 'hi', 'stop')")
    store = FeedbackStore(url)
    assert store.schema_version() == SCHEMA_VERSION >= 2  # later versions migrate on top
    assert store.completion("old")["choices"] == [
        {"index": 0, "text": "hi", "finish_reason": "stop", "logprobs": None}
    ]
    new = store.record_completion(prompt="p", texts=["x"], version="v0",
                                  logprobs=[{"token_ids": [1], "logprobs": [-0.5]}])  # fmt: skip
    assert store.completion(new)["choices"][0]["logprobs"]["logprobs"] == [-0.5]
    store.close()


def test_versions_and_deployed(store):
    assert store.deployed() is None
    store.record_version("v0", "/m/v0", meta={"source": "serve"})
    store.record_version("v1", "/m/v1", parent="v0", meta={"rm": "/rm/1", "window": [0, 10]})
    store.record_version("v1", "/m/v1", parent="v0")  # idempotent
    with pytest.raises(ValueError, match="already exists"):
        store.record_version("v1", "/elsewhere")
    store.set_deployed("v0")
    store.set_deployed("v1")
    assert store.deployed()["name"] == "v1"
    assert [v["name"] for v in store.versions()] == ["v0", "v1"]
    assert store.version("v1")["parent"] == "v0" and store.version("v1")["meta"]["rm"] == "/rm/1"
    with pytest.raises(NotFound):
        store.set_deployed("v9")


def test_state_table(store):
    assert store.get_state("online.round", 0) == 0
    store.set_state("online.round", {"round": 3, "stage": "rm"})
    store.set_state("online.round", {"round": 4, "stage": "collect"})
    assert store.get_state("online.round") == {"round": 4, "stage": "collect"}


def test_stats_thumbs_and_cross_version_wins(store):
    a = _completion(store, texts=("x", "y"), version="v0")
    b = _completion(store, texts=("z",), version="v1")
    store.record_feedback("rating", [(a, 0)], rating=1)
    store.record_feedback("rating", [(a, 1)], rating=-1)
    store.record_feedback("rating", [(b, 0)], rating=1)
    for _ in range(3):
        store.record_feedback("choice", [(b, 0), (a, 0)])
    store.record_feedback("choice", [(a, 0), (a, 1)])  # same version: not a version comparison
    stats = {v["version"]: v for v in store.stats()["versions"]}
    assert stats["v0"]["thumbs_up_rate"] == 0.5 and stats["v1"]["thumbs_up_rate"] == 1.0
    assert (stats["v1"]["wins"], stats["v0"]["losses"], stats["v1"]["win_rate"]) == (3, 3, 1.0)
    assert stats["v1"]["rating"] > stats["v0"]["rating"]
    lo, hi = stats["v1"]["rating_ci95"]
    assert lo < stats["v1"]["rating"] < hi


def test_an_open_read_does_not_block_writers(store):
    cid = _completion(store)
    with store._read() as conn:  # e.g. a long export
        conn.execute(sa.text("SELECT count(*) FROM feedback")).all()
        done = threading.Event()
        t = threading.Thread(
            target=lambda: (store.record_feedback("rating", [(cid, 0)], rating=1), done.set())
        )
        t.start()
        assert done.wait(10), "a write waited for a read transaction"
        t.join()
    assert store.count_feedback() == 1
