"""Serving throughput and latency (batched vs one-at-a-time generation) and feedback write rate.

    python benchmarks/serve.py [--model DIR] [--max-tokens 32] [--out benchmarks/results/serve.json]
    python benchmarks/serve.py --feedback-only     # just the feedback writers, printed

Two real `reasoner serve` processes on free localhost ports, on the same model, one after the other:
- one-at-a-time: ``serve.max_batch=1``, every request gets its own ``generate`` call (the baseline);
- batched: the default, requests arriving within ``serve.batch_window_ms`` share one call.
Each is driven by 1, 8 and 32 concurrent HTTP clients (keep-alive connections on one event loop in this
process, see ``Connection``) sending the same chat request
(temperature 1.0, ``--max-tokens`` tokens); requests/s over the whole level and p50/p99 latency per request,
from the median of ``--repeats`` runs (all runs' requests/s are kept).
Then 16 writers post thumbs ratings to ``/v1/feedback`` on the batched server's SQLite store
(WAL, synchronous=FULL): posts/s, the server's and this client's CPU milliseconds per post (steadier than
posts/s on a shared machine), and the count of stored rows must equal the count of 201s (zero lost).
Last, one long greedy chat request (``--stream-tokens``) streamed: when its first and last text arrive, against
the same request answered whole. The 1-minute load average at the start and the end goes into the results.
Targets: batched throughput at 32 clients >= 4x one-at-a-time; >= 500 feedback posts/s.

    python benchmarks/serve.py --seeded-only [--out benchmarks/results/serve_seeded.json]

Seeded traffic (issue 32: the batch key held the seed, so such requests never shared a decode), on the batched
server: 1 and 32 clients, each request with a seed of its own (the one client sends as many requests as the 32
together, whose answers end at different lengths); then 32 clients that also differ in ``n``
(1 or 2), temperature, top_p and ``max_tokens``. Target: 32 seeded clients >= 4x one seeded client's requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

try:
    import uvloop
except ImportError:  # uvicorn[standard] brings it; plain asyncio works too
    uvloop = None

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reasoner.serve.store import FeedbackStore  # noqa: E402

KEY = "bench"
CHAT = [{"role": "user", "content": "Ann has 12 apples, gets 7, loses 3. How many now?"}]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: str, db: Path, overrides: list[str], log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "reasoner", "serve", "--model", model, "--db", str(db), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([*cmd, "--api-key", KEY, *overrides], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"reasoner serve exited with {proc.returncode} (log: {log.name})")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("reasoner serve did not start within 180 s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams, speaking just enough HTTP for these requests.

    All clients run as coroutines on one event loop (uvloop when installed): about a third of the client CPU per
    request that 16 threads on ``http.client`` took (measured 0.03 vs 0.15 ms a post), so the benchmark
    measures the server rather than itself (client and server share the machine's cores). Its CPU per request
    is reported next to the server's.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer, f"{host}:{port}")

    async def post(self, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode()
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}", f"Authorization: Bearer {KEY}"]
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
        return int(head[9:12]), json.loads(await self.reader.readexactly(length))

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def run_clients(client, count: int) -> tuple[float, float]:
    """Run ``count`` copies of the coroutine function ``client(i)`` at once on a fresh event loop; the wall
    time until the last one ends and this process's CPU seconds meanwhile."""

    async def all_of_them():
        await asyncio.gather(*(client(i) for i in range(count)))

    cpu0, t0 = time.process_time(), time.perf_counter()
    (uvloop.run if uvloop is not None else asyncio.run)(all_of_them())
    return time.perf_counter() - t0, time.process_time() - cpu0


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(url: str, clients: int, requests: int, body: dict | Callable[[int], dict]) -> dict:
    """``requests`` chat requests from ``clients`` concurrent connections; throughput and latency. ``body``
    may be a function ``body(client, request)`` (a client's own seeds, its own settings)."""
    latencies: list[float] = []
    errors: list[str] = []
    tokens = [0]
    todo = iter(range(requests))

    async def client(i):
        conn = await Connection.open(url)
        for k in iter(lambda: next(todo, None), None):
            t0 = time.perf_counter()
            status, data = await conn.post("/v1/chat/completions", body(i, k) if callable(body) else body)
            (latencies.append(time.perf_counter() - t0) if status == 200 else errors.append(str(data)[:200]))
            tokens[0] += data["usage"]["completion_tokens"] if status == 200 else 0
        await conn.close()

    wall, _ = run_clients(client, clients)
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return {
        "clients": clients,
        "requests": requests,
        "req_per_s": round(requests / wall, 2),
        "completion_tokens_per_s": round(tokens[0] / wall, 1),
        "p50_s": round(percentile(latencies, 0.5), 4),
        "p99_s": round(percentile(latencies, 0.99), 4),
        "wall_s": round(wall, 2),
    }


