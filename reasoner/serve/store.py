"""The feedback store: completions, feedback, policy versions and loop state, through SQLAlchemy 2.

The only module of ``reasoner.serve`` that speaks SQL. A SQLite file (WAL, ``synchronous=FULL``) is the default;
any SQLAlchemy URL works (``postgresql+psycopg://...`` when several server replicas share one store). Every write
method returns only after its transaction has committed, so a row the server has acknowledged survives a kill -9.

Writes go through one committer thread per store (**group commit**): the writes that arrive while a commit is
under way are applied together in the next transaction, so 16 concurrent writers pay one fsync, not 16. Within
that transaction a run of writes of one kind is applied in bulk: one query checks every Idempotency-Key of the run,
one looks up every response it refers to, one ``executemany`` per table inserts the rows (a feedback write costs
about a quarter of what four statements of its own did). A write that fails its own checks (an unknown ref, say)
fails alone: every check runs before the run's first insert.

The schema and its migrations: ``reasoner.serve.tables`` (an older database runs each missing one once).

>>> store = FeedbackStore("sqlite://")
>>> cid = store.record_completion(prompt="user: hi\\nassistant:", texts=["hello"], version="v0")
>>> store.record_feedback("rating", [(cid, 0)], rating=1)["created"]
True
>>> store.count_feedback()
1
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from reasoner.serve.live import LiveRecords
from reasoner.serve.tables import (
    FEEDBACK_KINDS,
    MIGRATIONS,
    SCHEMA_VERSION,
    choices_t,
    completions_t,
    feedback_items_t,
    feedback_t,
    schema_version,
    state_t,
    versions_t,
)

# Built once: building a statement per call costs more than running it (measured: half of a feedback write).
_BY_KEYS = sa.select(feedback_t.c.idempotency_key, feedback_t.c.id, feedback_t.c.body_hash).where(
    feedback_t.c.idempotency_key.in_(sa.bindparam("keys", expanding=True))
)
_CHOICES_OF = sa.select(choices_t.c.completion_id, choices_t.c.idx).where(
    choices_t.c.completion_id.in_(sa.bindparam("cids", expanding=True))
)
_PROMPTS_OF = sa.select(completions_t.c.id, completions_t.c.prompt).where(
    completions_t.c.id.in_(sa.bindparam("cids", expanding=True))
)
_INSERT_FEEDBACK = feedback_t.insert()
_INSERT_ITEM = feedback_items_t.insert()
_INSERT_COMPLETION = completions_t.insert()
_INSERT_CHOICE = choices_t.insert()


class NotFound(LookupError):
    """A REF (completion id, choice) that the store does not hold; the message names it."""


class IdempotencyConflict(ValueError):
    """An Idempotency-Key reused with a different body."""


def new_completion_id(kind: str) -> str:
    """A fresh id in OpenAI's style: ``chatcmpl-...`` for chat, ``cmpl-...`` for text completions."""
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def normalize_url(url: str) -> str:
    """A bare path means a SQLite file; URLs pass through.

    >>> normalize_url("runs/feedback.db")
    'sqlite:///runs/feedback.db'
    >>> normalize_url("postgresql+psycopg://u@localhost:5432/db")
    'postgresql+psycopg://u@localhost:5432/db'
    """
    return url if "://" in url else f"sqlite:///{url}"


