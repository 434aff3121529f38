"""Advantage estimators: how a batch of scored rollouts becomes per-token advantages.

``grpo`` normalises each prompt's rewards within its group (no critic); ``rloo`` uses a leave-one-out mean;
``reinforce_plus_plus`` (KL in the reward) and ``reinforce_plus_plus_baseline`` normalise over the whole batch
(reasoner/algo/reinforce.py). ``ppo`` (reasoner/train/estimators/ppo.py) learns a critic and uses GAE. Both plug into the same trainer loop through this small interface.

Every estimator is built as ``cls(cfg, policy, model_path, device, world=...)``: ``world``
(``reasoner.train.distributed.DistInfo``) says which rank of how many this process is under ``torchrun``, for
estimators that learn something (PPO's critic) or need batch-wide statistics over every rank's samples.
"""

from __future__ import annotations

from functools import partial
from typing import Protocol

import torch

from reasoner.algo import group_advantages, kl_penalty, rloo_advantages, zero_variance_groups
from reasoner.algo.reinforce import reinforce_pp_advantages, reinforce_pp_baseline_advantages, token_rewards
from reasoner.registry import Registry
from reasoner.train.batch import RolloutBatch
from reasoner.train.distributed import DistInfo, all_reduce_sum


class Estimator(Protocol):
    kl_in_reward: bool  # True: the KL penalty is part of the reward (classic RLHF), not of the loss
    # True while the policy must not move at all (PPO's critic warm-up): the trainer skips its optimizer
    # step, since AdamW's weight decay and momentum would move the weights even with zero gradients.
    policy_frozen: bool

    def advantages(
        self,
        batch: RolloutBatch,
        rewards: torch.Tensor,
        scored: torch.Tensor,
        keep: torch.Tensor,
        old_logp: torch.Tensor,
        ref_logp: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Return advantages [N, T], metrics, and the updated keep mask [N].

        ``old_logp`` is None when the update is on-policy (one inner epoch, KL not in the reward)."""

    def update(self, batch: RolloutBatch, mask: torch.Tensor) -> dict:
        """Train whatever the estimator learns (PPO's critic) on this batch; GRPO has nothing to learn."""

    def extra_modules(self) -> dict[str, torch.nn.Module]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


ESTIMATORS: Registry = Registry("algorithm")


@ESTIMATORS.register("grpo")
class GroupEstimator:
    """GRPO: ``(r - mean_group) / std`` (``algo.scale_rewards``), one advantage per sequence."""

    kl_in_reward = False
    policy_frozen = False

    def __init__(self, cfg, policy=None, model_path=None, device=None, world=None):
        # Batch-wide statistics (REINFORCE++'s whitening) sum over every rank's share of the batch.
        self._world = world or DistInfo()
        self._sum = partial(all_reduce_sum, info=self._world)
        self.group_size, self.scale = cfg.rollout.n, cfg.algo.scale_rewards
        self.drop_zero_variance = cfg.algo.drop_zero_variance or cfg.algo.refill_rounds > 0
        self.beta, self.kl_estimator, self.gamma = cfg.algo.beta, cfg.algo.kl_estimator, cfg.algo.gamma

    def sequence_advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """Prompt-major rewards [N] -> one advantage per sequence [N]."""
        if self.scale == "batch" and self._world.enabled:  # the std of every rank's rewards, not this share's
            return group_advantages(rewards, self.group_size, "none") / self._batch_std(rewards)
        return group_advantages(rewards, self.group_size, self.scale)

    def _batch_std(self, rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """The unbiased std of the whole batch's rewards (all ranks) + eps, as ``scale_rewards=batch`` on one
        process (reasoner.algo.advantages); 1 when the batch holds a single reward."""
        device = self._world.device if self._world.backend == "nccl" else torch.device("cpu")
        x = rewards.detach().to(device, torch.float64)
        moments = torch.stack(
            [torch.tensor(float(x.numel()), dtype=x.dtype, device=device), x.sum(), (x * x).sum()]
        )
        count, total, squares = self._sum(moments).tolist()
        if count < 2:
            return torch.ones((), dtype=rewards.dtype, device=rewards.device)
        var = max(squares - total * total / count, 0.0) / (count - 1)
        return torch.tensor(var**0.5 + eps, dtype=rewards.dtype, device=rewards.device)

    def token_advantages(self, batch, rewards, mask, old_logp, ref_logp) -> torch.Tensor:
        """Rewards [N] -> advantages [N, T]; ``mask`` [N, T] holds the tokens that take part in the loss."""
        adv = self.sequence_advantages(rewards).to(mask.device)  # [N]
        return adv[:, None].expand(-1, mask.shape[1])

    def advantages(self, batch, rewards, scored, keep, old_logp, ref_logp):
        # Unscored samples (e.g. the sandbox failed) take their group's scored mean, so they move neither the
        # mean nor the advantage of the others, and are masked out of the loss.
        groups = rewards.view(-1, self.group_size)  # [B, G]
        ok = scored.view(-1, self.group_size).float()
        fill = (groups * ok).sum(1, keepdim=True) / ok.sum(1, keepdim=True).clamp(min=1)
        filled = torch.where(ok.bool(), groups, fill).view(-1)
        zero_var = zero_variance_groups(filled, self.group_size)
        keep = keep & scored.to(keep.device)
        if self.drop_zero_variance:
            keep = keep & ~zero_var.to(keep.device)
        mask = batch.action_mask * keep[:, None].float()  # [N, T] the policy's own tokens
        adv = self.token_advantages(batch, filled, mask, old_logp, ref_logp)  # [N, T]
        m = mask.bool()
        metrics = {
            "zero_variance_frac": zero_var.float().mean().item(),
            "adv/abs_mean": adv[m].abs().mean().item() if m.any() else 0.0,
        }
        return adv.to(batch.input_ids.device), metrics, keep

    def update(self, batch, mask):
        return {}

    def extra_modules(self):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@ESTIMATORS.register("rloo")
class LeaveOneOutEstimator(GroupEstimator):
    """RLOO: the baseline of a sample is the mean reward of the other G - 1 samples of its prompt; no std."""

    def sequence_advantages(self, rewards):
        return rloo_advantages(rewards, self.group_size)


@ESTIMATORS.register("reinforce_plus_plus")
class ReinforcePlusPlusEstimator(GroupEstimator):
    """REINFORCE++: KL in the reward per token, returns-to-go, whitened over the batch (no group baseline)."""

    kl_in_reward = True

    def __init__(self, cfg, policy=None, model_path=None, device=None, world=None):
        super().__init__(cfg, policy, model_path, device, world)
        self.kl_in_reward = cfg.algo.beta > 0  # beta = 0: no reference model, nothing to put in the reward

    def token_advantages(self, batch, rewards, mask, old_logp, ref_logp):
        kl = None
        if self.kl_in_reward and ref_logp is not None:
            kl = kl_penalty(old_logp, ref_logp, self.kl_estimator)  # [N, T]
        return reinforce_pp_advantages(
            token_rewards(rewards.to(mask.device), mask, kl, self.beta), mask, self.gamma, self._sum
        )


@ESTIMATORS.register("reinforce_plus_plus_baseline")
class ReinforcePlusPlusBaselineEstimator(GroupEstimator):
    """REINFORCE++-baseline: the group mean subtracted, then whitened over the batch; KL stays in the loss."""

    def token_advantages(self, batch, rewards, mask, old_logp, ref_logp):
        return reinforce_pp_baseline_advantages(rewards, self.group_size, mask, self._sum)
