"""`make train-real`'s config on SmolLM2-135M-Instruct: one small GRPO step runs end to end and moves the weights."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reasoner.config import load_config
from reasoner.train.trainer import train

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.real_model
def test_one_grpo_step_of_the_real_config_runs_and_moves_the_weights(real_model_dir, tmp_path):
    # a reward that tells samples apart, so the step has a gradient whatever the untrained model answers
    (tmp_path / "parity.py").write_text(
        "def parity(completions, **kw):\n    return [len(c) % 2 for c in completions]\n"
    )
    cfg = load_config(REPO / "configs" / "real-grpo.yaml", [
        f"model.path={real_model_dir}", f"train.output_dir={tmp_path / 'run'}", "train.steps=1", "train.prompts_per_step=2",
        "rollout.n=4", "rollout.max_new_tokens=12", "task.eval_size=2", "train.save_every=0",
        "train.tensorboard=false", "optim.warmup_steps=0", "optim.lr=1e-4", f"task.reward={tmp_path}/parity.py:parity",
    ])  # fmt: skip
    result = train(cfg, progress=False)
    assert {"eval_before", "eval_after", "gain", "eval_prompts", "model", "wall_s"} <= result.keys()
    assert result["eval_prompts"] == 2 and result["model"] == str(real_model_dir)
    (step,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
               if "loss" in json.loads(line)]  # fmt: skip
    assert torch.isfinite(torch.tensor(step["loss"]))
    before, after = (
        load_file(real_model_dir / "model.safetensors"),
        load_file(tmp_path / "run" / "final" / "model.safetensors"),
    )
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[name], after[name])  # full fine-tuning: the base weights moved