class FeedbackStore(LiveRecords):
    def __init__(self, url: str, sqlite_synchronous: str = "FULL"):
        self.url = normalize_url(url)
        u = sa.engine.make_url(self.url)
        self.is_sqlite = u.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            if u.database and u.database != ":memory:":
                Path(u.database).parent.mkdir(parents=True, exist_ok=True)
            else:  # one in-memory database shared by every thread
                kwargs = {"poolclass": sa.pool.StaticPool, "connect_args": {"check_same_thread": False}}
            kwargs.setdefault("connect_args", {})["timeout"] = 60
        self.engine = sa.create_engine(self.url, **kwargs)
        if self.is_sqlite:
            self._sqlite_setup(sqlite_synchronous)
        self._migrate()
        self._writes: queue.SimpleQueue = queue.SimpleQueue()
        self._committer: threading.Thread | None = None
        self._committer_lock = threading.Lock()

    def _sqlite_setup(self, synchronous: str) -> None:
        @sa.event.listens_for(self.engine, "connect")
        def _connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @sa.event.listens_for(self.engine, "begin")
        def _begin(conn):
            # Writes take the write lock up front (IMMEDIATE): a deferred transaction that reads and then writes
            # can fail with SQLITE_BUSY without waiting when another writer committed in between. Reads
            # (``_read``) begin deferred and never block the writer (WAL).
            read = conn.get_execution_options().get("reasoner_read", False)
            conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

    def _tx(self):
        return self.engine.begin()

    @contextlib.contextmanager
    def _read(self):
        with self.engine.connect() as conn:
            yield conn.execution_options(reasoner_read=True)

    # --- group commit -------------------------------------------------------------------------------------
    def _write(self, apply: Callable[[sa.Connection, list], list[Outcome]], args: Any) -> Future:
        """Queue a write for the committer; the future resolves once the transaction holding it has committed
        (``.result()`` to wait, ``asyncio.wrap_future`` to await).

        ``apply(conn, [args, ...])`` applies a run of queued writes of its kind in one go and returns one
        ``(ok, value)`` per write. It must check every write before its first insert: a write that fails its
        checks (NotFound, ...) gets ``(False, exception)`` and the others of the run go on.
        """
        if self._committer is None:
            with self._committer_lock:
                if self._committer is None:
                    self._committer = threading.Thread(
                        target=self._commit_loop, name="store-commit", daemon=True
                    )
                    self._committer.start()
        future: Future = Future()
        self._writes.put(_Write(apply, args, future))
        return future

    def _commit_loop(self) -> None:
        expected, commit_s = 1, 0.0
        while True:
            batch = [self._writes.get()]
            if batch[0] is None:
                return
            # The writers the last commit answered are about to write again, but the first of them reaches the
            # queue before the others: committing it alone would make every other transaction hold one write.
            # So wait for as many writes as the last transaction held, for at most half its duration (one
            # lone writer never waits; PostgreSQL's commit_delay/commit_siblings, adaptive).
            deadline = time.monotonic() + min(commit_s / 2, MAX_LINGER_S)
            while len(batch) < MAX_GROUP:
                try:
                    if len(batch) >= expected:
                        job = self._writes.get_nowait()
                    else:
                        job = self._writes.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._writes.put(None)  # stop after this batch
                    break
                batch.append(job)
            expected, started = len(batch), time.monotonic()
            try:
                results = self._apply(batch)
            except (IntegrityError, sa.exc.OperationalError):
                # e.g. another replica inserted the same Idempotency-Key first: run each write on its own
                results = []
                for job in batch:
                    try:
                        results += self._apply([job])
                    except Exception as e:  # this write's own failure, handed to its caller
                        results.append((False, e))
            except Exception as e:  # a failed commit fails every write of the batch, loudly, to its caller
                results = [(False, e)] * len(batch)
            commit_s = time.monotonic() - started
            for job, (ok, value) in zip(batch, results, strict=True):
                job.future.set_result(value) if ok else job.future.set_exception(value)

    def _apply(self, batch: list[_Write]) -> list[Outcome]:
        """One transaction: each run of consecutive writes of one kind in one ``apply`` call, in queue order."""
        results: list[Outcome] = []
        with self._tx() as conn:
            start = 0
            while start < len(batch):
                end = start + 1
                while end < len(batch) and batch[end].apply == batch[start].apply:
                    end += 1
                results += batch[start].apply(conn, [w.args for w in batch[start:end]])
                start = end
        return results

    # --- schema -------------------------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self._tx() as conn:
            schema_version.create(conn, checkfirst=True)
            current = conn.execute(sa.select(schema_version.c.version)).scalar()
            if current is None:
                conn.execute(schema_version.insert().values(version=0))
                current = 0
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"feedback store {self.url!r} has schema version {current}, newer than this reasoner's "
                f"{SCHEMA_VERSION}: upgrade reasoner"
            )
        for target in range(current + 1, SCHEMA_VERSION + 1):
            with self._tx() as conn:
                if conn.execute(sa.select(schema_version.c.version)).scalar() >= target:
                    continue  # another replica migrated first
                MIGRATIONS[target - 1](conn)
                conn.execute(schema_version.update().values(version=target))

    def schema_version(self) -> int:
        with self._read() as conn:
            return conn.execute(sa.select(schema_version.c.version)).scalar_one()

    # --- completions --------------------------------------------------------------------------------------
    def record_completion(self, *args, **kwargs) -> str:
        """Store a prompt's completions; returns the completion id once committed (see ``submit_completion``)."""
        return self.submit_completion(*args, **kwargs).result()

    def submit_completion(
        self,
        prompt: str,
        texts: list[str],
        version: str,
        finish_reasons: list[str] | None = None,
        sampling: dict | None = None,
        messages: list[dict] | None = None,
        user: str | None = None,
        kind: str = "chat",
        completion_id: str | None = None,
        logprobs: list[dict | None] | None = None,  # per choice: {"token_ids", "logprobs"} (the behaviour's)
    ) -> Future:
        cid = completion_id or new_completion_id(kind)
        logprobs = logprobs or [None] * len(texts)
        finish_reasons = finish_reasons or ["stop"] * len(texts)
        if len(finish_reasons) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(finish_reasons)} finish_reasons")
        row = {
            "id": cid,
            "created_at": time.time(),
            "kind": kind,
            "prompt": prompt,
            "messages": None if messages is None else json.dumps(messages),
            "version": version,
            "sampling": json.dumps(sampling or {}),
            "user": user,
        }
        choices = [
            {"completion_id": cid, "idx": i, "text": t, "finish_reason": f, "logprobs": lp and json.dumps(lp)}
            for i, (t, f, lp) in enumerate(zip(texts, finish_reasons, logprobs, strict=True))
        ]
        return self._write(_insert_completions, (row, choices))

    def completion(self, completion_id: str) -> dict:
        with self._read() as conn:
            row = conn.execute(sa.select(completions_t).where(completions_t.c.id == completion_id)).first()
            if row is None:
                raise NotFound(f"unknown completion_id {completion_id!r}")
            choices = conn.execute(
                sa.select(choices_t)
                .where(choices_t.c.completion_id == completion_id)
                .order_by(choices_t.c.idx)
            ).all()
        out = _completion_dict(row)
        out["choices"] = [
            {"index": c.idx, "text": c.text, "finish_reason": c.finish_reason, "logprobs": _json(c.logprobs)}
            for c in choices
        ]
        return out

    # --- feedback -----------------------------------------------------------------------------------------
    def record_feedback(self, *args, **kwargs) -> dict:
        """Record one feedback row; ``{"id", "created"}`` once committed (see ``submit_feedback``)."""
        return self.submit_feedback(*args, **kwargs).result()

    def submit_feedback(
        self,
        kind: str,
        refs: list[tuple[str, int]],
        rating: int | None = None,
        reason: str | None = None,
        comment: str | None = None,
        both_bad: bool = False,
        user: str | None = None,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
    ) -> Future:
        """Queue one feedback row; the future gives ``{"id", "created"}`` once committed (created False: an
        idempotent retry).

        The future raises ``NotFound`` for a ref the store does not hold, ``ValueError`` for refs to different prompts
        (choices, ties, rankings compare answers to one prompt), ``IdempotencyConflict`` for a reused key.
        """
        if kind not in FEEDBACK_KINDS:
            raise ValueError(f"unknown feedback kind {kind!r}; valid: {', '.join(FEEDBACK_KINDS)}")
        row = {"kind": kind, "rating": rating, "reason": reason, "comment": comment, "both_bad": both_bad}
        row.update(user=user, idempotency_key=idempotency_key, body_hash=body_hash)
        return self._write(_insert_feedback, (row, list(refs)))

    def count_feedback(self, since: float | None = None, kind: str | None = None) -> int:
        q = sa.select(sa.func.count()).select_from(feedback_t)
        if since is not None:
            q = q.where(feedback_t.c.created_at >= since)
        if kind is not None:
            q = q.where(feedback_t.c.kind == kind)
        with self._read() as conn:
            return conn.execute(q).scalar_one()

    def feedback(self, since: float | None = None, until: float | None = None) -> list[dict]:
        """Every feedback row in time order, each with its responses (prompt, text, version) in position order."""
        q = (
            sa.select(
                feedback_t,
                feedback_items_t.c.position,
                feedback_items_t.c.completion_id,
                feedback_items_t.c.choice,
                completions_t.c.prompt,
                completions_t.c.messages,
                completions_t.c.version,
                completions_t.c.sampling,
                choices_t.c.text,
                choices_t.c.logprobs,
            )
            .select_from(
                feedback_t.join(feedback_items_t, feedback_items_t.c.feedback_id == feedback_t.c.id)
                .join(completions_t, completions_t.c.id == feedback_items_t.c.completion_id)
                .join(
                    choices_t,
                    sa.and_(
                        choices_t.c.completion_id == feedback_items_t.c.completion_id,
                        choices_t.c.idx == feedback_items_t.c.choice,
                    ),
                )
            )
            .order_by(feedback_t.c.created_at, feedback_t.c.id, feedback_items_t.c.position)
        )
        if since is not None:
            q = q.where(feedback_t.c.created_at >= since)
        if until is not None:
            q = q.where(feedback_t.c.created_at < until)
        rows: dict[str, dict] = {}
        with self._read() as conn:
            for r in conn.execute(q):
                fb = rows.setdefault(
                    r.id,
                    {
                        "id": r.id,
                        "kind": r.kind,
                        "created_at": r.created_at,
                        "rating": r.rating,
                        "reason": r.reason,
                        "comment": r.comment,
                        "both_bad": bool(r.both_bad),
                        "user": r.user,
                        "responses": [],
                    },
                )
                fb["responses"].append(
                    {
                        "completion_id": r.completion_id,
                        "choice": r.choice,
                        "prompt": r.prompt,
                        "messages": None if r.messages is None else json.loads(r.messages),
                        "text": r.text,
                        "version": r.version,
                        "sampling": json.loads(r.sampling),
                        "logprobs": _json(r.logprobs),
                    }
                )
        return list(rows.values())

    def export_pairs(
        self, since: float | None = None, until: float | None = None, versions: Iterable[str] | None = None
    ) -> list[dict]:
        """Preference pairs ``{prompt, chosen, rejected, ...metadata}`` in the reward model's data format."""
        from reasoner.serve.pairs import preference_pairs

        return preference_pairs(self.feedback(since, until), versions=versions)

    def export_points(
        self, since: float | None = None, until: float | None = None, versions: Iterable[str] | None = None
    ) -> list[dict]:
        """Single judgements ``{prompt, completion, label, ...metadata}`` (thumbs, "both bad"): the RM's unpaired
        rows (``reasoner.serve.pairs.pointwise_rows``)."""
        from reasoner.serve.pairs import pointwise_rows

        return pointwise_rows(self.feedback(since, until), versions=versions)

    def stats(self) -> dict:
        """Per-version thumbs-up rate, win rate and a Bradley–Terry rating (see reasoner.serve.pairs)."""
        from reasoner.serve.pairs import version_stats

        with self._read() as conn:
            served = dict(
                conn.execute(
                    sa.select(completions_t.c.version, sa.func.count()).group_by(completions_t.c.version)
                ).all()
            )
        return version_stats(self.feedback(), [v["name"] for v in self.versions()], served)

    # --- versions -----------------------------------------------------------------------------------------
    def record_version(
        self, name: str, path: str, parent: str | None = None, meta: dict | None = None
    ) -> dict:
        """Add a policy version (idempotent for the same name and path); returns its row."""
        with self._tx() as conn:
            row = conn.execute(sa.select(versions_t).where(versions_t.c.name == name)).first()
            if row is None:
                conn.execute(
                    versions_t.insert().values(
                        name=name,
                        path=str(path),
                        parent=parent,
                        meta=json.dumps(meta or {}),
                        created_at=time.time(),
                    )
                )
            elif row.path != str(path):
                raise ValueError(f"version {name!r} already exists with path {row.path!r}, not {str(path)!r}")
        return self.version(name)

    def version(self, name: str) -> dict:
        with self._read() as conn:
            row = conn.execute(sa.select(versions_t).where(versions_t.c.name == name)).first()
        if row is None:
            raise NotFound(f"unknown version {name!r}")
        return _version_dict(row)

    def versions(self) -> list[dict]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(versions_t).order_by(versions_t.c.created_at, versions_t.c.name)
            ).all()
        return [_version_dict(r) for r in rows]

    def set_deployed(self, name: str) -> None:
        with self._tx() as conn:
            done = conn.execute(
                versions_t.update().where(versions_t.c.name == name).values(deployed_at=time.time())
            ).rowcount
        if not done:
            raise NotFound(f"unknown version {name!r}")

    def deployed(self) -> dict | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(versions_t)
                .where(versions_t.c.deployed_at.is_not(None))
                .order_by(versions_t.c.deployed_at.desc())
                .limit(1)
            ).first()
        return None if row is None else _version_dict(row)

    # --- key-value state for resumable loops --------------------------------------------------------------
    def get_state(self, key: str, default: Any = None) -> Any:
        with self._read() as conn:
            value = conn.execute(sa.select(state_t.c.value).where(state_t.c.key == key)).scalar()
        return default if value is None else json.loads(value)

    def set_state(self, key: str, value: Any) -> None:
        data = json.dumps(value)
        with self._tx() as conn:
            done = conn.execute(
                state_t.update().where(state_t.c.key == key).values(value=data, updated_at=time.time())
            ).rowcount
            if not done:
                conn.execute(state_t.insert().values(key=key, value=data, updated_at=time.time()))

    def close(self) -> None:
        if self._committer is not None:
            self._writes.put(None)
            self._committer.join()
            self._committer = None
        self.engine.dispose()


