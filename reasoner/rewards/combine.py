"""Several rewards in one task, each with a weight (e.g. the math checker + a reward model), each logged on its own.

``task.rewards: [{name: math, weight: 1.0}, {name: model, weight: 0.5}]``. A sample that any term cannot score
(None) is unscored overall: a missing part must not silently count as 0. The legacy ``task.format_reward: w``
is the term ``{name: format, weight: w}``.

>>> combine_scores([[1.0, 0.0, None], [0.5, -1.0, 2.0]], [1.0, 0.5])
[1.25, -0.5, None]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from reasoner.registry import Registry
from reasoner.rewards import RewardFn, RewardOutput, get_reward

# Rewards that need the run's config and device to build (a reward model loads weights); the rest are plain
# functions in reasoner.rewards.REWARDS.
CONFIGURED_REWARDS: Registry[Callable] = Registry("configured reward")


def _model(cfg, device):
    from reasoner.rewards.reward_model import model_reward

    return model_reward(cfg, device)


CONFIGURED_REWARDS.register("model")(_model)


def combine_scores(
    per_term: Sequence[Sequence[float | None]], weights: Sequence[float]
) -> list[float | None]:
    """Weighted sum over terms of each sample's scores; None where any term gave None."""
    out = []
    for column in zip(*per_term, strict=True):
        out.append(
            None
            if any(s is None for s in column)
            else sum(w * s for w, s in zip(weights, column, strict=True))
        )
    return out


def reward_terms(cfg, task_reward: str) -> list[tuple[str, float]]:
    terms = [(t.name, t.weight) for t in cfg.task.rewards] or [(cfg.task.reward or task_reward, 1.0)]
    if cfg.task.format_reward > 0:
        terms.append(("format", cfg.task.format_reward))
    return terms


def resolve_reward(cfg, name: str, device=None) -> RewardFn:
    """One term: a configured reward (``model``), a function of yours (``file.py:function``), or a registered one."""
    if name in CONFIGURED_REWARDS:
        return CONFIGURED_REWARDS.get(name)(cfg, device)
    return get_reward(name, workers=cfg.task.reward_workers)


def check_reward_specs(cfg, task_reward: str) -> None:
    """Load every reward function of yours now (cheap), so a wrong spec fails before any model loads."""
    from reasoner.rewards.user import is_reward_spec, load_function

    for name in {n for n, _ in reward_terms(cfg, task_reward)} | {cfg.task.reward or task_reward}:
        if is_reward_spec(name):
            load_function(name)


def term_label(name: str) -> str:
    """The metric name of a term: a user reward ``dir/my_reward.py:exact_number`` logs as ``exact_number``."""
    return name.rpartition(":")[2]


def build_reward(cfg, task_reward: str, device=None) -> RewardFn:
    """The run's reward function: the task's own reward alone, or the weighted combination of ``task.rewards``."""
    terms = reward_terms(cfg, task_reward)
    names = [n for n, _ in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"task.rewards names each reward once; got {names}")
    fns = [resolve_reward(cfg, n, device) for n in names]
    if len(terms) == 1 and terms[0][1] == 1.0:
        return fns[0]
    labels = [term_label(n) for n in names]
    if len(set(labels)) != len(labels):  # two files with a function of the same name: log them by spec
        labels = names

    def combined(completions, examples, **kwargs) -> RewardOutput:
        outs = [fn(completions, examples, **kwargs) for fn in fns]
        metrics = {}
        for name, out in zip(labels, outs, strict=True):
            got = [s for s in out.scores if s is not None]
            metrics[name] = sum(got) / len(got) if got else 0.0
            metrics |= {f"{name}/{k}": v for k, v in out.metrics.items()}
        return RewardOutput(combine_scores([o.scores for o in outs], [w for _, w in terms]), metrics)

    return combined


def build_eval_reward(cfg, task, train_reward: RewardFn, device=None) -> RewardFn:
    """What scores the held-out evaluation: ``task.reward`` when set, else the task's own reward; the
    ``dataset`` task without ``task.reward`` but with ``task.rewards`` is evaluated on the training reward."""
    name = cfg.task.reward
    if name is None:
        if task.from_fields and cfg.task.rewards:
            return train_reward
        name = task.reward
    if reward_terms(cfg, task.reward) == [(name, 1.0)]:
        return train_reward  # the same object: a user reward's worker pool is started once
    return resolve_reward(cfg, name, device)