def feedback_writers(url: str, db: Path, writers: int, posts: int, server_pid: int) -> dict:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        cid = c.post("/v1/chat/completions", json={"messages": CHAT, "n": 2, "max_tokens": 4}).json()["id"]
    before = FeedbackStore(str(db)).count_feedback()
    run = uuid.uuid4().hex[:8]  # fresh Idempotency-Keys per run: a reused key with another body is a 409
    acked: list[str] = []
    failed: list[str] = []

    async def writer(w):
        conn = await Connection.open(url)
        for i in range(posts):
            body = {
                "response": {"completion_id": cid, "choice": i % 2},
                "rating": 1 if i % 3 else -1,
                "user": f"w{w}",
            }
            status, data = await conn.post("/v1/feedback", body, {"Idempotency-Key": f"bench-{run}-{w}-{i}"})
            (acked.append(data["id"]) if status == 201 else failed.append(str(data)[:200]))
        await conn.close()

    server_cpu0 = process_cpu_s(server_pid)
    wall, client_cpu = run_clients(writer, writers)
    server_cpu = process_cpu_s(server_pid) - server_cpu0
    stored = FeedbackStore(str(db)).count_feedback() - before
    return {
        "writers": writers,
        "posts": writers * posts,
        "acknowledged": len(acked),
        "failed": len(failed),
        "stored": stored,
        "lost": len(acked) - stored,
        "posts_per_s": round(len(acked) / wall, 1),
        "wall_s": round(wall, 2),
        "server_cpu_ms_per_post": round(1000 * server_cpu / (writers * posts), 3),
        "client_cpu_ms_per_post": round(1000 * client_cpu / (writers * posts), 3),
    }


def streaming(url: str, max_tokens: int) -> dict:
    """One long greedy chat request streamed: when its first and last pieces of text arrive, against the same
    request answered whole (token by token, the first piece comes after one decoding step, not all of them)."""
    body = {"model": "reasoner", "messages": CHAT, "max_tokens": max_tokens, "temperature": 0.0}
    headers = {"Authorization": f"Bearer {KEY}"}
    t0 = time.perf_counter()
    whole = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=300).json()
    whole_s = time.perf_counter() - t0
    arrivals, text = [], ""
    t0 = time.perf_counter()
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={**body, "stream": True}, headers=headers, timeout=300
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                piece = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if piece:
                    arrivals.append(time.perf_counter() - t0)
                    text += piece
    return {
        "max_tokens": max_tokens,
        "whole_answer_s": round(whole_s, 3),
        "stream_first_text_s": round(arrivals[0], 3),
        "stream_last_text_s": round(arrivals[-1], 3),
        "text_chunks": len(arrivals),
        "same_text_as_whole": text == whole["choices"][0]["message"]["content"],
    }


