"""Advantage estimators: how a batch of scored rollouts becomes per-token advantages.

``grpo`` normalises each prompt's rewards within its group (no critic). ``ppo`` (reasoner/ppo.py) learns a
critic and uses GAE. Both plug into the same trainer loop through this small interface.
"""

from __future__ import annotations

from typing import Protocol

import torch

from reasoner.algo import group_advantages, zero_variance_groups
from reasoner.batch import RolloutBatch
from reasoner.registry import Registry


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
    kl_in_reward = False
    policy_frozen = False

    def __init__(self, cfg, policy=None, model_path=None, device=None):
        self.group_size, self.scale = cfg.rollout.n, cfg.algo.scale_rewards
        self.drop_zero_variance = cfg.algo.drop_zero_variance

    def advantages(self, batch, rewards, scored, keep, old_logp, ref_logp):
        # Unscored samples (e.g. the sandbox failed) take their group's scored mean, so they move neither the
        # mean nor the advantage of the others, and are masked out of the loss.
        groups = rewards.view(-1, self.group_size)  # [B, G]
        ok = scored.view(-1, self.group_size).float()
        fill = (groups * ok).sum(1, keepdim=True) / ok.sum(1, keepdim=True).clamp(min=1)
        filled = torch.where(ok.bool(), groups, fill).view(-1)
        adv = group_advantages(filled, self.group_size, self.scale)  # [N]
        zero_var = zero_variance_groups(filled, self.group_size)
        keep = keep & scored.to(keep.device)
        if self.drop_zero_variance:
            keep = keep & ~zero_var.to(keep.device)
        width = batch.completion_mask.shape[1]
        metrics = {
            "zero_variance_frac": zero_var.float().mean().item(),
            "adv/abs_mean": adv.abs().mean().item(),
        }
        return adv.to(batch.input_ids.device)[:, None].expand(-1, width), metrics, keep

    def update(self, batch, mask):
        return {}

    def extra_modules(self):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def make_estimator(cfg, policy, model_path: str, device) -> Estimator:
    if cfg.algo.name not in ESTIMATORS:
        import reasoner.ppo  # noqa: F401  (registers "ppo")
    return ESTIMATORS.get(cfg.algo.name)(cfg, policy, model_path, device)