Outcome = tuple[bool, Any]  # (True, result) or (False, the exception for that write's caller)
MAX_GROUP = 256  # writes per transaction (keeps the IN lists of a run well under SQLite's variable limit)
MAX_LINGER_S = 0.01  # the longest a transaction waits for more writes


@dataclass
class _Write:
    apply: Callable[[sa.Connection, list], list[Outcome]]
    args: Any
    future: Future


def _insert_completions(conn: sa.Connection, writes: list[tuple[dict, list[dict]]]) -> list[Outcome]:
    conn.execute(_INSERT_COMPLETION, [row for row, _ in writes])
    choices = [c for _, cs in writes for c in cs]
    if choices:
        conn.execute(_INSERT_CHOICE, choices)
    return [(True, row["id"]) for row, _ in writes]


def _insert_feedback(conn: sa.Connection, writes: list[tuple[dict, list[tuple[str, int]]]]) -> list[Outcome]:
    """Check a run of feedback writes against the store (and each other), then insert those that pass."""
    keys = list({row["idempotency_key"] for row, _ in writes} - {None})
    used = (
        {r.idempotency_key: (r.id, r.body_hash) for r in conn.execute(_BY_KEYS, {"keys": keys})}
        if keys
        else {}
    )
    cids = list({cid for _, refs in writes for cid, _choice in refs})
    known = {(r.completion_id, r.idx) for r in conn.execute(_CHOICES_OF, {"cids": cids})}
    # prompts (up to 100k characters each) only where a write compares answers from different completions
    mixed = list({cid for _, refs in writes if len({c for c, _ in refs}) > 1 for cid, _choice in refs})
    prompts = dict(conn.execute(_PROMPTS_OF, {"cids": mixed}).all()) if mixed else {}
    results: list[Outcome] = []
    rows, items = [], []
    for row, refs in writes:
        try:
            results.append((True, _check_feedback(row, refs, used, known, prompts)))
        except (NotFound, IdempotencyConflict, ValueError) as e:
            results.append((False, e))
            continue
        if results[-1][1]["created"]:
            fid = results[-1][1]["id"]
            rows.append({**row, "id": fid, "created_at": time.time()})
            items += [
                {"feedback_id": fid, "position": i, "completion_id": cid, "choice": choice}
                for i, (cid, choice) in enumerate(refs)
            ]
    if rows:
        conn.execute(_INSERT_FEEDBACK, rows)
        conn.execute(_INSERT_ITEM, items)
    return results


