"""The RL math as pure tensor functions: advantages, KL estimators, policy/value losses, GAE, pass@k."""

from reasoner.algo.advantages import ADVANTAGE_SCALES, group_advantages, whiten, zero_variance_groups
from reasoner.algo.gae import gae
from reasoner.algo.kl import KL_ESTIMATORS, kl_penalty
from reasoner.algo.losses import (
    LOSS_AGGREGATIONS,
    aggregate,
    clipped_surrogate,
    entropy_from_logits,
    token_logprobs,
    value_loss,
)
from reasoner.algo.passk import mean_pass_at_k, pass_at_k

__all__ = [
    "ADVANTAGE_SCALES",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "aggregate",
    "clipped_surrogate",
    "entropy_from_logits",
    "gae",
    "group_advantages",
    "kl_penalty",
    "mean_pass_at_k",
    "pass_at_k",
    "token_logprobs",
    "value_loss",
    "whiten",
    "zero_variance_groups",
]
