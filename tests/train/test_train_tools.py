"""A training run with tools, end to end on the tiny model: the tool loop, the masks and the result line's keys."""

from __future__ import annotations

import pytest

from reasoner.config import load_config
from reasoner.rewards.code import configure_sandbox, sandbox_settings
from reasoner.train.trainer import train


@pytest.fixture
def local_sandbox():
    old = sandbox_settings()
    configure_sandbox(backend="local", workers=2)
    yield
    configure_sandbox(backend=old.backend, workers=old.workers)


@pytest.mark.slow
def test_train_with_tools_reports_tool_statistics(tiny_model_dir, tmp_path, local_sandbox):
    cfg = load_config("configs/tools-grpo.yaml", [
        f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path}", "sft.steps=0", "train.steps=2",
        "train.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=24", "task.eval_size=4",
        "train.eval_every=2", "train.save_every=0", "train.tensorboard=false",
    ])  # fmt: skip
    result = train(cfg, progress=False)
    for key in ("eval_before", "eval_after", "gain", "eval_prompts", "tool_calls_per_answer_before",
                "tool_calls_per_answer_after", "tool_success_rate"):  # fmt: skip
        assert key in result, key
    assert result["eval_prompts"] == 4
    lines = (tmp_path / "metrics.jsonl").read_text()
    assert '"tool/calls_per_answer"' in lines and '"eval/tool_calls_per_answer"' in lines
