"""The feedback store's schema: its tables (SQLAlchemy Core), its version and the migrations between versions.

The schema carries a version (table ``schema_version``); ``MIGRATIONS[i]`` upgrades version ``i`` to ``i + 1``
and runs once, in its own transaction, when a store (``reasoner.serve.store``) is opened on an older database.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

SCHEMA_VERSION = 3
FEEDBACK_KINDS = ("rating", "choice", "tie", "ranking")

metadata = sa.MetaData()
schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))
versions_t = sa.Table(
    "versions",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("parent", sa.String(64)),
    sa.Column("meta", sa.Text, nullable=False),  # JSON
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("deployed_at", sa.Float),  # the deployed version is the one deployed last
)
completions_t = sa.Table(
    "completions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # chat | text
    sa.Column("prompt", sa.Text, nullable=False),  # the text the policy saw (chat template applied)
    sa.Column("messages", sa.Text),  # JSON list of {role, content} for chat completions
    sa.Column("version", sa.String(64), nullable=False, index=True),
    sa.Column("sampling", sa.Text, nullable=False),  # JSON
    sa.Column("user", sa.String(256)),
)
choices_t = sa.Table(
    "choices",
    metadata,
    sa.Column("completion_id", sa.String(64), sa.ForeignKey("completions.id"), primary_key=True),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("finish_reason", sa.String(16), nullable=False),
    # v2: JSON {"token_ids": [...], "logprobs": [...]}, the sampled tokens (the EOS included) and the behaviour
    # policy's log-probs of them; NULL for rows written before v2
    sa.Column("logprobs", sa.Text),
)
feedback_t = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # rating | choice | tie | ranking
    sa.Column("rating", sa.Integer),  # 1 | -1 for kind == rating
    sa.Column("reason", sa.Text),
    sa.Column("comment", sa.Text),
    sa.Column("both_bad", sa.Boolean, nullable=False, default=False),  # ties: "both bad" rather than "tie"
    sa.Column("user", sa.String(256)),
    sa.Column("idempotency_key", sa.String(256), unique=True),
    sa.Column("body_hash", sa.String(64)),  # what the idempotency key was first used with
)
feedback_items_t = sa.Table(
    "feedback_items",
    metadata,
    sa.Column("feedback_id", sa.String(64), sa.ForeignKey("feedback.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),  # choice: 0 chosen, 1 rejected; ranking: best first
    sa.Column("completion_id", sa.String(64), nullable=False, index=True),
    sa.Column("choice", sa.Integer, nullable=False),
)
state_t = sa.Table(
    "state",
    metadata,
    sa.Column("key", sa.String(256), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),  # JSON
    sa.Column("updated_at", sa.Float, nullable=False),
)
decisions_t = sa.Table(
    "decisions",
    metadata,
    sa.Column(
        "key", sa.String(256), primary_key=True
    ),  # e.g. "round/3": a rerun after a kill records it once
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("version", sa.String(64), nullable=False),  # the version decided on (the candidate)
    sa.Column("against", sa.String(64)),  # the version it was compared with (the deployed one)
    sa.Column("decision", sa.String(16), nullable=False),  # promoted | rolled_back | refused
    sa.Column("by", sa.String(16), nullable=False),  # loop | hand
    sa.Column("up", sa.Integer),  # the candidate's thumbs up ...
    sa.Column("thumbs", sa.Integer),  # ... of its thumbs
    sa.Column("against_up", sa.Integer),
    sa.Column("against_thumbs", sa.Integer),
    sa.Column("p_value", sa.Float),
    sa.Column("meta", sa.Text, nullable=False),  # JSON
)


def _create_v1(conn: sa.Connection) -> None:
    # creates the tables as defined above (a fresh database gets the newest columns; later migrations add
    # only what is missing)
    metadata.create_all(
        conn, tables=[versions_t, completions_t, choices_t, feedback_t, feedback_items_t, state_t]
    )


def _choice_logprobs_v2(conn: sa.Connection) -> None:
    if "logprobs" not in {c["name"] for c in sa.inspect(conn).get_columns("choices")}:
        conn.execute(sa.text("ALTER TABLE choices ADD COLUMN logprobs TEXT"))


def _add_decisions_v3(conn: sa.Connection) -> None:
    decisions_t.create(conn)


MIGRATIONS: list[Callable[[sa.Connection], None]] = [
    _create_v1,
    _choice_logprobs_v2,
    _add_decisions_v3,
]  # [i]: schema i -> i + 1
