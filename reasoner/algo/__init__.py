"""The RL math as pure tensor functions: advantages, KL estimators, policy/value losses, GAE, pass@k, shaping."""

from reasoner.algo.advantages import (
    ADVANTAGE_SCALES,
    group_advantages,
    rloo_advantages,
    varying_groups,
    whiten,
    zero_variance_groups,
)
from reasoner.algo.gae import gae
from reasoner.algo.kl import KL_ESTIMATORS, kl_penalty
from reasoner.algo.passk import mean_pass_at_k, pass_at_k
from reasoner.algo.policy_losses import POLICY_LOSSES
from reasoner.algo.reinforce import (
    discounted_returns,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    token_rewards,
)
from reasoner.algo.shaping import overlong_penalty
from reasoner.algo.tokens import (
    LOSS_AGGREGATIONS,
    aggregate,
    clipped_surrogate,
    entropy_from_logits,
    token_logprobs,
    value_loss,
)

__all__ = [
    "ADVANTAGE_SCALES",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSSES",
    "aggregate",
    "clipped_surrogate",
    "discounted_returns",
    "entropy_from_logits",
    "gae",
    "group_advantages",
    "kl_penalty",
    "mean_pass_at_k",
    "overlong_penalty",
    "pass_at_k",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "rloo_advantages",
    "token_logprobs",
    "token_rewards",
    "value_loss",
    "varying_groups",
    "whiten",
    "zero_variance_groups",
]
