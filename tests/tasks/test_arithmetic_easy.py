"""The one- and two-step arithmetic task that `make train-real` trains SmolLM2 on, and that run's config."""

from pathlib import Path

from reasoner.config import load_config
from reasoner.rewards.math import math_reward
from reasoner.tasks import get_task

REPO = Path(__file__).resolve().parents[2]


def test_arithmetic_easy_has_one_or_two_steps_and_disjoint_splits():
    task = get_task("arithmetic-easy")
    train, test = task.load(None, "train", 3000, 0), task.load(None, "test", 500, 0)
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert [e.prompt for e in test] == [e.prompt for e in task.load(None, "test", 500, 0)]
    steps = [e.solution.count("=") for e in test]  # test solutions show every step
    assert set(steps) == {1, 2}
    assert all(math_reward(e.solution, e.gold) == 1.0 for e in test + train)
    # its own stream: not the default task's problems
    default = get_task("arithmetic").load(None, "test", 500, 0)
    assert not {e.prompt for e in test[:100]} <= {e.prompt for e in default}
    assert {e.solution.count("=") for e in default} == {2, 3}


def test_real_grpo_config_trains_smollm2_on_the_easy_task_with_200_held_out_prompts():
    cfg = load_config(REPO / "configs" / "real-grpo.yaml")
    assert cfg.model.path == "runs/smollm2-135m-instruct"  # what `make real-model` builds
    assert cfg.task.name == "arithmetic-easy" and cfg.task.chat_template and "####" in cfg.task.system_prompt
    assert cfg.task.eval_size >= 200 and cfg.train.eval_temperature == 0.0  # greedy, as the issue asks
    assert cfg.sft.steps == 0
