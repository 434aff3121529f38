import pytest

from reasoner.config import ConfigError, load_config


def test_defaults_follow_the_grpo_paper():
    cfg = load_config(None)
    assert (cfg.algo.beta, cfg.algo.kl_estimator, cfg.algo.clip_low, cfg.algo.clip_high) == (
        0.04,
        "k3",
        0.2,
        0.2,
    )


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algo:\n  beta: 0.1\nrollout:\n  n: 4\noptim:\n  lr: 1e-5\n")
    cfg = load_config(path, ["rollout.n=16", "optim.betas=[0.9, 0.95]"])
    assert (
        cfg.algo.beta == 0.1
        and cfg.rollout.n == 16
        and cfg.optim.lr == 1e-5
        and cfg.optim.betas == [0.9, 0.95]
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("algo.betta=0.1", "unknown key 'algo.betta'; valid keys under 'algo': beta"),
        ("trian.steps=3", "unknown key 'trian'; valid keys at the top level: algo"),
        ("rollout.n=many", "'rollout.n' must be int; got 'many'"),
        ("rollout.n=2.5", "'rollout.n' must be int; got 2.5"),
        ("train.resume=3", "'train.resume' must be bool"),
        ("algo.kl_estimator=k4", "'algo.kl_estimator' must be one of 'k1', 'k2', 'k3'; got 'k4'"),
        ("algo=3", "'algo' is a section; give its keys"),
        ("algo.beta", "must look like key.sub=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override])


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo:\n  beta: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("algo:\n  clip_hi: 0.3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'algo.clip_hi'.*typo.yaml"):
        load_config(typo)


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs, "configs/ is empty"
    for path in configs:
        load_config(path)


def test_the_config_is_frozen_and_with_values_returns_a_checked_copy():
    import dataclasses

    from reasoner.config import RewardTerm, with_values

    cfg = load_config(None, ["train.steps=7"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3
    new = with_values(cfg, {"train.steps": 3, "task.rewards": [RewardTerm(name="model")], "algo.beta": 0})
    assert (new.train.steps, cfg.train.steps) == (3, 7)
    assert new.task.rewards[0].name == "model" and new.algo.beta == 0.0
    with pytest.raises(ConfigError, match="'train.steps' must be int"):
        with_values(cfg, {"train.steps": "many"})
    with pytest.raises(ConfigError, match="unknown key 'train.stepz'"):
        with_values(cfg, {"train.stepz": 1})


def test_cross_field_checks_run_when_the_config_loads():
    with pytest.raises(ConfigError, match="algo.overlong_buffer must be in 0..rollout.max_new_tokens=8"):
        load_config(None, ["rollout.max_new_tokens=8", "algo.overlong_buffer=9"])
    with pytest.raises(ConfigError, match="algo.refill_rounds must be >= 0"):
        load_config(None, ["algo.refill_rounds=-1"])
