"""End to end RLHF on the tiny model: warm start, pairs from the gold rule, a reward model, GRPO against it."""

from __future__ import annotations

import json

import pytest

from reasoner.config import load_config
from reasoner.rlhf import on_policy_accuracy, run_rlhf


class LengthReward:
    """A reward that is the response's length: enough to check the bookkeeping by hand."""

    def score(self, prompts, responses):
        return [float(len(r)) for r in responses]


def test_on_policy_accuracy_counts_hits_per_family_and_ties_as_half():
    rows = [
        {"prompt": "p", "chosen": "long answer", "rejected": "short", "family": "tone"},  # hit
        {"prompt": "p", "chosen": "ab", "rejected": "abc", "family": "tone"},  # miss
        {"prompt": "q", "chosen": "xyz", "rejected": "abc", "family": "sum"},  # tie: half
    ]
    got = on_policy_accuracy(rows, LengthReward())
    assert got["accuracy"] == 0.5 and got["pairs"] == 3
    assert got["by_family"] == {"sum": {"accuracy": 0.5, "pairs": 1}, "tone": {"accuracy": 0.5, "pairs": 2}}
    assert on_policy_accuracy([], LengthReward()) == {"accuracy": None, "pairs": 0}


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
    # the RM judged the warm start's own samples well (0.82 measured); the report has both ends and the per-family split
    assert result["rm_on_policy_before"] > 0.65 and 0.0 <= result["rm_on_policy_after"] <= 1.0
    on_policy = json.loads((tmp_path / "rlhf" / "rm_on_policy.json").read_text())
    assert on_policy["before"]["pairs"] > 0 and "tone" in on_policy["before"]["by_family"]
    metrics = [
        json.loads(ln) for ln in (tmp_path / "rlhf" / "grpo" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any(r.get("kl", 0) > 0 for r in metrics) and any("reward/mean" in r for r in metrics)
