"""kill -9 of a real `reasoner serve` process while clients post feedback: every acknowledged row survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from reasoner.serve.store import FeedbackStore
from tests.serve.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def _start(model_dir, db, port, log):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "reasoner",
        "serve",
        "--model",
        str(model_dir),
        "--db",
        str(db),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen([*cmd, "--api-key", "k", "serve.cpu_threads=1"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"reasoner serve exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("reasoner serve did not answer /health within 120 s")


@pytest.mark.slow
def test_kill_9_while_posting_loses_no_acknowledged_row(tiny_model_dir, tmp_path):
    db, port = tmp_path / "feedback.db", free_port()
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer k"}
    with open(tmp_path / "serve.log", "w") as log:
        proc = _start(tiny_model_dir, db, port, log)
        try:
            r = httpx.post(
                url + "/v1/chat/completions",
                json={
                    "model": "reasoner",
                    "messages": [{"role": "user", "content": "hi"}],
                    "n": 2,
                    "max_tokens": 4,
                },
                headers=auth,
                timeout=60,
            )
            cid = r.json()["id"]
            acked: list[str] = []
            stop = threading.Event()

            def client(w):
                with httpx.Client(base_url=url, headers=auth, timeout=10) as c:
                    i = 0
                    while not stop.is_set():
                        body = {
                            "response": {"completion_id": cid, "choice": i % 2},
                            "rating": 1,
                            "user": f"u{w}",
                        }
                        try:
                            r = c.post("/v1/feedback", json=body, headers={"Idempotency-Key": f"{w}-{i}"})
                        except httpx.HTTPError:
                            return  # the server died: this post was never acknowledged
                        if r.status_code == 201:
                            acked.append(r.json()["id"])
                        i += 1

            threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while len(acked) < 150 and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)  # mid-stream: clients are still posting
            proc.wait()
            stop.set()
            for t in threads:
                t.join()
        finally:
            if proc.poll() is None:
                proc.kill()
        assert len(acked) >= 150, Path(log.name).read_text()[-2000:]

        proc = _start(tiny_model_dir, db, port, log)  # restart on the same SQLite file
        try:
            store = FeedbackStore(str(db))
            stored = {row["id"] for row in store.feedback()}
            assert set(acked) <= stored, f"{len(set(acked) - stored)} acknowledged rows lost"
            assert (
                httpx.get(url + "/health").json()["version"] == "v0"
            )  # same model: same version after restart
            r = httpx.post(
                url + "/v1/feedback", json={"response": {"completion_id": cid}, "rating": -1}, headers=auth
            )
            assert r.status_code == 201
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
