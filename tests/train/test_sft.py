"""Supervised warm start on the real tiny model: it learns, it is cached, the cache follows the training data (not
the evaluation settings), and ``sft.eval_every`` logs a held-out loss."""

import json
from dataclasses import replace

import pytest
import torch

from reasoner.config import ConfigError, load_config
from reasoner.models import load_policy
from reasoner.tasks import TASKS, arithmetic
from reasoner.tasks.base import Task
from reasoner.train.metrics import read_metrics
from reasoner.train.sft import _cache_key, collate, encode_pairs, held_out_loss, run_sft


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


def test_sft_cache_ignores_evaluation_settings_but_not_training_ones(tiny_model_dir, tmp_path, capsys):
    run_sft(_cfg(tmp_path), str(tiny_model_dir), tmp_path / "sft", progress=False)
    capsys.readouterr()
    for same in (["task.eval_size=7"], ["task.test_split=other", "sft.eval_every=0", "sft.eval_size=3"]):
        run_sft(_cfg(tmp_path, *same), str(tiny_model_dir), tmp_path / "sft", progress=False)
        assert "reusing" in capsys.readouterr().out, same
    run_sft(_cfg(tmp_path, "task.train_size=128"), str(tiny_model_dir), tmp_path / "sft", progress=False)
    assert "reusing" not in capsys.readouterr().out, "other training examples must retrain"
    # Rendering is in the key too: the same examples under the chat template are another training set.
    examples = arithmetic.load(None, "train", 8, 0)
    plain, chat = _cfg(tmp_path), _cfg(tmp_path, "task.chat_template=true", "task.system_prompt=Be brief.")
    assert _cache_key(plain, str(tiny_model_dir), examples) != _cache_key(chat, str(tiny_model_dir), examples)


def test_sft_eval_every_logs_a_held_out_loss_at_steps_k_2k_and_the_last_without_changing_the_model(
    tiny_model_dir, tmp_path
):
    args = ["sft.steps=5", "sft.eval_every=2", "sft.eval_size=16"]
    out = run_sft(_cfg(tmp_path, *args), str(tiny_model_dir), tmp_path / "evaluated", progress=False)
    rows = read_metrics(out / "metrics.jsonl")
    evals = [(r["step"], r["eval/loss"]) for r in rows if "eval/loss" in r]
    assert [step for step, _ in evals] == [2, 4, 5]
    assert all(0 < loss < 20 for _, loss in evals)
    assert json.loads((out / "sft_done.json").read_text())["eval_loss"] == evals[-1][1]
    plain = run_sft(_cfg(tmp_path, "sft.steps=5"), str(tiny_model_dir), tmp_path / "plain", progress=False)
    assert not any("eval/loss" in r for r in read_metrics(plain / "metrics.jsonl"))
    a, b = (load_policy(str(d), "float32", "cpu").state_dict() for d in (out, plain))
    assert all(torch.equal(a[k], b[k]) for k in a), "evaluating must not change what SFT trains"


def test_held_out_loss_is_the_token_mean_over_every_batch(tiny_model_dir):
    from reasoner.models import load_tokenizer

    tok, model = load_tokenizer(str(tiny_model_dir)), load_policy(str(tiny_model_dir), "float32", "cpu")
    data = encode_pairs(tok, arithmetic.load(None, "test", 5, 0))
    model.train()
    whole = held_out_loss(model, data, tok.pad_token_id, batch_size=5)
    assert model.training, "the model goes back to training mode"
    model.eval()
    ids, mask, labels = collate(data, tok.pad_token_id)
    with torch.no_grad():
        assert whole == pytest.approx(
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.item(), rel=1e-5
        )
    assert held_out_loss(model, data, tok.pad_token_id, batch_size=2) == pytest.approx(whole, rel=1e-5)


def _no_test_solutions(source, split, size, seed):
    examples = arithmetic.load(source, split, size, seed)
    return [replace(ex, solution=None) for ex in examples] if split == "test" else examples


if "arithmetic-no-test-solutions" not in TASKS:
    TASKS.register("arithmetic-no-test-solutions")(
        Task(name="arithmetic-no-test-solutions", reward="math", load=_no_test_solutions)
    )


def test_sft_eval_every_needs_test_examples_with_solutions(tiny_model_dir, tmp_path):
    cfg = _cfg(tmp_path, "task.name=arithmetic-no-test-solutions", "sft.eval_every=2")
    with pytest.raises(ConfigError, match="sft.eval_every=0"):
        run_sft(cfg, str(tiny_model_dir), tmp_path / "sft", progress=False)
    assert not (tmp_path / "sft").exists()


@pytest.mark.parametrize("bad", [["sft.eval_every=-1"], ["sft.eval_every=5", "sft.eval_size=0"]])
def test_sft_refuses_a_negative_eval_every_or_an_empty_eval_set(tmp_path, bad):
    with pytest.raises(ConfigError, match="sft.eval_every must be >= 0"):
        _cfg(tmp_path, *bad)  # refused when the config loads, before any model does
