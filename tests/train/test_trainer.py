"""End-to-end GRPO on the real tiny model with the real math checker, and kill-and-resume equivalence."""

import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reasoner.config import load_config
from reasoner.rollout import Rollout
from reasoner.train.batch import make_batch, sequence_logprobs
from reasoner.train.trainer import train

SEVEN_CLI = Path(__file__).with_name("seven_task.py")
runpy.run_path(str(SEVEN_CLI))  # registers the "seven" task

VOLATILE = ("time/", "tokens_per_s")


SEVEN = [
    "task.name=seven", "task.eval_size=16", "rollout.n=8", "rollout.max_new_tokens=6", "train.prompts_per_step=8",
    "train.micro_batch_size=32", "optim.lr=3e-3", "sft.steps=0", "train.eval_every=0", "train.tensorboard=false",
]  # fmt: skip


def _params(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


@pytest.mark.slow
def test_grpo_end_to_end_reward_rises_and_parameters_move(tiny_model_dir, tmp_path):
    cfg = load_config(None, SEVEN + [f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path}", "train.steps=30",
                                     "train.save_every=0"])  # fmt: skip
    result = train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward/mean"] for r in rows if "reward/mean" in r]
    assert len(rewards) == 30
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.2, f"mean reward did not rise: {first:.3f} -> {last:.3f}"
    from transformers import AutoModelForCausalLM

    before = _params(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    after = _params(AutoModelForCausalLM.from_pretrained(tmp_path / "final"))
    assert (after - before).abs().max() > 1e-3
    assert (
        result["algo"] == "grpo" and result["steps"] == 30 and (tmp_path / "curves.png").stat().st_size > 1000
    )
    for key in (
        "kl",
        "clip_frac",
        "entropy",
        "grad_norm",
        "zero_variance_frac",
        "truncated_frac",
        "lr",
        "completion_len",
    ):
        assert key in rows[-2], key  # the last row is the final evaluation


def _run(args, out: Path, signal_at: str = ""):
    cmd = [sys.executable, str(SEVEN_CLI), "train", "--no-progress", *args, f"train.output_dir={out}"]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0", "SEVEN_SIGNAL": signal_at},
        # A job started in the background inherits SIGINT ignored; the child must see Ctrl-C as a user's would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _stable(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


@pytest.mark.slow
def test_sigkill_and_resume_ends_with_the_same_metrics(tiny_model_dir, tmp_path):
    args = SEVEN + [
        f"model.path={tiny_model_dir}",
        "train.steps=8",
        "train.save_every=3",
        "train.eval_every=4",
    ]
    full = _run(args, tmp_path / "full")
    assert full.wait(timeout=600) == 0, full.stdout.read()

    killed = _run(args, tmp_path / "killed")
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 600
    while not (latest.is_file() and latest.read_text().strip() == "step-0000006"):
        assert killed.poll() is None and time.time() < deadline, "run ended before its step-6 checkpoint"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    resumed = _run(args + ["train.resume=true"], tmp_path / "killed")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resumed from" in out
    assert _stable(tmp_path / "killed" / "metrics.jsonl") == _stable(tmp_path / "full" / "metrics.jsonl")
    assert (
        json.loads(out.strip().splitlines()[-1])["eval_after"]
        == json.loads((tmp_path / "full" / "result.json").read_text())["eval_after"]
    )


def test_logprobs_under_left_padding_match_unpadded_forward(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rollouts = [
        Rollout(0, [5, 6, 7, 8], [9, 10, 2], "", "stop"),
        Rollout(1, [11, 12], [13], "", "length"),
    ]
    batch = make_batch(rollouts, pad_id=0)
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, batch, temperature=0.7)
        for i, r in enumerate(rollouts):
            ids = torch.tensor([r.prompt_ids + r.completion_ids])
            ref = torch.log_softmax(model(ids).logits[0, :-1] / 0.7, -1)
            ref = ref[len(r.prompt_ids) - 1 :].gather(-1, torch.tensor(r.completion_ids)[:, None])[:, 0]
            torch.testing.assert_close(logp[i, : len(r.completion_ids)], ref, atol=1e-5, rtol=1e-5)
    assert batch.completion_mask.tolist() == [[1, 1, 1], [1, 0, 0]]


# Reward calls in INTERRUPT runs: 1 = the first evaluation, 2-4 = steps 1-3, 5 = the evaluation at step 3,
# 6-8 = steps 4-6, 9 = the final evaluation. Checkpoints are due at step 4 and 6 only.
INTERRUPT = ["train.steps=6", "train.save_every=4", "train.eval_every=3", "train.cpu_threads=1"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    full = _run(SEVEN + [f"model.path={tiny_model_dir}"] + INTERRUPT, out)
    assert full.wait(timeout=600) == 0, full.stdout.read()
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "signal_at, saved",
    [
        ("reward:3:SIGTERM", 2),  # scoring step 2: finish step 2, save it (today: 'step 1' holding 2 updates)
        ("optimizer:5:SIGINT", 5),  # Ctrl-C inside optimizer.step() of step 5: save step 5, never half of it
        ("reward:5:SIGTERM", 3),  # during the evaluation at step 3: stop it, save step 3, redo it on resume
        ("reward:1:SIGINT", 0),  # during the first evaluation: save step 0
        ("reward:9:SIGTERM", 6),  # during the final evaluation: save step 6, evaluate on resume
    ],
    ids=[
        "sigterm-mid-step",
        "sigint-in-optimizer-step",
        "sigterm-mid-eval",
        "sigint-first-eval",
        "sigterm-final-eval",
    ],
)
def test_interrupt_saves_that_step_and_resumes_exactly(
    tiny_model_dir, tmp_path, uninterrupted, signal_at, saved
):
    args = SEVEN + [f"model.path={tiny_model_dir}"] + INTERRUPT
    stopped = _run(args, tmp_path, signal_at=signal_at)
    out, _ = stopped.communicate(timeout=600)
    assert stopped.returncode == 130, out
    assert f"interrupted: saved step {saved} " in out, out
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step-{saved:07d}"
    resumed = _run(args + ["train.resume=true"], tmp_path)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert f"resumed from {tmp_path / 'checkpoints'}" in out
    assert _stable(tmp_path / "metrics.jsonl") == _stable(uninterrupted / "metrics.jsonl")
    assert (
        json.loads(out.strip().splitlines()[-1])["eval_after"]
        == json.loads((uninterrupted / "result.json").read_text())["eval_after"]
    )


@pytest.mark.slow
def test_sigterm_from_outside_mid_run_resumes_exactly(tiny_model_dir, tmp_path, uninterrupted):
    args = SEVEN + [f"model.path={tiny_model_dir}"] + INTERRUPT
    stopped = _run(args, tmp_path)
    metrics, deadline = tmp_path / "metrics.jsonl", time.time() + 600
    while not (metrics.is_file() and '"step": 2,' in metrics.read_text()):
        assert stopped.poll() is None and time.time() < deadline, "run ended before step 2"
        time.sleep(0.02)
    stopped.send_signal(signal.SIGTERM)  # somewhere in step 3: generation, scoring or the update
    out, _ = stopped.communicate(timeout=600)
    assert stopped.returncode == 130 and "interrupted: saved step" in out, out
    resumed = _run(args + ["train.resume=true"], tmp_path)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert _stable(tmp_path / "metrics.jsonl") == _stable(uninterrupted / "metrics.jsonl")


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_at_once_without_saving(tiny_model_dir, tmp_path):
    run = _run(
        SEVEN + [f"model.path={tiny_model_dir}"] + INTERRUPT, tmp_path, signal_at="optimizer:2:SIGINT:2"
    )
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 130, out
    assert "saved step" not in out and not (tmp_path / "checkpoints" / "latest").exists()
    assert '"step": 2,' not in (tmp_path / "metrics.jsonl").read_text()  # stopped inside step 2


VARIANT_RUNS = {
    "gspo": ["algo.loss=gspo", "algo.inner_epochs=2", "algo.clip_low=0.0003", "algo.clip_high=0.0004"],
    "cispo": ["algo.loss=cispo", "algo.inner_epochs=2", "algo.loss_agg=token-mean", "algo.clip_low=1.0",
              "algo.clip_high=0.28"],
    "rloo": ["algo.name=rloo"],
    "reinforce++": ["algo.name=reinforce_plus_plus"],
    "reinforce++-baseline": ["algo.name=reinforce_plus_plus_baseline"],
    "dapo-refill": ["algo.refill_rounds=2"],
    "overlong-shaping": ["algo.overlong_buffer=2", "algo.overlong_penalty=0.2"],  # the outcome still dominates
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANT_RUNS))
def test_every_variant_raises_the_reward_end_to_end(tiny_model_dir, tmp_path, variant):
    cfg = load_config(None, SEVEN + VARIANT_RUNS[variant] + [f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path}",
                                                             "train.steps=20", "train.save_every=0",
                                                             "train.cpu_threads=1"])  # fmt: skip
    result = train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    # The task's own score (is the answer 7?), not the shaped reward: overlong shaping must not be the signal.
    accuracy = [r["accuracy"] for r in steps]
    first, last = sum(accuracy[:5]) / 5, sum(accuracy[-5:]) / 5
    # From ~0 (a random model): +0.1 in 20 steps is learning; overlong shaping, the slowest here, made +0.17.
    assert last > first + 0.1, f"{variant}: accuracy did not rise: {first:.3f} -> {last:.3f}"
    if variant == "dapo-refill":
        assert all(r["dynamic/rounds"] >= 1 for r in steps) and result["samples"] > 20 * 64
        assert result["samples"] == steps[-1]["samples"] == sum(r["dynamic/samples"] for r in steps)


@pytest.mark.slow
def test_dynamic_sampling_with_refill_resumes_exactly(tiny_model_dir, tmp_path):
    # The refill rounds move the prompt stream by a data-dependent amount: its position must be checkpointed.
    args = SEVEN + [f"model.path={tiny_model_dir}", "algo.refill_rounds=2"] + INTERRUPT
    full = _run(args, tmp_path / "full")
    assert full.wait(timeout=600) == 0, full.stdout.read()
    stopped = _run(args, tmp_path / "stopped", signal_at="reward:6:SIGTERM")  # a refill round of steps 2-5
    out, _ = stopped.communicate(timeout=600)
    assert stopped.returncode == 130 and "interrupted: saved step" in out, out
    resumed = _run(args + ["train.resume=true"], tmp_path / "stopped")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    rows = _stable(tmp_path / "stopped" / "metrics.jsonl")
    assert rows == _stable(tmp_path / "full" / "metrics.jsonl")
    assert sum(r.get("dynamic/rounds", 0) for r in rows) > 6  # some steps did refill
