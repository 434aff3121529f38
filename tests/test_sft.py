"""Supervised warm start on the real tiny model: it learns, it is cached, and the cache follows the data."""

import json

import torch

from reasoner.config import load_config
from reasoner.models import load_policy
from reasoner.sft import run_sft
from reasoner.tasks import arithmetic


def _cfg(tmp_path, *extra):
    return load_config(None, ["task.name=arithmetic", "task.train_size=256", "sft.steps=4", "sft.batch_size=8",
                              "sft.warmup_steps=0", f"sft.output_dir={tmp_path / 'sft'}", *extra])  # fmt: skip


def test_sft_trains_saves_and_reuses_its_cache(tiny_model_dir, tmp_path, capsys):
    cfg = _cfg(tmp_path)
    out = run_sft(cfg, str(tiny_model_dir), cfg.sft.output_dir, progress=False)
    done = json.loads((out / "sft_done.json").read_text())
    assert done["steps"] == 4 and done["final_loss"] > 0
    before, after = (
        load_policy(str(tiny_model_dir), "float32", "cpu"),
        load_policy(str(out), "float32", "cpu"),
    )
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters(), strict=True))
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    run_sft(cfg, str(tiny_model_dir), cfg.sft.output_dir, progress=False)
    assert "reusing" in capsys.readouterr().out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_sft_cache_is_invalidated_when_the_task_data_changes(tiny_model_dir, tmp_path, capsys, monkeypatch):
    cfg = _cfg(tmp_path)
    run_sft(cfg, str(tiny_model_dir), cfg.sft.output_dir, progress=False)
    monkeypatch.setattr(arithmetic, "ANSWER_ONLY", 1.0)  # same config, different training solutions
    capsys.readouterr()
    run_sft(cfg, str(tiny_model_dir), cfg.sft.output_dir, progress=False)
    assert "reusing" not in capsys.readouterr().out
