"""The store's live records for the online loop: thumbs per version over a time window, and the decisions
(canary promotions, rollbacks, gate refusals) with both versions' thumbs. A part of ``FeedbackStore``, which
gives the transactions (``_tx``, ``_read``); SQL stays inside the store."""

from __future__ import annotations

import json
import time

import sqlalchemy as sa

from reasoner.serve.tables import completions_t, decisions_t, feedback_items_t, feedback_t

DECISIONS = ("promoted", "rolled_back", "refused")


class LiveRecords:
    def thumbs(self, since: float | None = None, until: float | None = None) -> dict[str, tuple[int, int]]:
        """Per version: (thumbs up, thumbs) of the ratings given in [since, until) to its responses."""
        up = sa.func.sum(sa.case((feedback_t.c.rating > 0, 1), else_=0))
        q = (
            sa.select(completions_t.c.version, up, sa.func.count())
            .select_from(
                feedback_t.join(feedback_items_t, feedback_items_t.c.feedback_id == feedback_t.c.id).join(
                    completions_t, completions_t.c.id == feedback_items_t.c.completion_id
                )
            )
            .where(feedback_t.c.kind == "rating")
            .group_by(completions_t.c.version)
        )
        if since is not None:
            q = q.where(feedback_t.c.created_at >= since)
        if until is not None:
            q = q.where(feedback_t.c.created_at < until)
        with self._read() as conn:
            return {v: (int(u or 0), int(n)) for v, u, n in conn.execute(q).all()}

    # --- decisions (canary promotions, rollbacks, gate refusals) ------------------------------------------
    def record_decision(
        self,
        key: str,
        version: str,
        decision: str,
        *,
        against: str | None = None,
        by: str = "loop",
        live: dict | None = None,
        p_value: float | None = None,
        meta: dict | None = None,
    ) -> dict:
        """Record one decision under ``key`` (once: a second call with the same key returns the first row).

        ``live``: ``{"up": [up_c, up_d], "thumbs": [n_c, n_d]}`` as ``reasoner.online.canary`` gives it.
        """
        if decision not in DECISIONS:
            raise ValueError(f"unknown decision {decision!r}; valid: {', '.join(DECISIONS)}")
        up, n = (live or {}).get("up", [None, None]), (live or {}).get("thumbs", [None, None])
        with self._tx() as conn:
            if conn.execute(sa.select(decisions_t.c.key).where(decisions_t.c.key == key)).first() is None:
                conn.execute(
                    decisions_t.insert().values(
                        key=key,
                        created_at=time.time(),
                        version=version,
                        against=against,
                        decision=decision,
                        by=by,
                        up=up[0],
                        thumbs=n[0],
                        against_up=up[1],
                        against_thumbs=n[1],
                        p_value=p_value,
                        meta=json.dumps(meta or {}),
                    )  # fmt: skip
                )
        return next(d for d in self.decisions() if d["key"] == key)

    def decisions(self) -> list[dict]:
        """Every decision, oldest first, each with both thumbs-up rates and counts."""
        with self._read() as conn:
            rows = conn.execute(sa.select(decisions_t).order_by(decisions_t.c.created_at)).all()
        out = []
        for r in rows:
            d = dict(r._mapping)
            d["meta"] = json.loads(d["meta"])
            d["rate"] = r.up / r.thumbs if r.thumbs else None
            d["against_rate"] = r.against_up / r.against_thumbs if r.against_thumbs else None
            out.append(d)
        return out
