"""`reasoner serve` and `reasoner feedback export`: arguments and the commands behind them."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

# --flag attribute -> serve.KEY: the flags are shorthands for config overrides
SERVE_FLAGS = {name: name for name in ("model", "db", "host", "port", "api_key", "admin_key")}


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="policy directory or hub id to serve (serve.model)")
    p.add_argument(
        "--db", help="feedback store: SQLAlchemy URL or SQLite file (serve.db; default runs/feedback.db)"
    )
    p.add_argument("--host", help="address to bind (serve.host; default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, help="port (serve.port; default 8000, 0 = a free one)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (serve.api_key)")
    p.add_argument("--admin-key", help="enable POST /admin/deploy with this key (serve.admin_key)")
    p.add_argument("--config", help="YAML config file (its serve: section)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="e.g. serve.batch_window_ms=10")


def add_feedback_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="feedback_command", required=True, metavar="SUBCOMMAND")
    e = sub.add_parser(
        "export", help="write preference pairs {prompt, chosen, rejected, ...} for `reasoner rm train`"
    )
    e.add_argument("--db", required=True, help="feedback store: SQLAlchemy URL or SQLite file")
    e.add_argument("--out", required=True, help="JSONL file to write")
    e.add_argument("--since", help="only feedback at or after this time (ISO 8601, e.g. 2026-12-01T00:00)")
    e.add_argument("--until", help="only feedback before this time (ISO 8601)")
    e.add_argument("--versions", help="comma-separated policy versions (both responses of a pair from them)")
    s = sub.add_parser("stats", help="per-version thumbs-up rate, win rate and rating, as JSON")
    s.add_argument("--db", required=True)


def _overrides(args, flags: dict[str, str]) -> list[str]:
    out = list(args.overrides)
    for attr, key in flags.items():
        value = getattr(args, attr)
        if value is not None:
            out.append(f"serve.{key}={json.dumps(value)}")
    return out


def run_serve(args) -> int:
    from reasoner.config import load_config, with_values
    from reasoner.serve.server import serve

    cfg = load_config(args.config, _overrides(args, SERVE_FLAGS))
    if cfg.serve.model is None:
        cfg = with_values(cfg, {"serve.model": cfg.model.path})
    try:
        serve(cfg.serve)
    except (FileNotFoundError, OSError) as e:
        print(f"reasoner serve: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _time(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise SystemExit(
            f"reasoner feedback export: {flag} {value!r} is not an ISO 8601 time (e.g. 2026-12-01T00:00)"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def run_feedback(args) -> int:
    from reasoner.serve.store import FeedbackStore

    store = FeedbackStore(args.db)
    if args.feedback_command == "stats":
        print(json.dumps(store.stats()))
        return 0
    versions = [v.strip() for v in args.versions.split(",") if v.strip()] if args.versions else None
    pairs = store.export_pairs(_time(args.since, "--since"), _time(args.until, "--until"), versions)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    tmp.replace(out)  # atomic: a reader never sees half a file
    sources: dict[str, int] = {}
    for p in pairs:
        sources[p["source"]] = sources.get(p["source"], 0) + 1
    print(
        json.dumps(
            {
                "pairs": len(pairs),
                "by_source": sources,
                "out": str(out),
                "feedback_rows": store.count_feedback(),
            }
        )
    )
    return 0
