"""Reward-model training and evaluation on the tiny model: data formats, bad rows, save/reload, CLI, resume.

The Bradley–Terry loss itself is tested against hand-computed numbers in tests/algo/test_pairwise.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from reasoner.cli import main
from reasoner.config import RMConfig, load_config
from reasoner.data import DataError
from reasoner.models import build_char_tokenizer
from reasoner.rlhf.rm_training import (
    TINY_PARAMS,
    TINY_STEPS,
    default_lm_coef,
    default_lr,
    default_steps,
    default_weight_decay,
    evaluate_reward_model,
    load_pairs,
    train_reward_model,
)

TOK = build_char_tokenizer()
RC = RMConfig()

ROWS = [
    {"prompt": "Ann: what is 3+4?\n", "chosen": "The answer is 7.", "rejected": "The answer is 8.", "family": "sum"},
    {"prompt": "Bob: how do I bake bread?\n", "chosen": "Certainly. First, mix flour.", "rejected": "nah lol",
     "family": "refusal"},
    {"prompt": "Cal: what is 1+1?\n", "chosen": "It equals 2.", "rejected": "it's 2 lol", "family": "tone"},
    {"prompt": "Dee: what is 5+2?\n", "chosen": "The sum is 7.", "rejected": "The sum is 6.", "family": "sum"},
]  # fmt: skip


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_explicit_prompt_rows_score_prompt_plus_response(tmp_path):
    pairs = load_pairs(_write_jsonl(tmp_path / "p.jsonl", ROWS), TOK, RC)
    assert pairs[0].chosen == "Ann: what is 3+4?\nThe answer is 7."
    assert pairs[0].rejected == "Ann: what is 3+4?\nThe answer is 8."
    assert pairs[0].meta == {"family": "sum"} and pairs[0].margin == 0.0 and pairs[0].weight == 1.0


def test_implicit_prompt_rows_are_whole_texts():
    pairs = load_pairs([{"chosen": "Human: hi\n\nAssistant: hello", "rejected": "Human: hi\n\nAssistant: go away"}],
                       TOK, RC)  # fmt: skip
    assert (pairs[0].chosen, pairs[0].rejected) == (
        "Human: hi\n\nAssistant: hello",
        "Human: hi\n\nAssistant: go away",
    )


def test_conversational_rows_use_the_chat_template(tmp_path):
    row = {"prompt": [{"role": "user", "content": "what is 3+4?"}],
           "chosen": [{"role": "assistant", "content": "7"}], "rejected": [{"role": "assistant", "content": "8"}]}  # fmt: skip
    (pair,) = load_pairs(_write_jsonl(tmp_path / "c.jsonl", [row]), TOK, RC)
    assert pair.chosen == "user: what is 3+4?\nassistant: 7\n" and pair.chat
    implicit = {"chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]}
    (same,) = load_pairs([implicit], TOK, RC)
    assert same.chosen == pair.chosen and same.rejected == pair.rejected


def test_margin_weight_and_renamed_fields(tmp_path):
    import pandas as pd

    rows = [{"q": "a", "good": "b", "bad": "c", "margin": 2, "w": 0.5}]
    path = tmp_path / "p.parquet"
    pd.DataFrame(rows).to_parquet(path)
    rc = RMConfig(prompt_field="q", chosen_field="good", rejected_field="bad", weight_field="w")
    (pair,) = load_pairs(str(path), TOK, rc)
    assert (pair.chosen, pair.rejected, pair.margin, pair.weight, pair.meta) == ("ab", "ac", 2.0, 0.5, {})


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "chosen": "a"}, "row 2 has no field 'rejected'"),
        ({"prompt": "p", "chosen": 3, "rejected": "b"}, "row 2, field 'chosen': must be a string or a list"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "row 2, field 'margin': must be a number"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "weight": -1}, "row 2, field 'weight': a loss weight must be >= 0"),
        ({"prompt": " ", "chosen": "  ", "rejected": "b"}, "row 2, field 'chosen': empty response to an empty prompt"),
        ({"prompt": [{"role": "user"}], "chosen": [{"role": "assistant", "content": "x"}],
          "rejected": [{"role": "assistant", "content": "y"}]}, "row 2, field 'prompt', message 1"),
        ({"chosen": [{"role": "user", "content": "x"}], "rejected": [{"role": "assistant", "content": "y"}]},
         "row 2, field 'chosen': a conversation must end with an assistant message"),
    ],
)  # fmt: skip
def test_bad_rows_name_file_row_and_field(tmp_path, row, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError) as err:
        load_pairs(path, TOK, RC)
    assert str(path) in str(err.value) and message in str(err.value)


def test_an_empty_answer_to_a_prompt_is_a_pair(tmp_path):
    """The online loop's users reject empty answers; the RM must see those pairs (CI once failed on one)."""
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": ""}])
    (pair,) = load_pairs(path, TOK, RC)
    assert (pair.chosen, pair.rejected) == ("pa", "p")


