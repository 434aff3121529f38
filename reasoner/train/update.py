"""The policy update of one batch of rollouts: advantages, then ``algo.inner_epochs`` clipped policy-gradient steps.

``update`` turns rollouts into a :class:`reasoner.train.batch.RolloutBatch` (shared prompts and packing as
``train.shared_prefix`` / ``train.pack`` say), takes the old, reference and engine log-probs it needs, asks the
estimator (reasoner.train.estimators: group baselines, RLOO, REINFORCE++, PPO's critic) for advantages, and runs the
policy loss (``algo.loss``, reasoner.algo) plus ``beta * KL`` over micro-batches whose gradients add up to the
whole batch's, on one rank or under DDP. The algorithm choices are listed in reasoner.train.trainer's docstring.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from reasoner.algo import POLICY_LOSSES, aggregate, kl_penalty
from reasoner.config import Config
from reasoner.rollout import Rollout
from reasoner.rollout.mismatch import engine_logprob_tensor, mismatch_metrics, tis_weights
from reasoner.train.batch import RolloutBatch, make_batch, sequence_logprobs
from reasoner.train.distributed import DistInfo, all_reduce_sum


@dataclass(frozen=True)
class Learner:
    """What the update needs of a run: the settings, the models, the estimator and the optimiser."""

    cfg: Config
    model: torch.nn.Module  # the policy, DDP-wrapped under torchrun
    reference: Any  # a frozen model, reasoner.train.lora.AdaptersOff, or None (beta = 0)
    estimator: Any  # reasoner.train.estimators.Estimator
    optimizer: torch.optim.Optimizer
    pad_id: int
    device: torch.device
    world: DistInfo = field(default_factory=DistInfo)


@dataclass
class Scored:
    """One step's scored rollouts, prompt-major: ``rollouts[i * G:(i + 1) * G]`` answer prompt ``i``."""

    rollouts: list[Rollout]
    rewards: torch.Tensor  # [N] 0 where unscored
    scored: torch.Tensor  # [N] bool: the reward could be computed


@dataclass
class GradPass:
    """What one pass over the batch measured, and the old log-probs its loss used (when an engine's are compared)."""

    stats: dict[str, float]
    trainer_logp: torch.Tensor | None  # [N, T], only with engine log-probs


def update(learner: Learner, batch: Scored) -> dict:
    """Compute advantages and take ``algo.inner_epochs`` policy-gradient steps on one batch of rollouts.

    Under torchrun ``learner.world`` is this rank's ``DistInfo``, ``batch`` this rank's share and ``learner.model``
    the DDP-wrapped policy: ``algo.loss_agg=token-mean`` then divides by the token count of every rank's share.
    """
    cfg, ac, device, rollouts = learner.cfg, learner.cfg.algo, learner.device, batch.rollouts
    estimator, reference = learner.estimator, learner.reference
    layout = make_batch(rollouts, learner.pad_id, device, cfg.train.shared_prefix, cfg.train.pack)
    keep = batch.scored.clone()  # [N] samples that take part in the loss
    if ac.mask_truncated:
        keep &= torch.tensor([r.finish_reason == "stop" for r in rollouts], device=device)
    # On-policy with one pass, the old log-probs equal the current ones: take them from the update's own
    # forward (ratio exactly 1) instead of a separate pass. KL-in-reward estimators need them up front.
    on_policy = ac.inner_epochs == 1 and not estimator.kl_in_reward
    old_logp = None if on_policy else _logprobs(learner.model, layout, cfg)  # [N, T]
    ref_logp = None if reference is None else _logprobs(reference, layout, cfg)  # [N, T]
    engine_logp = _engine_logprobs(cfg, rollouts, layout, device)  # [N, T] or None
    advantages, est_metrics, keep = estimator.advantages(
        layout, batch.rewards, batch.scored, keep, old_logp, ref_logp
    )  # [N, T]
    mask = layout.action_mask * keep[:, None].float()  # [N, T] the policy's own tokens (not a tool's output)
    kl_in_loss = reference is not None and not estimator.kl_in_reward
    stats = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0, "grad_norm": 0.0}
    trainer_logp = None  # the old log-probs the loss used, against the engine's
    # PPO's critic warm-up: no forward, backward or optimizer step (AdamW would move the weights anyway).
    for _ in range(0 if estimator.policy_frozen else ac.inner_epochs):
        done = accumulate_gradients(
            learner, layout, mask=mask, advantages=advantages, old_logp=old_logp,
            ref_logp=ref_logp if kl_in_loss else None, engine_logp=engine_logp,
        )  # fmt: skip
        grad_norm = torch.nn.utils.clip_grad_norm_(learner.model.parameters(), cfg.optim.max_grad_norm)
        learner.optimizer.step()
        learner.optimizer.zero_grad(set_to_none=True)
        for k, v in (done.stats | {"grad_norm": grad_norm.item()}).items():
            stats[k] += v / ac.inner_epochs
        trainer_logp = done.trainer_logp
    if ref_logp is not None and not kl_in_loss and old_logp is not None:
        stats["kl"] = _masked_mean(kl_penalty(old_logp, ref_logp, ac.kl_estimator), mask)
    if engine_logp is not None and trainer_logp is not None:
        stats |= mismatch_metrics(trainer_logp, engine_logp, layout.action_mask, cfg.rollout.tis_cap)
    stats |= estimator.update(layout, mask)
    lengths = layout.completion_mask.sum(1)
    return stats | est_metrics | {
        "completion_len": lengths.mean().item(),
        "truncated_frac": sum(r.finish_reason == "length" for r in rollouts) / len(rollouts),
        "masked_frac": 1.0 - keep.float().mean().item(),
    }  # fmt: skip


