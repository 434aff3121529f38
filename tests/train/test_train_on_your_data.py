"""`reasoner train task.name=dataset ... task.reward=my_reward.py:fn` end to end: the README's "train on your own
data" contract, with a reward file that records what it was called with."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

REWARD = """
import json


def exact_number(completions, sol, tag, prompts, **kwargs):
    with open("calls.jsonl", "a") as f:
        f.write(json.dumps({"completions": completions, "sol": sol, "tag": tag, "prompts": prompts}) + "\\n")
    return [1.0 if c.strip() == str(s) else 0.0 for c, s in zip(completions, sol)]
"""

ROWS = [
    {"q": f"{a}+{b}=", "sol": a + b, "tag": f"t{i}"}
    for i, (a, b) in enumerate([(1, 2), (3, 4), (2, 2), (5, 1)])
]


def _train(tmp_path, model, *extra):
    cmd = [sys.executable, "-m", "reasoner", "train", "--no-progress", f"model.path={model}", "task.name=dataset",
           "task.train=data.jsonl", "task.test=data.jsonl", "task.prompt={q}", "task.answer=sol",
           "task.reward=my_reward.py:exact_number", "train.steps=2", "sft.steps=0", "train.cpu_threads=1",
           "rollout.n=2", "train.prompts_per_step=2", "rollout.max_new_tokens=4", "task.eval_size=4",
           "train.tensorboard=false", "train.output_dir=run", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_on_a_jsonl_file_with_a_reward_of_yours(tiny_model_dir, tmp_path):
    (tmp_path / "my_reward.py").write_text(REWARD)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    # the contract's command
    got = _train(tmp_path, tiny_model_dir, "task.reward_workers=1", "model.lora.r=8")
    assert got.returncode == 0, got.stderr[-3000:]
    result = json.loads(got.stdout.strip().splitlines()[-1])
    assert result["task"] == "dataset" and result["steps"] == 2 and 0.0 <= result["eval_after"] <= 1.0
    # LoRA leaves the adapter for peft and the merged model for plain transformers
    assert (tmp_path / "run" / "final-adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    by_prompt = {r["q"]: (r["sol"], r["tag"]) for r in ROWS}
    sizes = [len(c["completions"]) for c in calls]
    assert sizes == [4, 4, 4, 4]  # eval before, 2 steps of 2 prompts x 2 samples, eval after
    for call in calls:
        assert len(call["sol"]) == len(call["tag"]) == len(call["prompts"]) == len(call["completions"])
        assert [by_prompt[p] for p in call["prompts"]] == list(zip(call["sol"], call["tag"], strict=True))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum("reward/mean" in r for r in rows) == 2 and "eval/mean_reward" in rows[-1]


@pytest.mark.slow
def test_a_reward_of_yours_that_raises_stops_the_run_naming_it(tiny_model_dir, tmp_path):
    (tmp_path / "my_reward.py").write_text(REWARD.replace("return [", "return [1 / 0 if s == 7 else "))
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    got = _train(tmp_path, tiny_model_dir, "sft.steps=10")  # no task.solution: the warm start is skipped
    assert got.returncode == 1, got.stderr[-3000:]
    assert (
        "reasoner train: reward function 'exact_number' (my_reward.py:exact_number) raised ZeroDivisionError"
        in got.stderr
    )
    assert "on row 2 of data.jsonl" in got.stderr and "'3+4='" in got.stderr
    assert "no task.solution" in got.stdout


def test_sft_warm_start_on_the_solution_field_of_conversational_rows(tiny_model_dir, tmp_path):
    from reasoner.config import ConfigError, load_config
    from reasoner.train.sft import run_sft

    rows = [
        {"chat": [{"role": "user", "content": r["q"]}], "sol": r["sol"], "ref": f" {r['sol']}"} for r in ROWS
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["task.name=dataset", f"task.train={tmp_path / 'data.jsonl'}", "task.prompt=chat", "task.answer=sol",
            "sft.steps=2", "sft.batch_size=2", "sft.warmup_steps=0", "train.cpu_threads=1"]  # fmt: skip
    out = run_sft(
        load_config(None, [*base, "task.solution=ref"]), str(tiny_model_dir), tmp_path / "sft", False
    )
    assert json.loads((out / "sft_done.json").read_text())["steps"] == 2
    with pytest.raises(ConfigError, match="task.solution=FIELD"):
        run_sft(load_config(None, base), str(tiny_model_dir), tmp_path / "sft2", False)