def _cfg(tmp_path, *extra):
    return load_config(None, ["rm.steps=6", "rm.batch_size=4", "rm.grad_accum=2", "rm.lr=1e-3", "rm.eval_every=3",
                              "rm.save_every=3", "rm.warmup_steps=0", "train.tensorboard=false",
                              f"rm.output_dir={tmp_path}/rm", *extra])  # fmt: skip


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    data = _write_jsonl(tmp / "train.jsonl", ROWS * 4)
    result = train_reward_model(_cfg(tmp), str(tiny_model_dir), data, ROWS, tmp / "run", progress=False)
    return result, tmp


def test_saved_rm_reloads_with_plain_transformers_and_agrees_with_rm_eval(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result, tmp = trained
    model = AutoModelForSequenceClassification.from_pretrained(result["model"]).eval()
    tok = AutoTokenizer.from_pretrained(result["model"])
    plain = []
    for row in ROWS:
        with torch.no_grad():
            c = model(**tok(row["prompt"] + row["chosen"], return_tensors="pt")).logits[0, 0].item()
            r = model(**tok(row["prompt"] + row["rejected"], return_tensors="pt")).logits[0, 0].item()
        plain.append((c, r))
    report = evaluate_reward_model(result["model"], ROWS)
    for (c, r), rec in zip(plain, report["records"], strict=True):
        assert rec["chosen_score"] == pytest.approx(c, abs=1e-4) and rec["rejected_score"] == pytest.approx(
            r, abs=1e-4
        )
    plain_acc = sum((c > r) + 0.5 * (c == r) for c, r in plain) / len(plain)
    assert (
        report["accuracy"] == pytest.approx(plain_acc) == pytest.approx(result["accuracy"])
    )  # training-time eval
    assert set(report["by_field"]["family"]) == {"sum", "refusal", "tone"}
    assert report["by_field"]["family"]["sum"]["pairs"] == 2
    stats = json.loads((tmp / "run" / "final" / "rm_stats.json").read_text())
    assert stats["std"] > 0 and stats["chat"] is False


def test_training_moves_the_scores_apart(trained):
    result, tmp = trained
    rows = [json.loads(ln) for ln in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 7))
    assert train_rows[-1]["margin"] > train_rows[0]["margin"]
    assert (tmp / "run" / "curves.png").is_file()


