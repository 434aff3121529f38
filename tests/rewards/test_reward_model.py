"""The reward model as a reward: normalisation, ensembles, clipping, and weighted combinations of rewards.

Scores are checked against plain transformers (``logits[0, 0]`` of ``prompt + response``) and hand-computed
normalisation and aggregation; the RMs are real sequence classifiers built on the tiny model.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from reasoner.config import load_config
from reasoner.rewards.combine import build_reward
from reasoner.rewards.reward_model import STATS_FILE, RewardModel
from reasoner.tasks.base import Example

PROMPTS = ["Ann: what is 3+4?\n", "Bob: how do I bake bread?\n", "Cal: what is 1+1?\n"]
RESPONSES = ["The answer is 7.", "nah lol", "it's 2 lol"]


def _make_rm(src, out, seed, mean, std):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    (out / STATS_FILE).write_text(json.dumps({"mean": mean, "std": std, "chat": False, "max_length": 512}))
    return out


@pytest.fixture(scope="module")
def rms(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rms")
    return [
        _make_rm(tiny_model_dir, tmp / "a", 1, 0.1, 2.0),
        _make_rm(tiny_model_dir, tmp / "b", 2, -0.2, 0.5),
    ]


def _plain_scores(path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        return [
            model(**tok(p + r, return_tensors="pt")).logits[0, 0].item()
            for p, r in zip(PROMPTS, RESPONSES, strict=True)
        ]


def test_single_rm_with_saved_stats_matches_plain_transformers(rms):
    raw = _plain_scores(rms[0])
    got = RewardModel(str(rms[0]), "cpu", normalize="stats").score(PROMPTS, RESPONSES)
    assert got == pytest.approx([(s - 0.1) / 2.0 for s in raw], abs=1e-5)
    none = RewardModel(str(rms[0]), "cpu", normalize="none").score(PROMPTS, RESPONSES)
    assert none == pytest.approx(raw, abs=1e-5)  # batched + padded = one text at a time


def test_batch_normalisation_and_clipping(rms):
    raw = torch.tensor(_plain_scores(rms[0]))
    z = (raw - raw.mean()) / raw.std(unbiased=False)
    got = RewardModel(str(rms[0]), "cpu", normalize="batch", clip=0.5).score(PROMPTS, RESPONSES)
    assert got == pytest.approx(z.clamp(-0.5, 0.5).tolist(), abs=1e-5)


@pytest.mark.parametrize("mode", ["mean", "mean-std", "min"])
def test_ensemble_aggregate_against_hand_values(rms, mode):
    a = [(s - 0.1) / 2.0 for s in _plain_scores(rms[0])]
    b = [(s + 0.2) / 0.5 for s in _plain_scores(rms[1])]
    lam = 0.7
    expected = []
    for x, y in zip(a, b, strict=True):
        mean, std = (x + y) / 2, abs(x - y) / 2  # population std of two values
        expected.append({"mean": mean, "mean-std": mean - lam * std, "min": min(x, y)}[mode])
    got = RewardModel([str(p) for p in rms], "cpu", ensemble=mode, lam=lam).score(PROMPTS, RESPONSES)
    assert got == pytest.approx(expected, abs=1e-5)


def test_missing_stats_file_names_the_fix(rms, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(rms[0], bare)
    (bare / STATS_FILE).unlink()
    with pytest.raises(ValueError, match="reward_model.normalize=batch"):
        RewardModel(str(bare), "cpu")


def test_weighted_combination_of_gold_format_and_model(rms):
    cfg = load_config(None, ["task.rewards=[{name: gold, weight: 1.0}, {name: format, weight: 0.5}, {name: model, weight: 2.0}]",
                             f"reward_model.paths=[{rms[0]}]", "reward_model.normalize=none"])  # fmt: skip
    fn = build_reward(cfg, "gold", "cpu")
    examples = [Example(prompt=p, gold="", meta={"rule": "helpful-formal"}) for p in PROMPTS]
    completions = ["The answer is 7.", "<think>hm</think> Certainly. First, mix flour.", "it's 2 lol"]
    out = fn(completions, examples)
    gold, fmt = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]  # "<think>..." does not start formally
    raw = RewardModel(str(rms[0]), "cpu", normalize="none").score(PROMPTS, completions)
    expected = [g + 0.5 * f + 2.0 * m for g, f, m in zip(gold, fmt, raw, strict=True)]
    assert out.scores == pytest.approx(expected, abs=1e-5)
    assert out.metrics["gold"] == pytest.approx(1 / 3) and out.metrics["format"] == pytest.approx(1 / 3)
    assert out.metrics["model"] == pytest.approx(sum(raw) / 3, abs=1e-5)


def test_format_reward_weight_is_a_term():
    cfg = load_config(None, ["task.format_reward=0.25"])
    fn = build_reward(cfg, "gold")
    ex = [Example(prompt="Ann: what is 3+4?\n", gold="", meta={"rule": "correct-sum"})] * 2
    out = fn(["<think>3+4</think> 7", "8"], ex)
    assert out.scores == [1.25, 0.0] and math.isclose(out.metrics["format"], 0.5)


def test_one_unscorable_term_makes_the_sample_unscored():
    from reasoner.rewards.combine import combine_scores

    assert combine_scores([[1.0, None], [2.0, 3.0]], [0.5, 1.0]) == [2.5, None]


def test_a_reward_named_twice_fails():
    cfg = load_config(None, ["task.rewards=[{name: gold}, {name: gold, weight: 2}]"])
    with pytest.raises(ValueError, match="names each reward once"):
        build_reward(cfg, "gold")


def test_ppo_with_kl_in_reward_trains_against_the_reward_model(rms, tiny_model_dir, tmp_path):
    from reasoner.train.metrics import read_metrics
    from reasoner.train.trainer import train

    cfg = load_config(None, [
        "algo.name=ppo", "algo.kl_in_reward=true", "algo.beta=0.05", "task.name=preference", "task.eval_size=4",
        "task.rewards=[{name: model}]", f"reward_model.paths=[{rms[0]}, {rms[1]}]", "reward_model.normalize=batch",
        f"model.path={tiny_model_dir}", "sft.steps=0", "rollout.n=2", "rollout.max_new_tokens=8",
        "train.steps=2", "train.prompts_per_step=4", "train.eval_every=0", "train.save_every=0",
        "train.tensorboard=false", f"train.output_dir={tmp_path}/ppo", "optim.lr=1e-3",
    ])  # fmt: skip
    result = train(cfg, progress=False)
    rows = [r for r in read_metrics(tmp_path / "ppo" / "metrics.jsonl") if "reward/mean" in r]
    assert len(rows) == 2  # the ensemble scored every step, and the critic trained
    assert all(r["reward/rm_std"] > 0 and "value/loss" in r for r in rows)
    assert result["eval_after"] >= 0.0
