"""Simulated users for the offline online loop: they use the running server over HTTP, as people would.

Each user asks a prompt, preferring one nobody has asked yet but repeating one as people do once fresh ones
get hard to find (``FRESH_TRIES`` draws), so a long run never runs out. With ``feedback="mixed"`` (the default)
it asks for two answers (``POST /v1/chat/completions`` with ``n=2``, the side-by-side view), picks the one it
prefers (``{"chosen", "rejected"}``, or a tie when it cannot tell, marked ``both_bad`` when neither is good)
and gives a thumb to the first answer (``{"response", "rating"}``); with ``feedback="thumbs"`` it asks for one
answer and gives it a thumb only, as most chat users do. What it prefers is a hidden rule (a
``gold_score(rule, prompt, response)`` in [0, 1] from the preference task): a user likes an answer when its
gold score is at least 0.5 and prefers the higher-scoring one; each user goes against that with its own
probability (``user_noise`` +- ``user_noise_spread``). The population's rule is set from outside
(``set_rule``): the loop's driver switches it at the shift point. The learner never sees it; it only sees
the feedback.

Nothing acknowledged is lost on kill -9: before each feedback post the user appends the body and an
``Idempotency-Key`` to a journal; after the server's 201 it appends the acknowledgement. A restarted
population first re-posts every journalled post that has no acknowledgement, with the same key, so the
server counts it once. The number of acknowledgements therefore equals the server's feedback rows.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

GoldFn = Callable[[str, str, str], float]  # (rule, prompt, response) -> gold score in [0, 1]
FEEDBACK_MODES = ("mixed", "thumbs")
FRESH_TRIES = 50  # draws for a prompt nobody asked before; after that a user repeats one


@dataclass
class User:
    name: str
    noise: float  # probability that a thumb or a choice goes against the user's preference


def make_users(count: int, noise: float, spread: float, seed: int) -> list[User]:
    """``count`` users with noise levels drawn uniformly from noise +- spread (clipped to [0, 0.5]).

    >>> [u.name for u in make_users(3, 0.1, 0.05, seed=0)]
    ['user-0', 'user-1', 'user-2']
    """
    rng = random.Random(f"users-{seed}")
    return [User(f"user-{i}", min(0.5, max(0.0, noise + rng.uniform(-spread, spread)))) for i in range(count)]


def judge(gold: tuple[float, float], noise: float, rng: random.Random) -> tuple[int | None, int]:
    """The user's side-by-side choice (index of the preferred answer, None = tie) and thumb on answer 0.

    >>> judge((1.0, 0.0), 0.0, random.Random(0))
    (0, 1)
    >>> judge((0.2, 0.2), 0.0, random.Random(0))
    (None, -1)
    """
    g0, g1 = gold
    choice = None if abs(g0 - g1) < 1e-9 else (0 if g0 > g1 else 1)
    if choice is not None and rng.random() < noise:
        choice = 1 - choice
    return choice, thumb_of(g0, noise, rng)


def thumb_of(gold: float, noise: float, rng: random.Random) -> int:
    """Up (1) when the gold score is at least 0.5, else down (-1); flipped with probability ``noise``.

    >>> thumb_of(0.5, 0.0, random.Random(0)), thumb_of(0.0, 0.0, random.Random(0))
    (1, -1)
    """
    thumb = 1 if gold >= 0.5 else -1
    return -thumb if rng.random() < noise else thumb


class Journal:
    """Append-only JSON lines of asks, feedback intents and acknowledgements; survives kill -9."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.asked: set[str] = set()
        self.pending: dict[str, dict] = {}  # idempotency key -> intent without an acknowledgement
        self.acks = 0
        for line in self.path.read_text().splitlines() if self.path.exists() else []:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # the torn last line of a killed writer
                continue
            self._apply(rec)
        self.file = self.path.open("a")
        if self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
            self.file.write("\n")  # end the torn line a kill left, so the next record starts clean

    def _apply(self, rec: dict) -> None:
        if rec["kind"] == "ask":
            self.asked.add(rec["prompt"])
        elif rec["kind"] == "intent":
            self.pending[rec["key"]] = rec
        elif rec["kind"] == "ack":
            self.pending.pop(rec["key"], None)
            self.acks += 1

    def write(self, rec: dict) -> None:
        with self.lock:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
            self._apply(rec)

    def close(self) -> None:
        self.file.close()


