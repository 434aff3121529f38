"""The server over real HTTP (uvicorn on a free localhost port): the official openai client, feedback, auth,
bad input, idempotency, batching, hot swap."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.serve.conftest import ADMIN_KEY, API_KEY, start_server

CHAT = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=server[1].url + "/v1", api_key=API_KEY, max_retries=0)


def test_openai_client_chat(server, oai):
    svc, _ = server
    r = oai.chat.completions.create(
        model="reasoner", messages=CHAT, n=2, max_tokens=12, temperature=0.8, seed=3
    )
    assert r.model == "v0" and len(r.choices) == 2
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    assert r.usage.prompt_tokens == len("user: What is 2 + 2?\nassistant:")
    stored = svc.store.completion(r.id)
    assert stored["prompt"] == "user: What is 2 + 2?\nassistant:" and stored["version"] == "v0"
    assert [c["text"] for c in stored["choices"]] == [c.message.content for c in r.choices]
    assert stored["sampling"]["temperature"] == 0.8 and stored["messages"] == CHAT
    again = oai.chat.completions.create(
        model="reasoner", messages=CHAT, n=2, max_tokens=12, temperature=0.8, seed=3
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]  # seeded


def test_openai_client_streaming(server, oai):
    svc, _ = server
    stream = oai.chat.completions.create(model="reasoner", messages=CHAT, max_tokens=20, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert {c.model for c in chunks} == {"v0"}
    assert svc.store.completion(chunks[0].id)["choices"][0]["text"] == text


def test_openai_client_text_completions_with_stop_and_max_tokens(server, oai):
    r = oai.completions.create(model="v0", prompt="12 + 7 = ", max_tokens=5, temperature=0.0)
    assert r.model == "v0" and r.usage.completion_tokens <= 5 and len(r.choices[0].text) <= 5
    first = r.choices[0].text[:2]
    if first:  # cut at a stop string the greedy answer is known to contain
        cut = oai.completions.create(
            model="reasoner", prompt="12 + 7 = ", max_tokens=5, temperature=0.0, stop=[first[-1]]
        )
        assert cut.choices[0].text == r.choices[0].text[: r.choices[0].text.index(first[-1])]
        assert cut.choices[0].finish_reason == "stop"
    stream = oai.completions.create(
        model="reasoner", prompt="12 + 7 = ", max_tokens=5, temperature=0.0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == r.choices[0].text


def test_models_lists_the_stable_name_and_the_version(oai):
    models = {m.id: m for m in oai.models.list()}
    assert set(models) == {"reasoner", "v0"}
    with pytest.raises(openai.NotFoundError, match="gpt-4"):
        oai.chat.completions.create(model="gpt-4", messages=CHAT)


def test_api_key(server):
    _, h = server
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        for method, path in (
            ("GET", "/v1/models"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/completions"),
            ("POST", "/v1/feedback"),
            ("GET", "/v1/stats"),
            ("GET", "/v1/no-such-route"),
        ):
            r = httpx.request(method, h.url + path, headers=headers, json={})
            assert r.status_code == 401, (headers, path)
            assert r.json()["error"]["param"] == "Authorization"
    bad = openai.OpenAI(base_url=h.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(h.url + "/health").json() == {"status": "ok", "version": "v0", "model": "reasoner"}
    page = httpx.get(h.url + "/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert "default-src 'self'" in page.headers["content-security-policy"]


def _chat(client, n=2):
    r = client.post(
        "/v1/chat/completions", json={"model": "reasoner", "messages": CHAT, "n": n, "max_tokens": 8}
    )
    assert r.status_code == 200, r.text
    return r.json()["id"]


def test_every_feedback_kind(server, client):
    svc, _ = server
    cid = _chat(client, n=3)
    before = svc.store.count_feedback()
    bodies = [
        {
            "response": {"completion_id": cid},
            "rating": 1,
            "reason": "correct",
            "comment": "nice",
            "user": "ann",
        },
        {"response": {"completion_id": cid, "choice": 2}, "rating": -1, "reason": "wrong"},
        {"chosen": {"completion_id": cid, "choice": 1}, "rejected": {"completion_id": cid, "choice": 2}},
        {"responses": [{"completion_id": cid}, {"completion_id": cid, "choice": 1}], "tie": True},
        {
            "responses": [{"completion_id": cid}, {"completion_id": cid, "choice": 1}],
            "tie": True,
            "both_bad": True,
        },
        {"ranking": [{"completion_id": cid, "choice": i} for i in (1, 0, 2)], "user": "bob"},
    ]
    ids = []
    for body in bodies:
        r = client.post("/v1/feedback", json=body)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    rows = {row["id"]: row for row in svc.store.feedback()}
    assert [rows[i]["kind"] for i in ids] == ["rating", "rating", "choice", "tie", "tie", "ranking"]
    assert rows[ids[0]]["user"] == "ann" and rows[ids[0]]["comment"] == "nice"
    assert rows[ids[4]]["both_bad"] is True
    assert [r["choice"] for r in rows[ids[5]]["responses"]] == [1, 0, 2]
    assert svc.store.count_feedback() == before + len(bodies)
    stats = client.get("/v1/stats").json()
    assert stats["deployed"] == "v0" and stats["versions"][0]["up"] >= 1


# (body, status, param the error names)
BAD_FEEDBACK = [
    ({"response": {"completion_id": "CID"}, "rating": "yes"}, 422, "rating"),
    ({"response": {"completion_id": "CID"}, "rating": 5}, 422, "rating"),
    ({"response": {"completion_id": "CID", "choice": "first"}, "rating": 1}, 422, "response.choice"),
    ({"response": {"completion_id": "CID", "choice": -1}, "rating": 1}, 422, "response.choice"),
    ({"response": {"completion_id": "CID"}, "rating": 1, "comment": "x" * 20_000}, 422, "comment"),
    ({"response": {"completion_id": "CID"}, "rating": 1, "extra": 1}, 422, "extra"),
    ({"response": "CID", "rating": 1}, 422, "response"),
    ({"rating": 1}, 422, "response"),
    ({"chosen": {"completion_id": "CID"}}, 422, "rejected"),
    ({"chosen": {"completion_id": "CID"}, "rejected": {"completion_id": "CID"}}, 422, "rejected"),
    ({"responses": [{"completion_id": "CID"}], "tie": True}, 422, "responses"),
    ({"ranking": [{"completion_id": "CID"}]}, 422, "ranking"),
    ({"hello": "world"}, 422, "body"),
    ([1, 2], 422, "body"),
    ({"response": {"completion_id": "no-such-id"}, "rating": 1}, 404, "response"),
    ({"response": {"completion_id": "CID", "choice": 9}, "rating": 1}, 404, "response"),
    ({"response": {"completion_id": "' OR '1'='1"}, "rating": 1}, 404, "response"),
    ({"response": {"completion_id": "x'); DROP TABLE feedback; --"}, "rating": 1}, 404, "response"),
    ({"chosen": {"completion_id": "CID"}, "rejected": {"completion_id": "no-such-id"}}, 404, "rejected"),
]


def _fill(body, cid):
    return json.loads(json.dumps(body).replace('"CID"', json.dumps(cid)))


def test_bad_feedback_names_the_field_and_loses_nothing(server, client):
    svc, h = server
    cid = _chat(client)
    before = svc.store.count_feedback()
    for body, status, param in BAD_FEEDBACK:
        r = client.post("/v1/feedback", json=_fill(body, cid))
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["param"] == param, (body, r.json())
    assert svc.store.count_feedback() == before
    assert httpx.get(h.url + "/health").status_code == 200


def test_malformed_json_huge_bodies_and_bad_requests(server, client):
    svc, _ = server
    r = client.post("/v1/feedback", content=b'{"rating": 1,', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "body"
    huge = {"response": {"completion_id": "x"}, "rating": 1, "comment": "x" * 5_000_000}
    assert client.post("/v1/feedback", json=huge).status_code == 413

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(50):
            yield b"x" * 100_000

    assert client.post("/v1/feedback", content=chunks()).status_code == 413
    cases = [
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 422, "messages.0.role"),
        ({"messages": CHAT, "temperature": -1}, 422, "temperature"),
        ({"messages": CHAT, "temperature": "hot"}, 422, "temperature"),
        ({"messages": CHAT, "max_tokens": 10_000}, 422, "max_tokens"),
        ({"messages": CHAT, "n": 100}, 422, "n"),
        ({"messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
        ({"messages": [{"role": "user", "content": "x" * 450}], "max_tokens": 100}, 400, "messages"),
        ({"messages": CHAT, "model": "nope"}, 404, "model"),
    ]
    for body, status, param in cases:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["param"] == param, (body, r.json())
    assert client.get("/health").status_code == 200


def test_idempotent_retries(server, client):
    svc, _ = server
    cid = _chat(client)
    body = {"response": {"completion_id": cid}, "rating": 1}
    before = svc.store.count_feedback()
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda _: client.post("/v1/feedback", json=body, headers={"Idempotency-Key": "retry-1"}),
                range(6),
            )
        )
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["id"] for a in answers}) == 1
    assert svc.store.count_feedback() == before + 1
    other = client.post("/v1/feedback", json={**body, "rating": -1}, headers={"Idempotency-Key": "retry-1"})
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    long = client.post("/v1/feedback", json=body, headers={"Idempotency-Key": "k" * 257})
    assert long.status_code == 422 and long.json()["error"]["param"] == "Idempotency-Key"
    assert svc.store.count_feedback() == before + 1


def test_concurrent_requests_share_generate_calls(server, client):
    svc, _ = server
    calls = svc.batcher.calls
    body = {"model": "reasoner", "messages": CHAT, "max_tokens": 16}
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/chat/completions", json=body), range(16)))
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["id"] for a in answers}) == 16
    assert svc.batcher.calls - calls < 16 / 2  # grouped, not one generate call per request


def test_hot_swap_keeps_requests_in_flight(tiny_model_dir, tmp_path):
    from reasoner.models import build_tiny_model

    other = build_tiny_model(tmp_path / "v1", seed=1)
    svc, h = start_server(tiny_model_dir, tmp_path / "fb.db")
    try:
        c = httpx.Client(base_url=h.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert c.post("/admin/deploy", json={"path": str(other)}).status_code == 401
        assert (
            c.post("/admin/deploy", json={"path": str(tmp_path / "missing")}, headers=admin).status_code
            == 400
        )
        body = {"model": "reasoner", "messages": CHAT, "max_tokens": 200, "n": 4}
        results, started = [], threading.Event()

        def slow():
            started.set()
            results.append(c.post("/v1/chat/completions", json=body))

        threads = [threading.Thread(target=slow) for _ in range(3)]
        for t in threads:
            t.start()
        started.wait()
        r = c.post("/admin/deploy", json={"path": str(other)}, headers=admin)
        assert r.status_code == 200 and r.json() == {"version": "v1", "previous": "v0"}
        for t in threads:
            t.join()
        assert [a.status_code for a in results] == [200, 200, 200]
        assert {a.json()["model"] for a in results} <= {"v0", "v1"}
        after = c.post("/v1/chat/completions", json={**body, "max_tokens": 4})
        assert after.json()["model"] == "v1"
        assert {m["id"]: m["root"] for m in c.get("/v1/models").json()["data"]} == {
            "reasoner": "v1",
            "v1": "v1",
        }
        assert svc.store.deployed()["name"] == "v1" and svc.store.version("v1")["parent"] == "v0"
        assert svc.deploy(str(tiny_model_dir), "v2") == "v2"  # the programmatic swap
        assert c.get("/health").json()["version"] == "v2"
    finally:
        h.stop()


def test_the_page_never_writes_html_from_data():
    from reasoner.serve.app import STATIC

    js = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, f"app.js uses {sink}: model output and user text must go through textContent"
    html = (STATIC / "index.html").read_text()
    assert "<script>" not in html and "http://" not in html and "https://" not in html  # no inline JS, no CDN