def accumulate_gradients(
    learner: Learner,
    batch: RolloutBatch,
    *,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    engine_logp: torch.Tensor | None = None,
) -> GradPass:
    """One pass over the batch in micro-batches: the policy loss (``algo.loss``) plus ``beta * KL`` when
    ``ref_logp`` is given, aggregated (``algo.loss_agg``) and weighted so the gradients add up to the batch's.

    ``mask`` [N, T] marks the tokens in the loss, ``advantages`` [N, T]; ``old_logp`` None = on-policy (the
    forward's own, detached). Returns the pass's loss, KL, clip fraction and entropy (token-weighted means)."""
    cfg, ac, policy = learner.cfg, learner.cfg.algo, learner.model
    n, mb = len(batch), cfg.train.micro_batch_size
    policy_loss = POLICY_LOSSES.get(ac.loss)
    weight_of = _micro_weights(mask, mb, ac.loss_agg, learner.world)
    stats = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0}
    olds = []  # the old log-probs each micro-batch used, for the engine comparison
    for i in range(0, n, mb):
        sl = slice(i, i + mb)
        micro, m = batch.select(sl), mask[sl]
        last = i + mb >= n  # under DDP, all-reduce the gradients once per optimizer step
        # no_sync must hold the forward too: DDP decides in the forward whether the backward all-reduces.
        with nullcontext() if last or not isinstance(policy, DDP) else policy.no_sync():
            logp, entropy = sequence_logprobs(
                policy, micro, cfg.rollout.temperature, with_entropy=True
            )  # [mb, T]
            old = logp.detach() if old_logp is None else old_logp[sl]
            pg, clipped = policy_loss(logp, old, advantages[sl], m, ac.clip_low, ac.clip_high)  # [mb, T]
            if engine_logp is not None:
                olds.append(old)
                if cfg.rollout.use_engine_logprobs:  # truncated importance sampling: the engine sampled
                    pg = pg * tis_weights(old, engine_logp[sl], cfg.rollout.tis_cap)
            loss = pg
            if ref_logp is not None:
                kl = kl_penalty(logp, ref_logp[sl], ac.kl_estimator)
                loss = loss + ac.beta * kl
                stats["kl"] += _masked_mean(kl.detach(), m) * _frac(m, mask)
            total = aggregate(loss, m, ac.loss_agg, norm_length=cfg.rollout.max_new_tokens) * weight_of(sl)
            total.backward()  # on every rank even when m is empty: DDP ranks must run the same backwards
        stats["loss"] += total.item()
        stats["clip_frac"] += _masked_mean(clipped.float(), m) * _frac(m, mask)
        stats["entropy"] += _masked_mean(entropy, m) * _frac(m, mask)
    return GradPass(stats, torch.cat(olds) if olds else None)


@torch.no_grad()
def _logprobs(model, batch: RolloutBatch, cfg: Config) -> torch.Tensor:
    mb = cfg.train.micro_batch_size
    return torch.cat([sequence_logprobs(model, batch.select(slice(i, i + mb)), cfg.rollout.temperature)[0]
                      for i in range(0, len(batch), mb)])  # fmt: skip


def _engine_logprobs(cfg, rollouts, batch, device) -> torch.Tensor | None:
    if rollouts[0].logprobs is not None:  # the engine reported its own log-probs (vLLM)
        return engine_logprob_tensor(rollouts, batch.completion_mask.shape[1], device)  # [N, T]
    if cfg.rollout.use_engine_logprobs:
        raise ValueError(
            "rollout.use_engine_logprobs=true needs an engine that reports log-probs (rollout.engine=vllm)"
        )
    return None


def _micro_weights(mask: torch.Tensor, mb: int, mode: str, world):
    """Weights that make the sum of per-micro-batch aggregates equal the aggregate over the whole batch.

    Several ranks: DDP averages the ranks' gradients, so the per-sequence modes (equal shares of sequences) need
    nothing more; ``token-mean`` divides by every rank's tokens and multiplies back the number of ranks.
    """
    n = mask.shape[0]
    ranks = world.world_size if world.enabled else 1
    total_tokens = all_reduce_sum(mask.sum(), world).clamp(min=1) if mode == "token-mean" else None

    def weight(sl: slice) -> float:
        if mode == "token-mean":
            return (mask[sl].sum() * ranks / total_tokens).item()
        return len(range(n)[sl]) / n

    return weight


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return ((x * mask).sum() / mask.sum().clamp(min=1)).item()


def _frac(part: torch.Tensor, whole: torch.Tensor) -> float:
    return (part.sum() / whole.sum().clamp(min=1)).item()
