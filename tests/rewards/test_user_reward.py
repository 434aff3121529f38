"""Reward functions of yours (``task.reward=file.py:function`` / ``module:function``), called TRL's way."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reasoner.config import load_config
from reasoner.rewards import get_reward
from reasoner.rewards.combine import build_eval_reward, build_reward
from reasoner.rewards.user import RewardError, UserReward
from reasoner.rollout.base import Rollout
from reasoner.tasks import get_task
from reasoner.tasks.base import Example
from reasoner.train.trainer import score

REWARD_FILE = '''
import json, os


def exact_number(completions, sol, tag, prompts, **kwargs):
    """1 when the completion's last word is the gold number; records what it was given."""
    with open(os.environ["RECORD"], "a") as f:
        f.write(json.dumps({"completions": completions, "sol": sol, "tag": tag, "prompts": prompts,
                            "other": sorted(kwargs)}) + "\\n")
    return [1.0 if c.split()[-1:] == [str(s)] else 0.0 for c, s in zip(completions, sol)]


def unsure(completions, **kwargs):
    return [None if "?" in c else 0.5 for c in completions]


def picky(completions, sol, **kwargs):
    return [1.0 / int(s) for s in sol]  # sol "0" divides by zero


def needs_no_columns(completions):
    return [0.0] * len(completions)


def too_few(completions, **kwargs):
    return [1.0]
