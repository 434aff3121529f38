"""`reasoner serve` flags onto the `serve` config section; `reasoner feedback export` on a real store file."""

from __future__ import annotations

import argparse
import json

import pytest

from reasoner.cli import main
from reasoner.config import ConfigError, load_config
from reasoner.serve.cli import SERVE_FLAGS, _overrides, add_serve_arguments
from reasoner.serve.store import FeedbackStore

FLAGS = SERVE_FLAGS


def test_serve_flags_map_onto_the_config():
    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    args = p.parse_args(
        ["--model", "runs/m", "--db", "postgresql+psycopg://u@h/db", "--port", "0", "--api-key", "s3"]
    )
    cfg = load_config(None, _overrides(args, FLAGS) + ["serve.batch_window_ms=10"]).serve
    assert (cfg.model, cfg.db, cfg.port, cfg.api_key, cfg.batch_window_ms) == (
        "runs/m",
        "postgresql+psycopg://u@h/db",
        0,
        "s3",
        10.0,
    )
    assert cfg.host == "127.0.0.1" and cfg.admin_key is None  # secure defaults
    args = p.parse_args(["--api-key", "123"])  # a numeric key stays a string
    assert load_config(None, _overrides(args, FLAGS)).serve.api_key == "123"
    with pytest.raises(ConfigError, match="valid keys under 'serve'"):
        load_config(None, ["serve.prot=1"])


def test_feedback_export_cli(tmp_path, capsys):
    db = tmp_path / "fb.db"
    store = FeedbackStore(str(db))
    a = store.record_completion("user: q\nassistant:", ["good", "bad"], version="v0")
    b = store.record_completion("user: q\nassistant:", ["better"], version="v1")
    store.record_feedback("choice", [(a, 0), (a, 1)], user="ann")
    store.record_feedback("ranking", [(b, 0), (a, 0), (a, 1)])
    store.close()
    out = tmp_path / "pairs" / "pairs.jsonl"
    assert main(["feedback", "export", "--db", str(db), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["pairs"] == 4 and summary["by_source"] == {"choice": 1, "ranking": 3}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["chosen"], r["rejected"]) for r in rows} == {
        ("good", "bad"),
        ("better", "good"),
        ("better", "bad"),
    }
    assert all(r["prompt"] == "user: q\nassistant:" for r in rows)
    assert main(["feedback", "export", "--db", str(db), "--out", str(out), "--versions", "v0"]) == 0
    # both responses from v0: the choice, and the ranking's good-over-bad pair
    assert [json.loads(line)["source"] for line in out.read_text().splitlines()] == ["choice", "ranking"]
    assert main(["feedback", "export", "--db", str(db), "--out", str(out), "--since", "2999-01-01"]) == 0
    assert out.read_text() == ""
    with pytest.raises(SystemExit, match="not an ISO 8601 time"):
        main(["feedback", "export", "--db", str(db), "--out", str(out), "--until", "yesterday"])
    assert main(["feedback", "stats", "--db", str(db)]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {v["version"]: v["wins"] for v in stats["versions"]} == {"v0": 0, "v1": 2}


@pytest.mark.parametrize(
    "override, key",
    [
        ("serve.port=70000", "port"),
        ("serve.max_batch=0", "max_batch"),
        ("serve.admin_key=short", "admin_key"),
    ],
)
def test_serve_config_checks_name_the_key(override, key):
    from reasoner.serve.service import check_config

    with pytest.raises(ConfigError, match=f"serve.{key} must"):
        check_config(load_config(None, [override]).serve)
