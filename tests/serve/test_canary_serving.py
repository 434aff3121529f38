"""A canary on a real server: a fraction of the requests to the stable name answered by the candidate (the
``model`` field names it), promotion, and rollbacks by hand over the admin routes, each recorded."""

from __future__ import annotations

import httpx

from tests.serve.conftest import ADMIN_KEY, API_KEY, start_server

CHAT = [{"role": "user", "content": "hi"}]


def test_canary_serves_its_share_and_rolls_back_by_hand(tiny_model_dir, tmp_path):
    from reasoner.models import build_tiny_model

    other = build_tiny_model(tmp_path / "cand", seed=1)
    svc, h = start_server(tiny_model_dir, tmp_path / "fb.db")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        c = httpx.Client(base_url=h.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
        assert svc.start_canary(str(other), "v1", 0.5) == "v1"
        assert svc.store.version("v1")["parent"] == "v0" and svc.store.deployed()["name"] == "v0"
        assert c.get("/admin/canary", headers=admin).json() == {"deployed": "v0", "canary": "v1", "frac": 0.5}
        body = {"model": "reasoner", "messages": CHAT, "max_tokens": 2}
        models = [c.post("/v1/chat/completions", json=body).json()["model"] for _ in range(40)]
        assert 8 <= models.count("v1") <= 32 and set(models) == {"v0", "v1"}  # about half each
        assert c.get("/v1/models").json()["data"][0]["root"] == "v0"  # the stable name still means v0
        r = c.post("/admin/rollback", json={"version": "v1"}, headers=admin)
        assert r.status_code == 200 and r.json() == {"version": "v0", "previous": "v1"}
        assert {c.post("/v1/chat/completions", json=body).json()["model"] for _ in range(10)} == {"v0"}
        assert c.post("/admin/rollback", json={"version": "v1"}, headers=admin).status_code == 409
        # a promoted canary is the deployed version; rolling it back by hand serves its parent again
        svc.start_canary(str(other), "v2", 0.2)
        assert svc.end_canary(promote=True) == "v2" and svc.store.deployed()["name"] == "v2"
        assert c.post("/v1/chat/completions", json=body).json()["model"] == "v2"
        assert c.post("/admin/rollback", json={"version": "v2"}, headers=admin).json()["version"] == "v0"
        assert c.post("/v1/chat/completions", json=body).json()["model"] == "v0"
        assert [(d["version"], d["against"], d["by"]) for d in svc.store.decisions()] == [
            ("v1", "v0", "hand"),
            ("v2", "v0", "hand"),
        ]
    finally:
        h.stop()
