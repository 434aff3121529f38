"""``reasoner eval --tools python --max-turns N``: evaluation rolls out exactly as training does with tools."""

from __future__ import annotations

import argparse
import json

import pytest

from reasoner.data import DataError
from reasoner.evaluate import add_eval_arguments, evaluate_model, run_eval
from reasoner.models import build_tiny_model
from reasoner.rewards.code import configure_sandbox, sandbox_settings
from reasoner.rollout.tools import CallResult, ToolEngine, ToolSettings
from reasoner.tasks import get_task
from tests.rollout.test_tools import TOK, ScriptedEngine


@pytest.fixture(autouse=True)
def local_sandbox():
    old = sandbox_settings()
    configure_sandbox(backend="local", workers=2)
    yield
    configure_sandbox(backend=old.backend, workers=old.workers)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser.parse_args([*argv, "--no-progress"])


def _products(k: int):
    task = get_task("products")
    return task, task.load(None, "test", k, 0)


def test_the_report_scores_the_answers_and_keeps_the_transcripts():
    task, examples = _products(2)
    (a, b) = examples
    x, y = a.columns["a"], a.columns["b"]
    scripts = {
        a.prompt: [[f"<python>print({x}*{y})</python>", f"#### {x * y}"]],  # calls, copies the output: right
        b.prompt: [["#### 1"]],  # answers alone: wrong
    }
    engine = ToolEngine(ScriptedEngine(scripts), TOK, ToolSettings())
    report = evaluate_model(engine, task, examples, max_new_tokens=120, progress=False)
    assert report.metrics["accuracy"] == 0.5 and report.metrics["tool_calls_per_answer"] == 0.5
    assert report.metrics["tool_success_rate"] == 1.0
    first = report.records[0]
    assert first["completions"] == [f"<python>print({x}*{y})</python>#### {x * y}"]  # what the reward scored
    assert first["transcripts"] == [
        f"<python>print({x}*{y})</python><output>\n{x * y}\n</output>\n#### {x * y}"
    ]
    assert "| tool_calls_per_answer |" in report.to_markdown() and "| 0.50 |" in report.to_markdown()


def test_a_sandbox_failure_leaves_the_answer_unscored():
    task, examples = _products(1)
    (a,) = examples
    scripts = {a.prompt: [[f"<python>print({a.columns['a']}*{a.columns['b']})</python>", f"#### {a.gold}"]]}

    def broken(codes, timeouts, memory_mb):
        return [CallResult("error", "", "", 0.0) for _ in codes]

    engine = ToolEngine(ScriptedEngine(scripts), TOK, ToolSettings(), executor=broken)
    report = evaluate_model(engine, task, examples, max_new_tokens=120, progress=False)
    assert report.metrics["unscored"] == 1 and report.records[0]["scores"] == [None]


def test_the_cli_runs_the_tool_loop_with_a_model(tmp_path):
    model = build_tiny_model(tmp_path / "tiny", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2)  # fmt: skip
    out = tmp_path / "report.json"
    args = ["--task", "products", "--model", str(model), "--tools", "python", "--max-turns", "2", "--limit", "3",
            "--max-new-tokens", "30", "--backend", "local", "--out", str(out)]  # fmt: skip
    assert run_eval(_args(*args)) == 0
    report = json.loads(out.read_text())
    assert {"tool_calls_per_answer", "tool_success_rate"} <= set(report["metrics"])
    assert all(len(r["transcripts"]) == 1 for r in report["records"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tools", "python"], "needs --max-turns >= 2"),
        (["--max-turns", "3"], "needs --tools python"),
    ],
)
def test_tool_flags_fail_clearly(tmp_path, flags, message):
    model = build_tiny_model(tmp_path / "tiny", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2)  # fmt: skip
    with pytest.raises(DataError, match=message):
        run_eval(
            _args("--task", "products", "--model", str(model), "--out", str(tmp_path / "r.json"), *flags)
        )
    with pytest.raises(DataError, match="needs --model"):
        run_eval(_args("--task", "products", "--completions", "canonical", "--tools", "python", "--max-turns", "2",
                       "--out", str(tmp_path / "r.json")))  # fmt: skip