def seeded(url: str, body: dict, clients: int, per_client: int, repeats: int) -> dict:
    """Seeded traffic on the batched server: one client, ``clients`` clients each with its own seed, and
    ``clients`` clients that also differ in n, temperature, top_p and max_tokens (the median of ``repeats``)."""

    def own_seed(i: int, k: int) -> dict:  # client i's request k: a seed no other request uses
        return {**body, "seed": 100_000 * (i + 1) + k}

    def own_settings(i: int, k: int) -> dict:
        return {**own_seed(i, k), "n": 1 + i % 2, "temperature": [1.0, 0.7, 0.9][i % 3],
                "top_p": [1.0, 0.9][i % 2], "max_tokens": max(1, body["max_tokens"] - 4 * (i % 4))}  # fmt: skip

    out: dict = {}
    for name, count, make in [("one_client", 1, own_seed), ("own_seeds", clients, own_seed),
                              ("own_seeds_and_settings", clients, own_settings)]:  # fmt: skip
        # one client sends as many requests as the 32 together: answers end at EOS at different lengths
        runs = [drive(url, count, clients * per_client, make) for _ in range(repeats)]
        row = sorted(runs, key=lambda r: r["req_per_s"])[len(runs) // 2]
        row["runs_req_per_s"] = [r["req_per_s"] for r in runs]
        out[name] = row
        print(json.dumps({"seeded": name, **row}), flush=True)
    one = out["one_client"]["req_per_s"]
    out["speedup_own_seeds"] = round(out["own_seeds"]["req_per_s"] / one, 2)
    out["speedup_own_seeds_and_settings"] = round(out["own_seeds_and_settings"]["req_per_s"] / one, 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="policy directory (default: build the tiny model in a temp dir)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="runs per level; the median is reported")
    ap.add_argument("--writers", type=int, default=16)
    ap.add_argument("--posts-per-writer", type=int, default=100)
    ap.add_argument("--stream-tokens", type=int, default=200, help="max_tokens of the streamed request")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each server (serve.cpu_threads)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    ap.add_argument(
        "--feedback-only", action="store_true", help="only the feedback writers, printed (no results file)"
    )
    ap.add_argument(
        "--seeded-only", action="store_true", help="only the seeded-traffic measurement (batched server)"
    )
    args = ap.parse_args()
    if args.seeded_only and args.out == ap.get_default("out"):
        args.out = str(ROOT / "benchmarks" / "results" / "serve_seeded.json")
    tmp = Path(tempfile.mkdtemp(prefix="reasoner-bench-serve-"))
    model = args.model
    if model is None:
        from reasoner.models import build_tiny_model

        model = str(build_tiny_model(tmp / "tiny-model"))
    levels = [int(x) for x in args.levels.split(",")]
    top_clients = levels[-1]
    body = {"model": "reasoner", "messages": CHAT, "max_tokens": args.max_tokens, "temperature": 1.0}
    common = [
        f"serve.cpu_threads={args.threads}",
        f"serve.max_tokens_cap={max(256, args.max_tokens, args.stream_tokens)}",
    ]
    result: dict = {
        "model": model,
        "max_tokens": args.max_tokens,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch_threads_per_server": args.threads,
        "load_average_1m_at_start": round(
            os.getloadavg()[0], 2
        ),  # the machine is shared: say how busy it was
    }
    with open(tmp / "serve.log", "w") as log:
        servers = [("one_at_a_time", ["serve.max_batch=1"]), ("batched", [])]
        if args.seeded_only:
            return seeded_only(model, tmp, common, log, body, levels[-1], args, result)
        for name, extra in servers[1:] if args.feedback_only else servers:
            proc, url = start(model, tmp / f"{name}.db", common + extra, log)
            try:
                drive(url, 2, 4, body)  # warm-up
                result[name] = []
                for clients in [] if args.feedback_only else levels:
                    # the median of a few runs: other jobs on a shared machine make single runs noisy
                    runs = [
                        drive(url, clients, clients * args.requests_per_client, body)
                        for _ in range(args.repeats)
                    ]
                    row = sorted(runs, key=lambda r: r["req_per_s"])[len(runs) // 2]
                    row["runs_req_per_s"] = [r["req_per_s"] for r in runs]
                    result[name].append(row)
                    print(json.dumps({"server": name, **row}), flush=True)
                if name == "batched":
                    runs = [
                        feedback_writers(
                            url, tmp / f"{name}.db", args.writers, args.posts_per_writer, proc.pid
                        )
                        for _ in range(args.repeats)
                    ]
                    result["feedback"] = sorted(runs, key=lambda r: r["posts_per_s"])[len(runs) // 2]
                    result["feedback"]["runs_posts_per_s"] = [r["posts_per_s"] for r in runs]
                    result["feedback"]["lost_in_any_run"] = sum(r["lost"] + r["failed"] for r in runs)
                    print(json.dumps({"feedback": result["feedback"]}), flush=True)
                if name == "batched" and not args.feedback_only:
                    result["seeded"] = seeded(url, body, top_clients, args.requests_per_client, args.repeats)
                    runs = [streaming(url, args.stream_tokens) for _ in range(args.repeats)]
                    result["streaming"] = sorted(runs, key=lambda r: r["stream_first_text_s"])[len(runs) // 2]
                    print(json.dumps({"streaming": result["streaming"]}), flush=True)
            finally:
                stop(proc)
    result["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    if args.feedback_only:
        return 0 if result["feedback"]["lost_in_any_run"] == 0 else 1
    top = levels[-1]
    base = next(r for r in result["one_at_a_time"] if r["clients"] == top)["req_per_s"]
    batched = next(r for r in result["batched"] if r["clients"] == top)["req_per_s"]
    fb = result["feedback"]
    result["speedup_at_max_clients"] = round(batched / base, 2)
    # the stricter comparison: against one-at-a-time at whichever concurrency served it best
    best = max(r["req_per_s"] for r in result["one_at_a_time"])
    result["speedup_vs_best_one_at_a_time"] = round(batched / best, 2)
    result["targets"] = {
        f"batched_vs_one_at_a_time_at_{top}_clients>=4": result["speedup_at_max_clients"] >= 4,
        f"seeded_{top}_clients_vs_one>=4": result["seeded"]["speedup_own_seeds"] >= 4,
        "feedback_posts_per_s>=500": fb["posts_per_s"] >= 500,
        "feedback_zero_lost": fb["lost_in_any_run"] == 0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                "speedup": result["speedup_at_max_clients"],
                "speedup_vs_best_one_at_a_time": result["speedup_vs_best_one_at_a_time"],
                "feedback_posts_per_s": fb["posts_per_s"],
                "lost": fb["lost_in_any_run"],
                "targets": result["targets"],
                "out": args.out,
            }
        )
    )
    return 0 if fb["lost_in_any_run"] == 0 else 1


def seeded_only(model: str, tmp: Path, common: list[str], log, body: dict, clients: int, args, result) -> int:
    proc, url = start(model, tmp / "seeded.db", common, log)
    try:
        drive(url, 2, 4, body)  # warm-up
        result["seeded"] = seeded(url, body, clients, args.requests_per_client, args.repeats)
    finally:
        stop(proc)
    result["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    result["targets"] = {f"seeded_{clients}_clients_vs_one>=4": result["seeded"]["speedup_own_seeds"] >= 4}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"seeded": {k: v for k, v in result["seeded"].items() if k.startswith("speedup")},
                      "targets": result["targets"], "out": args.out}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
