"""The online loop on the tiny model with a real server, real simulated users over HTTP and a real SQLite store:
the gate on real models, and kill -9 during collection, RM training, the RL round, the canary and after a
promotion, each resumed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reasoner.config import load_config, with_values
from reasoner.online.loop import STAGES

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
        "online.collect_timeout_s=120", "online.canary_frac=0.5", "online.canary_min_thumbs=3",
        # the toy round barely moves the policy: the gate lets it through so that the canary decides
        "online.gate_min_win_rate=0", "online.gate_score_tolerance=100", "online.gate_max_kl=1000",
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


def _candidate_thumbs(run: Path) -> int:
    from reasoner.serve.store import FeedbackStore

    store = FeedbackStore(str(run / "feedback.db"))
    try:
        return store.thumbs().get("v1", (0, 0))[1]
    finally:
        store.close()


def check_resumed(run: Path, result: dict) -> None:
    from reasoner.online.simusers import Journal
    from reasoner.serve.store import FeedbackStore

    store = FeedbackStore(str(run / "feedback.db"))
    journal = Journal(run / "simusers" / "journal.jsonl")
    assert store.count_feedback() == journal.acks == result["feedback_rows"] and not journal.pending
    names = [v["name"] for v in store.versions()]
    assert names == ["v0", "v1"] and result["versions"] in (["v0"], ["v0", "v1"])  # v1: round 1's candidate
    assert set(result["satisfaction"]) == set(names) and result["satisfaction_before"] is not None
    for r in range(1, 2):  # every stage of the round recorded once, in order
        assert all(store.get_state(f"round/{r}/{s}") is not None for s in STAGES)
    # one decision per round, recorded with the thumbs that made it; the server serves what the store says
    (decision,) = store.decisions()
    (row,) = result["rounds"]
    assert (row["candidate"], row["decision"]) == ("v1", decision["decision"])
    assert row["live"]["thumbs"] == [decision["thumbs"], decision["against_thumbs"]]
    assert min(row["live"]["thumbs"]) >= 3 or decision["meta"]["why"]
    assert (
        store.deployed()["name"]
        == ("v1" if decision["decision"] == "promoted" else "v0")
        == result["serving"]
    )
    lines = [json.loads(x) for x in (run / "rounds" / "1" / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "reward/mean" in m] == [1, 2]  # each RL step trained once
    journal.close()
    store.close()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["collect", "rm", "rl", "canary", "promoted"])
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
        # the candidate serves part of the traffic and has been judged a few times (3 needed)
        "canary": lambda out: "canary v1 on" in out and _candidate_thumbs(run) >= 1,
        # the decision is made and applied; the last measurement is under way
        "promoted": lambda out: "measuring the last version" in out,
    }
    if stage == "promoted":
        args.append("online.canary_alpha=1e-9")  # the toy candidate is promoted unless it is hopeless
    printed = kill_when(launch(args), points[stage])
    assert "Traceback" not in printed, printed[-3000:]
    result, text = finish(args)
    if stage == "rl":
        assert "[train] resumed from" in text  # continued from its checkpoint, not trained again
    if stage == "canary":  # the thumbs given before the kill still count: the canary picks up, not over
        assert "canary v1 on" in text and "round 1: rl" not in text
    check_resumed(run, result)
    if stage == "promoted":
        assert result["rounds"][0]["decision"] == "promoted" and result["serving"] == "v1"
        check_rollback_by_hand(args, run)


def check_rollback_by_hand(args: list[str], run: Path) -> None:
    """`reasoner online rollback v1`: v0 is deployed again, and the decision is recorded as by hand."""
    from reasoner.serve.store import FeedbackStore

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "reasoner", "online", "rollback", "v1", *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["serving"] == "v0" and out["decision"]["by"] == "hand"
    store = FeedbackStore(str(run / "feedback.db"))
    assert store.deployed()["name"] == "v0"
    assert [(d["version"], d["decision"], d["by"]) for d in store.decisions()][-1] == (
        "v1",
        "rolled_back",
        "hand",
    )
    store.close()
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "neither deployed nor in a canary" in again.stderr


@pytest.mark.slow
def test_canary_rolls_back_a_candidate_worse_on_live_thumbs(tiny_model_dir, warm_start, tmp_path):
    """The warm start deployed; the untrained tiny model (it writes noise) as round 1's candidate, past the gate.
    Real users over HTTP thumb both; the canary rolls the candidate back and v0 keeps serving. The 60-step warm
    start is rarely formal (about 6% thumbs up, the noise 0%): 100 thumbs each and alpha 0.1 tell them apart."""
    from reasoner.online.loop import OnlineLoop

    run = tmp_path / "run"
    args = tiny_overrides(tiny_model_dir, warm_start, run) + [
        "online.canary_min_thumbs=100", "online.canary_alpha=0.1", "online.users=4", "online.user_noise=0", "online.user_noise_spread=0"]  # fmt: skip
    loop = OnlineLoop(load_config(None, args), progress=False)
    loop.bootstrap()  # v0 = the warm start (cached SFT)
    loop.record("round/1/rl", {"parent": "v0", "candidate": str(tiny_model_dir), "rm": None})
    loop.record("round/1/gate", {"accept": True, "reasons": [], "win_rate": 1.0, "score_candidate": 1.0,
                                 "score_parent": 0.0, "kl": 0.0})  # fmt: skip
    loop.record("round/1/rm", {"window": {}})
    with loop.serving():
        canary = loop.stage_canary(1)
        loop.record("round/1/canary", canary)
        deploy = loop.stage_deploy(1)
        assert loop.service.policy.name == "v0" and loop.service.canary is None
    live = canary["live"]
    assert canary["decision"] == "rolled_back" and deploy["deployed"] is None, canary
    assert min(live["thumbs"]) >= 100 and live["candidate"] < live["deployed"] and canary["p_value"] < 0.1
    (d,) = loop.store.decisions()
    assert (d["version"], d["against"], d["decision"], d["thumbs"]) == (
        "v1",
        "v0",
        "rolled_back",
        live["thumbs"][0],
    )
    assert d["rate"] == pytest.approx(live["candidate"]) and loop.store.deployed()["name"] == "v0"
    loop.store.close()


@pytest.mark.slow
def test_gate_refuses_a_candidate_that_games_the_training_rm(tiny_model_dir, warm_start, tmp_path):
    """The round's own RM was trained to prefer the untrained model's noise (a reward model with a hole); the
    candidate is that noise model. Judged by the RM it maximised, it passes the gate; judged by the round's judge
    (an RM the round did not optimise, trained on what people preferred), it is refused."""
    from reasoner.models import load_policy, load_tokenizer
    from reasoner.online.loop import OnlineLoop, _write_jsonl
    from reasoner.rlhf.rm_training import train_reward_model
    from reasoner.rollout.base import SamplingParams
    from reasoner.rollout.hf import HFEngine
    from reasoner.tasks.preference import make_prompt, make_response

    run = tmp_path / "run"
    args = tiny_overrides(tiny_model_dir, warm_start, run) + [
        "online.gate_min_win_rate=0.5", "online.gate_score_tolerance=0", "rm.steps=40", "rm.lr=1e-3", "rm.lm_coef=0",
        "online.gate_samples=2"]  # fmt: skip
    cfg = load_config(None, args)
    rng = random.Random(0)
    prompts = [make_prompt(rng) for _ in range(48)]
    tok = load_tokenizer(str(warm_start))
    rendered = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in prompts]  # fmt: skip
    noise = HFEngine(load_policy(str(tiny_model_dir), "float32").eval(), tok).generate(
        rendered, SamplingParams(n=1, temperature=1.0, max_new_tokens=24, seed=0)
    )
    fluent = [make_response(p, ("good", "formal"), rng) for p in prompts]
    gamed = [
        {"prompt": p, "chosen": n.text, "rejected": f} for p, n, f in zip(prompts, noise, fluent, strict=True)
    ]
    honest = [
        {"prompt": p, "chosen": f, "rejected": n.text} for p, n, f in zip(prompts, noise, fluent, strict=True)
    ]
    rms = {}
    for name, rows in (("gamed", gamed), ("judge", honest)):
        rms[name] = train_reward_model(
            with_values(cfg, {"rm.output_dir": str(tmp_path / name)}),
            str(warm_start),
            rows,
            None,
            str(tmp_path / name),
            progress=False,
        )["model"]

    loop = OnlineLoop(cfg, progress=False)
    loop.bootstrap()
    _write_jsonl(run / "rounds" / "1" / "gate_prompts.jsonl", [{"prompt": p} for p in make_gate_prompts()])
    rl = {"parent": "v0", "candidate": str(tiny_model_dir), "rm": rms["gamed"]}
    loop.record("round/1/rl", rl)
    by_own_rm = loop.stage_gate(1)  # no judge recorded: the RM the round maximised judges (the old gate)
    assert by_own_rm["accept"] and by_own_rm["win_rate"] > 0.5, by_own_rm
    loop.record("round/1/rl", {**rl, "judge": rms["judge"]})
    by_judge = loop.stage_gate(1)
    assert not by_judge["accept"] and by_judge["judge"] == rms["judge"], by_judge
    assert by_judge["win_rate"] < 0.5 and any("win rate" in r for r in by_judge["reasons"])
    loop.store.close()


def make_gate_prompts() -> list[str]:
    from reasoner.tasks.preference import make_prompt

    rng = random.Random(1)  # prompts neither RM saw
    return [make_prompt(rng) for _ in range(12)]


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