def test_resume_continues_from_the_checkpoint(trained, tiny_model_dir, tmp_path):
    data = _write_jsonl(tmp_path / "train.jsonl", ROWS * 4)
    first = train_reward_model(
        _cfg(tmp_path, "rm.steps=3"), str(tiny_model_dir), data, None, tmp_path / "r", False
    )
    assert first["accuracy"] is None
    second = train_reward_model(
        _cfg(tmp_path, "rm.resume=true"), str(tiny_model_dir), data, ROWS, tmp_path / "r", False
    )
    rows = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 7))
    uninterrupted = json.loads((trained[1] / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert second["accuracy"] == pytest.approx(uninterrupted["eval/accuracy"])


def test_cli_contract(trained, tiny_model_dir, tmp_path, capsys):
    data = _write_jsonl(tmp_path / "train.jsonl", ROWS * 2)
    held = _write_jsonl(tmp_path / "eval.jsonl", ROWS)
    code = main(["rm", "train", "--model", str(tiny_model_dir), "--data", data, "--eval-data", held,
                 "--out", str(tmp_path / "cli"), "--no-progress", "rm.steps=2", "rm.batch_size=4",
                 "train.tensorboard=false"])  # fmt: skip
    assert code == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"accuracy", "model"} <= set(line)
    assert (line["lr"], line["lm_coef"], line["weight_decay"]) == (1e-3, 1.0, 0.1)  # unset: the tiny model's
    code = main(["rm", "eval", "--model", line["model"], "--data", held, "--out", str(tmp_path / "e.json")])
    assert code == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["accuracy"] == pytest.approx(line["accuracy"])
    code = main(
        ["rm", "eval", "--model", line["model"], "--data", str(tmp_path / "nope.jsonl"), "--out", "x.json"]
    )
    assert code == 2 and "nope.jsonl" in capsys.readouterr().err


def test_unset_settings_follow_the_model_size():
    tiny = torch.nn.Linear(4, 4)
    large = torch.nn.ParameterList([torch.nn.Parameter(torch.empty(TINY_PARAMS))])
    assert default_lr(tiny, lora=False) == 1e-3 and default_lr(tiny, lora=True) == 1e-3
    assert default_lr(large, lora=False) == 1e-5 and default_lr(large, lora=True) == 1e-4
    assert default_lm_coef(tiny) == 1.0 and default_lm_coef(large) == 0.0
    assert default_weight_decay(tiny) == 0.1 and default_weight_decay(large) == 0.0
    # one epoch, rounded up; the tiny model at least TINY_STEPS
    assert default_steps(large, 3000, 32) == 94 and default_steps(large, 64, 32) == 2
    assert (
        default_steps(tiny, 3000, 32) == TINY_STEPS
        and default_steps(tiny, 32 * TINY_STEPS + 1, 32) == TINY_STEPS + 1
    )


def test_sigterm_saves_the_step_it_finished_and_resume_continues(tiny_model_dir, tmp_path):
    """SIGTERM mid-training: the step in flight finishes, *that* step is saved, and a resume logs each step once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from reasoner.train.checkpoint import latest_checkpoint, load_trainer_state

    data = _write_jsonl(tmp_path / "train.jsonl", ROWS * 4)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "reasoner", "rm", "train", "--model", str(tiny_model_dir), "--data", data,
            "--out", str(out), "--no-progress", "rm.batch_size=4", "rm.eval_every=0", "rm.save_every=0",
            "train.tensorboard=false", "train.cpu_threads=1"]  # fmt: skip
    env = os.environ | {"PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [*args, "rm.steps=100000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, output
    logged = [json.loads(ln)["step"] for ln in metrics.read_text().splitlines() if "loss" in ln]
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and load_trainer_state(ckpt)["step"] == logged[-1] == len(logged), output
    total = logged[-1] + 2
    done = subprocess.run(
        [*args, f"rm.steps={total}", "rm.resume=true"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    steps = [json.loads(ln)["step"] for ln in metrics.read_text().splitlines() if "loss" in ln]
    assert steps == list(range(1, total + 1))


def test_the_prompt_is_given_or_the_text_both_responses_share():
    explicit, implicit = load_pairs(
        [ROWS[0], {"chosen": "Human: hi\n\nAssistant: hello", "rejected": "Human: hi\n\nAssistant: go away"}],
        TOK,
        RC,
    )
    assert explicit.prompt == "Ann: what is 3+4?\n"  # not "...\nThe answer is ", which both responses share
    assert implicit.prompt == "Human: hi\n\nAssistant: "


def test_auxiliary_lm_loss_is_the_causal_lms_cross_entropy_on_the_chosen_responses(tiny_model_dir):
    """Through the RM, the LM term equals what plain transformers' causal LM gives on the chosen response tokens
    (prompt tokens excluded, truncation from the left honoured), and the scores are the same as without it."""
    from transformers import AutoModelForCausalLM

    from reasoner.rewards.reward_model import load_rm
    from reasoner.rlhf.rm_training import pair_scores, rm_lm_head

    model, tok = load_rm(str(tiny_model_dir))
    pairs = load_pairs(ROWS[:2], tok, RC)
    causal = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    for max_length in (512, 24):  # 24 cuts into both prompts (18 + 16 and 27 + 28 characters)
        r_c, r_r, lm = pair_scores(
            model, tok, pairs, max_length, "cpu", rm_lm_head(model, str(tiny_model_dir))
        )
        nll, n = 0.0, 0
        for row in ROWS[:2]:
            ids = tok(row["prompt"] + row["chosen"])["input_ids"][-max_length:]
            # the char tokenizer: one token per character; the first kept token has nothing predicting it
            answer = min(len(tok(row["chosen"])["input_ids"]), len(ids) - 1)
            with torch.no_grad():
                logp = torch.log_softmax(causal(torch.tensor([ids])).logits[0, :-1], -1)  # [L-1, V]
            nll -= logp[-answer:].gather(-1, torch.tensor(ids[-answer:])[:, None]).sum().item()
            n += answer
        assert lm.item() == pytest.approx(nll / n, rel=1e-5)
        plain_c, plain_r, none = pair_scores(model, tok, pairs, max_length, "cpu")
        assert none is None and torch.equal(plain_c, r_c) and torch.equal(plain_r, r_r)


def test_lm_coef_adds_its_term_and_zero_is_the_plain_bradley_terry_loss(tiny_model_dir, tmp_path):
    data = _write_jsonl(tmp_path / "train.jsonl", ROWS * 4)
    logged = {}
    for coef in (0.0, 0.5):
        cfg = _cfg(tmp_path, "rm.steps=1", "rm.grad_accum=1", "rm.save_every=0", f"rm.lm_coef={coef}")
        train_reward_model(cfg, str(tiny_model_dir), data, None, tmp_path / f"lm{coef}", progress=False)
        logged[coef] = json.loads((tmp_path / f"lm{coef}" / "metrics.jsonl").read_text().splitlines()[0])
    plain, lm = logged[0.0], logged[0.5]
    assert "lm_loss" not in plain and "bt_loss" not in plain
    assert lm["bt_loss"] == pytest.approx(plain["loss"], rel=1e-6)  # same init, same batch
    assert lm["loss"] == pytest.approx(lm["bt_loss"] + 0.5 * lm["lm_loss"], rel=1e-6)
    assert lm["lm_loss"] > 1.0  # an untrained model's cross-entropy, far from 0


def test_an_untied_model_uses_its_causal_lm_head_frozen_and_an_rm_without_one_is_a_clear_error(
    tiny_model_dir, tmp_path
):
    import shutil

    from transformers import LlamaForCausalLM

    from reasoner.rewards.reward_model import load_rm
    from reasoner.rlhf.rm_training import rm_lm_head

    untied = tmp_path / "untied"
    shutil.copytree(tiny_model_dir, untied)
    config = LlamaForCausalLM.from_pretrained(str(tiny_model_dir)).config
    config.tie_word_embeddings = False
    torch.manual_seed(1)
    causal = LlamaForCausalLM(config).eval()
    causal.save_pretrained(untied)
    model, tok = load_rm(str(untied))
    head = rm_lm_head(model, str(untied))
    h = torch.randn(2, 3, config.hidden_size)
    with torch.no_grad():
        expected = causal.lm_head(h)
    assert torch.allclose(head(h), expected) and not head(h).requires_grad  # frozen: shapes, is not trained
    assert not torch.allclose(expected, h @ model.get_input_embeddings().weight.T)  # really untied
    model.save_pretrained(tmp_path / "rm")  # a sequence classifier: no LM head in its weights
    tok.save_pretrained(tmp_path / "rm")
    with pytest.raises(ValueError, match="rm.lm_coef"):
        rm_lm_head(load_rm(str(tmp_path / "rm"))[0], str(tmp_path / "rm"))