'''


def _examples(rows):
    return [
        Example(
            prompt=f"Q{i}: {r['q']}", gold=str(r["sol"]), meta={"index": i, "source": "data.jsonl"}, columns=r
        )
        for i, r in enumerate(rows)
    ]


ROWS = [{"q": "2+3", "sol": "5", "tag": "add"}, {"q": "9-4", "sol": "0", "tag": "sub"}, {"q": "1+1", "sol": "2", "tag": "add"}]  # fmt: skip


@pytest.fixture
def reward_file(tmp_path, monkeypatch):
    path = tmp_path / "my_reward.py"
    path.write_text(REWARD_FILE)
    monkeypatch.setenv("RECORD", str(tmp_path / "calls.jsonl"))
    return path


def _calls(reward_file):
    return [json.loads(line) for line in (reward_file.parent / "calls.jsonl").read_text().splitlines()]


def test_a_reward_from_a_file_gets_each_column_aligned_with_the_completions(reward_file):
    examples = _examples(ROWS)
    aligned = [examples[0], examples[0], examples[2], examples[1]]  # G completions per prompt, as in training
    out = get_reward(f"{reward_file}:exact_number")(["it is 5", "6", "so 2", "5"], aligned)
    assert out.scores == [1.0, 0.0, 1.0, 0.0]
    (call,) = _calls(reward_file)
    assert call["sol"] == ["5", "5", "2", "0"] and call["tag"] == ["add", "add", "add", "sub"]
    assert call["prompts"] == ["Q0: 2+3", "Q0: 2+3", "Q2: 1+1", "Q1: 9-4"]
    assert call["other"] == ["q"]  # every other column too


def test_a_reward_from_a_module_path(reward_file, monkeypatch):
    monkeypatch.syspath_prepend(str(reward_file.parent))
    out = get_reward("my_reward:exact_number")(["5"], _examples(ROWS[:1]))
    assert out.scores == [1.0] and _calls(reward_file)[0]["sol"] == ["5"]


def test_none_and_nan_mean_could_not_score_and_are_masked(reward_file):
    fn = get_reward(f"{reward_file}:unsure")
    rollouts = [
        Rollout(prompt_index=i, prompt_ids=[], completion_ids=[], text=t, finish_reason="stop")
        for i, t in enumerate(("sure", "maybe?"))
    ]
    rewards, scored, metrics = score(fn, None, 0.0, rollouts, _examples(ROWS[:2]))
    assert scored.tolist() == [True, False] and rewards.tolist() == [0.5, 0.0]
    assert metrics["unscored_frac"] == 0.5


def test_a_reward_that_raises_names_the_function_the_example_and_its_line(reward_file):
    fn = get_reward(f"{reward_file}:picky")
    with pytest.raises(RewardError) as info:
        fn(["a", "b", "c"], _examples(ROWS))
    message = str(info.value)
    assert "reward function 'picky'" in message and "ZeroDivisionError: float division by zero" in message
    assert "on row 2 of data.jsonl" in message and "'Q1: 9-4'" in message and "'b'" in message
    assert "my_reward.py" in message and "return [1.0 / int(s) for s in sol]" in message  # the user's frame
    assert isinstance(info.value.__cause__, ZeroDivisionError)  # chained, not swallowed


def test_a_signature_without_the_columns_gets_a_hint(reward_file):
    with pytest.raises(
        RewardError, match=r"unexpected keyword argument(.|\n)*end the signature with \*\*kwargs"
    ):
        get_reward(f"{reward_file}:needs_no_columns")(["a"], _examples(ROWS[:1]))


def test_a_wrong_number_of_scores_fails(reward_file):
    with pytest.raises(
        RewardError, match=r"'too_few' must return a list of 2 scores .* it returned 1 values"
    ):
        get_reward(f"{reward_file}:too_few")(["a", "b"], _examples(ROWS[:2]))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nowhere.py:f", "no file 'nowhere.py'"),
        ("{file}:absent", "has no function 'absent'; it has: exact_number, needs_no_columns, picky"),
        ("no_such_module_xyz:f", "no module 'no_such_module_xyz'"),
        ("{file}:", "give 'path/to/file.py:function'"),
    ],
)
def test_a_bad_spec_fails_with_the_fix(reward_file, spec, match):
    with pytest.raises(RewardError, match=match):
        get_reward(spec.format(file=reward_file))


def test_several_user_rewards_with_weights(reward_file):
    cfg = load_config(None, [f"task.rewards=[{{name: '{reward_file}:exact_number', weight: 2.0}}, "
                             f"{{name: '{reward_file}:unsure', weight: 0.5}}]"])  # fmt: skip
    out = build_reward(cfg, "math")(["is 5", "so 7?"], _examples(ROWS[:2]))
    assert out.scores == [2.0 * 1.0 + 0.5 * 0.5, None]
    assert out.metrics == {"exact_number": 0.5, "unsure": 0.5}


def test_task_reward_scores_training_and_evaluation(reward_file):
    cfg = load_config(None, ["task.name=dataset", f"task.reward={reward_file}:exact_number"])
    task = get_task("dataset")
    train = build_reward(cfg, task.reward)
    assert isinstance(train, UserReward) and build_eval_reward(cfg, task, train) is train
    cfg = load_config(None, ["task.name=gsm8k"])  # a built-in task keeps its own reward
    assert build_eval_reward(cfg, get_task("gsm8k"), build_reward(cfg, "math")) is get_reward("math")


def test_worker_processes_score_like_the_caller_and_report_errors(reward_file):
    examples = _examples(ROWS) * 3
    texts = ["5", "0", "x 2"] * 3
    pooled = UserReward(f"{reward_file}:exact_number", workers=2)
    try:
        assert (
            pooled(texts, examples).scores
            == UserReward(f"{reward_file}:exact_number")(texts, examples).scores
        )
        assert {len(c["sol"]) for c in _calls(reward_file)[:2]} == {
            5,
            4,
        }  # two chunks, then the in-process call
    finally:
        pooled.close()
    picky = UserReward(f"{reward_file}:picky", workers=2)
    try:
        with pytest.raises(
            RewardError, match=r"(?s)ZeroDivisionError.*on row 5 of data.jsonl.*return \[1.0 / int"
        ):
            picky(texts[:3] * 2, _examples(ROWS[:1] * 3 + ROWS))
    finally:
        picky.close()


def test_reward_source_with_a_syntax_error_is_reported(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text(textwrap.dedent("def f(completions, **kw)\n    return []\n"))
    with pytest.raises(RewardError, match=r"(?s)importing .*broken.py failed.*SyntaxError"):
        get_reward(f"{bad}:f")


def test_workers_run_from_a_script_on_stdin_without_a_main_guard(reward_file):
    script = (
        "from reasoner.rewards.user import UserReward\n"
        "from reasoner.tasks.base import Example\n"
        f"r = UserReward({str(reward_file) + ':unsure'!r}, workers=2)\n"
        "print(r(['a', 'b?', 'c'], [Example('p', 'g')] * 3).scores)\n"
    )
    repo = str(Path(__file__).resolve().parents[2])
    got = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": repo})  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "[0.5, None, 0.5]"


def test_a_worker_that_dies_is_reported(tmp_path):
    path = tmp_path / "dies.py"
    path.write_text("import os\n\n\ndef f(completions, **kw):\n    os._exit(3)\n")
    fn = UserReward(f"{path}:f", workers=1)
    try:
        with pytest.raises(RewardError, match=r"worker process \d+ died \(exit code 3\)"):
            fn(["a"], _examples(ROWS[:1]))
    finally:
        fn.close()
