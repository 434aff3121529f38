"""The online loop on the tiny model with a real server, real simulated users over HTTP and a real SQLite store:
the gate on real models, and kill -9 during collection, RM training and the RL round, each resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reasoner.config import load_config

REPO = Path(__file__).resolve().parents[2]


def tiny_overrides(model: Path, sft_dir: Path, run: Path) -> list[str]:
    """Everything at toy size: one round of a few pairs, a few RM and RL steps."""
    return [
        f"model.path={model}", "task.name=preference", "task.chat_template=true",
        "sft.steps=60", "sft.batch_size=16", "sft.warmup_steps=5", f"sft.output_dir={sft_dir}",
        "rollout.n=4", "rollout.max_new_tokens=24", "algo.beta=0.04", "optim.lr=1e-4",
        "train.steps=2", "train.prompts_per_step=4", "train.micro_batch_size=64", "train.save_every=1",
        "train.cpu_threads=1", "train.tensorboard=false",
        "rm.steps=4", "rm.batch_size=8", "rm.save_every=0", "rm.eval_every=0", "rm.stats_samples=16", "rm.warmup_steps=0",
        f"serve.db={run}/feedback.db", "serve.cpu_threads=1",
        f"online.output_dir={run}", "online.rounds=1", "online.min_pairs=6", "online.users=2",
        "online.holdout_frac=0.34", "online.gate_samples=1", "online.satisfaction_prompts=3", "online.max_tokens=24",
        "online.collect_timeout_s=120",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def warm_start(tiny_model_dir, tmp_path_factory) -> Path:
    """The SFT warm start, trained once; every run below reuses it through run_sft's cache."""
    from reasoner.train.sft import run_sft

    sft_dir = tmp_path_factory.mktemp("online-sft") / "sft"
    cfg = load_config(None, tiny_overrides(tiny_model_dir, sft_dir, sft_dir.parent / "unused"))
    run_sft(cfg, str(tiny_model_dir), sft_dir, progress=False)
    return sft_dir


def launch(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "reasoner", "online", "--no-progress", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def kill_when(proc: subprocess.Popen, ready, timeout: float = 600) -> str:
    """Read the run's output until ``ready()`` holds, then SIGKILL it; returns what it printed."""
    import threading

    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + timeout
    while not ready("".join(out)):
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended (rc {proc.returncode}) before the kill point:\n{''.join(out)[-3000:]}"
            )
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"kill point not reached in {timeout}s:\n{''.join(out)[-3000:]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(5)
    return "".join(out)


def finish(args: list[str]) -> tuple[dict, str]:
    proc = launch(args)
    text, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, text[-4000:]
    return json.loads(text.strip().splitlines()[-1]), text


def check_resumed(run: Path, result: dict) -> None:
    from reasoner.online.simusers import Journal
    from reasoner.serve.store import FeedbackStore

    store = FeedbackStore(str(run / "feedback.db"))
    journal = Journal(run / "simusers" / "journal.jsonl")
    assert store.count_feedback() == journal.acks == result["feedback_rows"] and not journal.pending
    names = [v["name"] for v in store.versions()]
    assert names == [f"v{i}" for i in range(len(names))] == result["versions"]
    assert set(result["satisfaction"]) == set(names) and result["satisfaction_before"] is not None
    for r in range(1, 2):  # every stage of the round recorded once, in order
        assert all(
            store.get_state(f"round/{r}/{s}") is not None for s in ("collect", "rm", "rl", "gate", "deploy")
        )
    lines = [json.loads(x) for x in (run / "rounds" / "1" / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "reward/mean" in m] == [1, 2]  # each RL step trained once
    journal.close()
    store.close()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["collect", "rm", "rl"])
def test_kill_9_and_resume(stage, tiny_model_dir, warm_start, tmp_path):
    run = tmp_path / "run"
    args = tiny_overrides(tiny_model_dir, warm_start, run)
    journal = run / "simusers" / "journal.jsonl"
    points = {
        # some feedback acknowledged, more in flight
        "collect": lambda out: journal.is_file() and journal.read_text().count('"ack"') >= 3,
        # train_reward_model has started writing its run directory
        "rm": lambda out: (run / "rounds" / "1" / "rm" / "config.json").is_file(),
        # the RL round has checkpointed its first step and not finished
        "rl": lambda out: (run / "rounds" / "1" / "rl" / "checkpoints" / "latest").is_file(),
    }
    printed = kill_when(launch(args), points[stage])
    assert "Traceback" not in printed, printed[-3000:]
    result, text = finish(args)
    if stage == "rl":
        assert "[train] resumed from" in text  # continued from its checkpoint, not trained again
    check_resumed(run, result)


@pytest.mark.slow
def test_gate_refuses_a_worse_candidate(tiny_model_dir, warm_start):
    """The warm start against a random-weight model that writes noise: refused (win rate, KL); against
    itself: accepted (not worse). The scorer is the formal-tone gold rule, a real verifier of tone."""
    import random

    from reasoner.online.gate import compare, decide
    from reasoner.tasks.preference import gold_score, make_prompt

    rng = random.Random(0)
    prompts = [make_prompt(rng) for _ in range(12)]
    from reasoner.models import load_tokenizer

    tok = load_tokenizer(str(warm_start))

    def render(p):
        return tok.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )

    def scorer(ps, rs):
        return [gold_score("formal-tone", p, r) for p, r in zip(ps, rs, strict=True)]

    settings = dict(min_win_rate=0.5, score_tolerance=0.0, verifiable_tolerance=0.0, max_kl=5.0)
    worse = compare(
        str(tiny_model_dir), str(warm_start), prompts, scorer, samples=2, max_new_tokens=24, render=render
    )
    ok, reasons = decide(worse, **settings)
    assert not ok and worse["score_parent"] > worse["score_candidate"] and worse["kl"] > 5.0, (worse, reasons)
    same = compare(
        str(warm_start), str(warm_start), prompts, scorer, samples=2, max_new_tokens=24, render=render
    )
    assert decide(same, **settings) == (True, []) and abs(same["kl"]) < 1e-4