def _check_feedback(row: dict, refs: list[tuple[str, int]], used: dict, known: set, prompts: dict) -> dict:
    """``{"id", "created"}`` for one feedback write; ``used`` (key -> (id, body hash)) gains its key. ``known``:
    the (completion id, choice) pairs that exist; ``prompts``: completion id -> prompt, for mixed refs."""
    key = row["idempotency_key"]
    if key in used:
        fid, body_hash = used[key]
        if row["body_hash"] is not None and body_hash != row["body_hash"]:
            raise IdempotencyConflict(f"Idempotency-Key {key!r} was already used with a different body")
        return {"id": fid, "created": False}
    for cid, choice in refs:
        if (cid, choice) not in known:
            raise NotFound(f"unknown response {{completion_id: {cid!r}, choice: {choice}}}")
    if len({prompts.get(cid) for cid, _choice in refs}) > 1:
        raise ValueError(f"{row['kind']} feedback must compare responses to the same prompt")
    fid = f"fb-{uuid.uuid4().hex}"
    if key is not None:  # a retry queued beside this write gets this row
        used[key] = (fid, row["body_hash"])
    return {"id": fid, "created": True}


def _json(text: str | None):
    return None if text is None else json.loads(text)


def _completion_dict(row) -> dict:
    return {
        "id": row.id,
        "created_at": row.created_at,
        "kind": row.kind,
        "prompt": row.prompt,
        "messages": None if row.messages is None else json.loads(row.messages),
        "version": row.version,
        "sampling": json.loads(row.sampling),
        "user": row.user,
    }


def _version_dict(row) -> dict:
    return {
        "name": row.name,
        "path": row.path,
        "parent": row.parent,
        "meta": json.loads(row.meta),
        "created_at": row.created_at,
        "deployed_at": row.deployed_at,
    }
