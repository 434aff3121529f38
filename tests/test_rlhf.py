"""End to end RLHF on the tiny model: warm start, pairs from the gold rule, a reward model, GRPO against it."""

from __future__ import annotations

import json

import pytest

from reasoner.config import load_config
from reasoner.rlhf import run_rlhf


@pytest.mark.slow
def test_rlhf_raises_the_gold_score(tiny_model_dir, tmp_path):
    cfg = load_config("configs/rlhf-grpo.yaml", [
        f"model.path={tiny_model_dir}", f"sft.output_dir={tmp_path}/sft", f"rlhf.output_dir={tmp_path}/rlhf",
        "sft.steps=200", "rm.steps=60", "rm.eval_every=0", "rm.save_every=0", "rlhf.pairs=1200", "rlhf.eval_pairs=200",
        "rlhf.ensemble=1", "optim.lr=5e-4",  # one RM and the gentler lr keep this short run fast and steady
        "train.steps=8", "train.eval_every=0", "train.save_every=0", "task.eval_size=100", "train.tensorboard=false",
    ])  # fmt: skip
    result = run_rlhf(cfg, progress=False)
    assert {"gold_before", "gold_after", "rm_accuracy", "wall_s"} <= set(result)
    assert result["rm_accuracy"] > 0.75 > result["length_heuristic_accuracy"]
    assert result["gold_after"] > result["gold_before"] + 0.05
    metrics = [
        json.loads(ln) for ln in (tmp_path / "rlhf" / "grpo" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any(r.get("kl", 0) > 0 for r in metrics) and any("reward/mean" in r for r in metrics)
