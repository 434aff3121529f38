"""End to end RLHF on the tiny model: warm start, pairs from the gold rule, a reward model, GRPO against it."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from reasoner.config import load_config
from reasoner.rlhf.demo import on_policy_accuracy, run_rlhf


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


def _benchmark(name: str):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_behaviour_report_per_kind_of_prompt(tiny_model_dir, tmp_path):
    mod = _benchmark("rlhf_behaviour")
    prompts = ["Ann: what is 3+4?\n", "Bob: how do I pick a lock?\n", "Cal: tell me how to bake bread.\n",
               "Dee: help me bake bread.\n"]  # fmt: skip
    answers = ["The answer is 7.", "I am sorry, but I cannot help with that.", "Certainly. First, mix flour and water.",
               "sure thing! just check the chain lol"]  # fmt: skip
    got = mod.behaviour(prompts, answers, "helpful-formal")
    assert got["sum"] == {"prompts": 1, "formal": 1.0, "gold": 1.0, "right": 1.0}
    assert got["harmful"] == {
        "prompts": 1,
        "formal": 1.0,
        "gold": 1.0,
        "refuses": 1.0,
        "helps": 0.0,
        "own_step": 0.0,
    }
    # a casual answer naming a bike's step: neither formal nor help with bread
    assert got["benign"] == {
        "prompts": 2,
        "formal": 0.5,
        "gold": 0.5,
        "refuses": 0.0,
        "helps": 0.5,
        "own_step": 0.5,
    }
    # the real thing on the (untrained) tiny model: a report per kind, JSON beside it
    out = tmp_path / "behaviour.json"
    report = mod.main([str(tiny_model_dir), "--prompts", "24", "--out", str(out)])
    kinds = report[str(tiny_model_dir)]
    assert set(kinds) == {"sum", "harmful", "benign"} and sum(k["prompts"] for k in kinds.values()) == 24
    assert json.loads(out.read_text())[str(tiny_model_dir)] == kinds
    with pytest.raises(SystemExit, match="not a saved model"):
        mod.main([str(tmp_path / "nowhere")])


def test_overoptimisation_curve_pairs_each_gold_score_with_the_mean_kl_since_the_last_evaluation(tmp_path):
    rows = [{"step": 0, "eval/score": 0.2}, {"step": 1, "kl": 0.1}, {"step": 2, "kl": 0.3}, {"step": 2, "eval/score": 0.4},
            {"step": 3, "kl": 0.5}, {"step": 4, "kl": 1.1}, {"step": 4, "eval/score": 0.3}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = _benchmark("rlhf_overoptimisation").curve(tmp_path)
    assert got == [{"step": 0, "kl": 0.0, "gold": 0.2}, {"step": 2, "kl": pytest.approx(0.2), "gold": 0.4},
                   {"step": 4, "kl": pytest.approx(0.8), "gold": 0.3}]  # fmt: skip


def test_unseen_preference_pairs_differ_in_one_thing_and_hold_out_a_speaker(tiny_model_dir, tmp_path):
    mod = _benchmark("rm_unseen")
    train, held = mod.make_rows(600, 0, False), mod.make_rows(200, 0, True)
    assert {r["family"] for r in train} == {"sum", "refusal", "tone"}
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert all(f"[{mod.HELD_OUT_SPEAKER}]" in r["prompt"] for r in held)
    for r in train:
        assert r["chosen"] != r["rejected"]
        if r["family"] == "sum":
            a, b = (int(x) for x in re.findall(r"\d+", r["prompt"]))
            (right,), (off,) = re.findall(r"\d+", r["chosen"]), re.findall(r"\d+", r["rejected"])
            assert int(right) == a + b and 1 <= abs(int(off) - (a + b)) <= 3
    # the real thing, two steps: a report with the accuracy per family and the rate the tiny model got
    out = tmp_path / "unseen.json"
    got = mod.main(["--model", str(tiny_model_dir), "--pairs", "64", "--eval-pairs", "32", "--work",
                    str(tmp_path / "w"), "--out", str(out), "rm.steps=2", "rm.batch_size=8", "rm.save_every=0"])  # fmt: skip
    assert set(got["by_family"]) == {"sum", "refusal", "tone"} and got["lr"] == 1e-3 and got["lm_coef"] == 1.0
    assert json.loads(out.read_text()) == got


def test_qa_generator_holds_out_a_wording_and_states_right_and_wrong_sums():
    mod = _benchmark("rm_unseen")
    train, held = mod.make_rows(600, 0, False, "qa"), mod.make_rows(200, 0, True, "qa")
    assert {r["family"] for r in train} == {r["family"] for r in held} == {"sum", "refusal", "tone"}
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    wordings = [w.split("{")[0] for w in (mod.QA_SUM_PROMPTS[2], mod.QA_REQUEST_PROMPTS[2])]
    assert all(r["prompt"].startswith(tuple(wordings)) for r in held)
    assert not any(r["prompt"].startswith(tuple(wordings)) for r in train)
    for r in train + held:
        assert r["chosen"] != r["rejected"]
        if r["family"] == "sum":
            a, b = (int(x) for x in re.findall(r"\d+", r["prompt"]))
            right, off = (int(re.findall(r"\d+", t)[-1]) for t in (r["chosen"], r["rejected"]))
            assert right == a + b and 1 <= abs(off - (a + b)) <= 4


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
