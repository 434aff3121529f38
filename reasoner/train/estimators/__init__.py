"""Advantage estimators, one registry entry per algorithm: group baselines (GRPO, RLOO, REINFORCE++) in
``group.py``, PPO's learned critic with GAE in ``ppo.py``. The trainer calls ``make_estimator`` and nothing else."""

from reasoner.train.estimators.group import ESTIMATORS, Estimator, GroupEstimator
from reasoner.train.estimators.ppo import PPOEstimator


def make_estimator(cfg, policy, model_path: str, device, world=None) -> Estimator:
    """The estimator ``algo.name`` names; ``world`` (a ``DistInfo``) when running on several ranks."""
    return ESTIMATORS.get(cfg.algo.name)(cfg, policy, model_path, device, world=world)


__all__ = ["ESTIMATORS", "Estimator", "GroupEstimator", "PPOEstimator", "make_estimator"]