class Population:
    """``users`` threads that talk to the server at ``url`` while ``run`` is active."""

    def __init__(
        self,
        url: str,
        users: list[User],
        gold: GoldFn,
        prompts: Callable[[random.Random], str],
        journal: Path,
        rule: str,
        *,
        model: str | None = None,
        max_tokens: int = 48,
        seed: int = 0,
        api_key: str | None = None,
        feedback: str = "mixed",
    ):
        if feedback not in FEEDBACK_MODES:
            raise ValueError(f"unknown feedback mode {feedback!r}; valid: {', '.join(FEEDBACK_MODES)}")
        self.feedback = feedback
        self.url, self.users, self.gold, self.prompts = url.rstrip("/"), users, gold, prompts
        self.rule, self.model, self.max_tokens, self.seed = rule, model, max_tokens, seed
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.journal = Journal(journal)
        self.stats = {"asks": 0, "pairs": 0, "ties": 0, "thumbs": 0, "repeats": 0, "timeouts": 0}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def set_rule(self, rule: str) -> None:
        self.rule = rule

    def replay_pending(self) -> int:
        """Re-post feedback journalled before a kill but never acknowledged (same Idempotency-Key)."""
        with httpx.Client(timeout=60, headers=self.headers) as client:
            pending = list(self.journal.pending.values())
            for rec in pending:
                self._post(client, rec["body"], rec["key"], rec.get("version"))
        return len(pending)

    def start(self) -> None:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._user_loop, args=(u, i), name=u.name, daemon=True)
            for i, u in enumerate(self.users)
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self._threads = []
        if self.errors:
            raise RuntimeError(f"a simulated user failed: {self.errors[0]!r}") from self.errors[0]

    def close(self) -> None:
        self.journal.close()

    def _user_loop(self, user: User, index: int) -> None:
        # A fresh random stream per start (restart count in the seed), so a resumed run asks new prompts.
        rng = random.Random(f"{self.seed}-{user.name}-{time.time_ns()}")
        try:
            with httpx.Client(timeout=120, headers=self.headers) as client:
                while not self._stop.is_set():
                    self._interact(client, user, rng)
        except BaseException as e:  # surfaced by stop(); a user thread must not die silently
            self.errors.append(e)
            self._stop.set()

    def _next_prompt(self, rng: random.Random) -> str:
        """A prompt nobody asked yet if one turns up in ``FRESH_TRIES`` draws, else the last draw (a repeat)."""
        for _ in range(FRESH_TRIES):
            prompt = self.prompts(rng)
            with self.journal.lock:
                if prompt not in self.journal.asked:
                    self.journal.asked.add(prompt)  # reserve it before another user draws it
                    return prompt
        self.stats["repeats"] += 1
        return prompt

    def _interact(self, client: httpx.Client, user: User, rng: random.Random) -> None:
        prompt = self._next_prompt(rng)
        self.journal.write({"kind": "ask", "user": user.name, "prompt": prompt})
        n = 2 if self.feedback == "mixed" else 1
        body = {"messages": [{"role": "user", "content": prompt}], "n": n, "temperature": 1.0,
                "max_tokens": self.max_tokens}  # fmt: skip
        if self.model:
            body["model"] = self.model
        try:
            r = client.post(f"{self.url}/v1/chat/completions", json=body)
        except httpx.TimeoutException:
            self.stats["timeouts"] += (
                1  # a busy server (training beside it): the user gives up and asks again
            )
            return
        r.raise_for_status()
        reply = r.json()
        texts = [c["message"]["content"] for c in sorted(reply["choices"], key=lambda c: c["index"])]
        rule = self.rule
        gold = tuple(self.gold(rule, prompt, t) for t in texts)
        refs = [{"completion_id": reply["id"], "choice": i} for i in range(n)]
        if n == 1:
            choice, thumb = None, thumb_of(gold[0], user.noise, rng)
            posts = [{"response": refs[0], "rating": thumb, "user": user.name}]
        else:
            choice, thumb = judge(gold, user.noise, rng)
            if choice is None:
                side = {"responses": refs, "tie": True, "both_bad": max(gold) < 0.5, "user": user.name}
            else:
                side = {"chosen": refs[choice], "rejected": refs[1 - choice], "user": user.name}
            posts = [side, {"response": refs[0], "rating": thumb, "user": user.name}]
        for fb in posts:
            key = uuid.uuid4().hex
            self.journal.write({"kind": "intent", "key": key, "body": fb, "version": reply.get("model"),
                                "rule": rule})  # fmt: skip
            self._post(client, fb, key, reply.get("model"))
        self.stats["asks"] += 1
        if n == 2:
            self.stats["ties" if choice is None else "pairs"] += 1
        self.stats["thumbs"] += 1

    def _post(self, client: httpx.Client, body: dict, key: str, version: str | None) -> None:
        for attempt in range(5):
            try:
                r = client.post(f"{self.url}/v1/feedback", json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError:
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
                continue
            if r.status_code != 201:
                raise RuntimeError(f"POST /v1/feedback answered {r.status_code}: {r.text[:300]}")
            self.journal.write({"kind": "ack", "key": key, "id": r.json()["id"], "version": version,
                                "rating": body.get("rating")})  # fmt: skip
            return
