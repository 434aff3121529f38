"""PPO's advantage estimator: a learned critic, token-level rewards and GAE (Ouyang et al. 2022; Schulman et al. 2017).

The policy side is the trainer's clipped surrogate, unchanged; this module turns a batch of scored rollouts
into per-token advantages and trains the critic:

- **Critic.** A transformer backbone (``AutoModel`` from ``algo.critic_model``, or the policy's starting
  weights) and a scalar head. Its values sit at the same columns as ``sequence_logprobs``: the hidden state
  at column ``P + t - 1`` values the state *before* completion token ``t`` is chosen. It reads the batch in
  the same layout as the policy (``train.shared_prefix``, ``train.pack``; reasoner/train/layout.py).
- **Token rewards.** The outcome reward lands on the last real completion token. With ``algo.kl_in_reward``
  (classic RLHF) every token also pays ``beta * kl_t`` (estimator ``algo.kl_estimator``) and the trainer
  leaves the KL out of the loss; otherwise the trainer adds it to the loss as in GRPO.
- **Advantages.** GAE(``gamma``, ``lam``) against the critic's values; returns = advantages + values;
  advantages whitened over the batch's real tokens (``algo.whiten_advantages``).
- **Critic update.** After the policy step, ``algo.inner_epochs`` passes of the clipped value loss
  (``algo.value_clip``, 0 = unclipped) over micro-batches, with the critic's own AdamW at ``algo.critic_lr``.
  ``algo.vf_coef`` scales that loss; with a separate optimizer it only matters through the gradient clip.
- **Warm-up.** For the first ``algo.critic_warmup_steps`` steps the estimator returns zero advantages and an
  empty keep mask, so the policy takes no gradient at all (not even from a KL term) while the critic learns
  from the frozen policy's samples; metrics carry ``critic_warmup = 1``. ``policy_frozen`` tells the trainer
  to skip the policy's optimizer step too (weight decay and momentum would move it).
- **Several ranks** (``torchrun``, ``world``): the value loss runs through the critic wrapped in DDP (FSDP2 when
  the policy is FSDP2-sharded), so its gradients are averaged over ranks; ``self.critic`` stays the plain module
  for values and checkpoints. The whitening statistics and the value loss's token count are summed over ranks,
  so one update on 2 ranks with B samples each equals one update on 1 rank with all 2B (to float rounding;
  ``tests/train/test_distributed.py``). The warm-up counter advances once per update on every rank and is restored
  from the same checkpoint, so the ranks leave the warm-up together. Every rank runs every micro-batch's
  backward, even one with no real token (a zero loss), or DDP would wait for it forever.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from reasoner.algo import gae, kl_penalty, token_rewards, value_loss, whiten
from reasoner.models import resolve_dtype, resolve_model_path
from reasoner.train.batch import RolloutBatch, autocast
from reasoner.train.distributed import DistInfo, all_reduce_sum, wrap_ddp, wrap_fsdp
from reasoner.train.estimators.group import ESTIMATORS
from reasoner.train.layout import layout_inputs, pack_batch
from reasoner.train.lora import add_lora, enabled


class Critic(nn.Module):
    """A transformer backbone and a linear value head: per-token values [N, T] over a ``RolloutBatch``."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.get_text_config().hidden_size
        self.head = nn.Linear(hidden, 1)
        # A zero head starts every value at 0: the first advantages are the (discounted) rewards themselves.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(
        cls, path: str, device: torch.device, attn_implementation: str | None = None, lora=None, dtype="auto"
    ) -> Critic:
        """``lora`` (``model.lora``) with r > 0: a frozen backbone in ``dtype`` with LoRA adapters; the value
        head (outside the backbone) always trains in full."""
        from transformers import AutoModel

        use_lora = lora is not None and enabled(lora)
        # fp32 master weights (bf16 autocast on CUDA in forward); a frozen LoRA base needs no fp32 copy
        kwargs = {"dtype": resolve_dtype(dtype, device) if use_lora else torch.float32}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        backbone = AutoModel.from_pretrained(resolve_model_path(path), **kwargs)
        if use_lora:
            backbone = add_lora(backbone, lora, task_type=None)
        return cls(backbone).to(device)

    def forward(self, batch: RolloutBatch) -> torch.Tensor:
        if batch.shared_prefix or batch.pack:  # the policy's layout: values gathered back to [N, T]
            layout = pack_batch(batch, batch.shared_prefix, batch.pack)
            inputs = layout_inputs(self.backbone, layout)
            inputs.pop("logits_to_keep")
            keep = layout.keep
            with autocast(batch.input_ids.device):
                hidden = self.backbone(**inputs).last_hidden_state[keep]  # [K, H]
                values = self.head(hidden).squeeze(-1)  # [K]
            return layout.gather(values).float()  # [N, T]
        width_c = batch.completion_mask.shape[1]  # T
        p = batch.prompt_width  # P
        positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)  # as sequence_logprobs numbers them
        with autocast(batch.input_ids.device):
            hidden = self.backbone(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=positions,
                use_cache=False,
            ).last_hidden_state[:, p - 1 : p + width_c - 1]  # [N, T, H]: column P + t - 1 values token t
            values = self.head(hidden).squeeze(-1)  # [N, T]
        return values.float()


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(returns - values) / Var(returns)`` over masked tokens: 1 = perfect critic, 0 = a constant.

    >>> r = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    >>> explained_variance(r, r, torch.ones(1, 4)), explained_variance(torch.zeros(1, 4), r, torch.ones(1, 4))
    (1.0, 0.0)
    """
    m = mask.bool()
    if m.sum() < 2:
        return 0.0
    var_returns = returns[m].var()
    if var_returns == 0:
        return 0.0
    return (1.0 - (returns[m] - values[m]).var() / var_returns).item()


@ESTIMATORS.register("ppo")
class PPOEstimator:
    """The ``Estimator`` for ``algo.name=ppo``; see the module docstring."""

    def __init__(
        self, cfg, policy=None, model_path: str | None = None, device=None, world: DistInfo | None = None
    ):
        ac = cfg.algo
        path = ac.critic_model or model_path
        if path is None:
            raise ValueError("PPO needs a critic: set algo.critic_model, or pass the policy's model_path")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.world = world or DistInfo()
        self.critic = Critic.from_pretrained(
            path, self.device, cfg.model.attn_implementation, cfg.model.lora, cfg.model.dtype
        )
        if cfg.model.gradient_checkpointing:
            self.critic.backbone.gradient_checkpointing_enable()
            if enabled(cfg.model.lora):  # a frozen embedding's output must require grad to checkpoint through
                self.critic.backbone.enable_input_require_grads()
        if policy is not None:
            _check_vocab(self.critic, policy, path)
        # The value loss goes through `model` (gradients averaged over ranks); values and checkpoints use
        # `critic`. FSDP2 shards `critic` in place (it is `model`), DDP wraps it; one process: the same object.
        if _is_fsdp(policy):
            self.model = wrap_fsdp(self.critic, self.world)
        else:
            self.model = wrap_ddp(self.critic, self.world)
        self._sum = partial(all_reduce_sum, info=self.world)  # a batch-wide sum over every rank's share
        self.optimizer = torch.optim.AdamW(
            [p for p in self.critic.parameters() if p.requires_grad],  # LoRA: the adapters and the head
            lr=ac.critic_lr,
            weight_decay=cfg.optim.weight_decay,
            betas=tuple(cfg.optim.betas),
        )
        self.kl_in_reward = ac.kl_in_reward and ac.beta > 0  # beta = 0: no KL anywhere, no reference model
        self.beta, self.kl_estimator = ac.beta, ac.kl_estimator
        self.gamma, self.lam, self.whiten = ac.gamma, ac.lam, ac.whiten_advantages
        self.value_clip = ac.value_clip if ac.value_clip > 0 else None
        self.vf_coef, self.epochs, self.warmup = ac.vf_coef, ac.inner_epochs, ac.critic_warmup_steps
        self.micro_batch, self.max_grad_norm = cfg.train.micro_batch_size, cfg.optim.max_grad_norm
        self.step = 0  # critic updates taken; counts the warm-up
        self._targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def policy_frozen(self) -> bool:
        return self.step < self.warmup

    @torch.no_grad()
    def values(self, batch: RolloutBatch) -> torch.Tensor:
        """Critic values [N, T] in micro-batches, without gradients."""
        was_training = self.critic.training
        self.critic.eval()
        try:
            n, mb = len(batch), self.micro_batch
            return torch.cat([self.critic(batch.select(slice(i, i + mb))) for i in range(0, n, mb)])
        finally:
            self.critic.train(was_training)

    def advantages(self, batch, rewards, scored, keep, old_logp, ref_logp):
        keep = keep & scored.to(keep.device)  # [N]; unscored samples teach neither policy nor critic
        # [N, T] the policy's own tokens: a tool's output is context, neither valued nor a GAE step
        mask = batch.action_mask * keep[:, None].float()
        kl = None
        if self.kl_in_reward and ref_logp is not None:
            kl = kl_penalty(old_logp, ref_logp, self.kl_estimator)  # [N, T]
        token_r = token_rewards(rewards.to(mask.device), mask, kl, self.beta)  # [N, T]
        old_values = self.values(batch)  # [N, T]
        adv, returns = gae(token_r, old_values, mask, self.gamma, self.lam)  # [N, T] each
        self._targets = (batch.input_ids, old_values, returns, mask)
        m = mask.bool()
        metrics = {
            "value/mean": _masked_mean(old_values, m),
            "value/explained_var": explained_variance(old_values, returns, mask),
            "returns/mean": _masked_mean(returns, m),
            "adv/mean": _masked_mean(adv, m),
            "adv/std": adv[m].std().item() if m.sum() > 1 else 0.0,
            "critic_warmup": float(self.step < self.warmup),
        }
        if kl is not None:
            metrics["kl_reward"] = (self.beta * (kl * mask).sum(1)).mean().item()  # per-sequence KL cost
        if self.step < self.warmup:
            # Policy frozen: no advantage and no token in its loss; update() still trains the critic on `mask`.
            return torch.zeros_like(adv), metrics, torch.zeros_like(keep)
        if self.whiten and self._sum(m.sum()) >= 2:  # the global count: every rank takes the same branch
            adv = whiten(adv, mask, reduce=self._sum)  # mean and variance over every rank's tokens
        return adv, metrics, keep

    def update(self, batch: RolloutBatch, mask: torch.Tensor) -> dict:
        """Fit the critic to the returns of the last ``advantages`` call on the same batch.

        Trains on the tokens whose returns were computed there; outside the warm-up that equals ``mask``
        (during it the trainer's mask is empty because the policy is frozen, but the critic still learns).
        """
        if self._targets is None or self._targets[0] is not batch.input_ids:
            raise RuntimeError(
                "PPOEstimator.update() needs advantages() to have been called on this same batch first"
            )
        _, old_values, returns, critic_mask = self._targets
        self._targets = None
        n, mb = len(batch), self.micro_batch
        # Micro-batch token-means weighted by their share of every rank's tokens add up to the token-mean of
        # the whole (global) batch; DDP divides the summed gradients by the number of ranks, so multiply back.
        tokens = self._sum(critic_mask.sum()).clamp(min=1)
        ranks = self.world.world_size if self.world.enabled else 1
        stats = {"value/loss": 0.0, "value/clip_frac": 0.0, "value/grad_norm": 0.0}
        self.critic.train()
        for _ in range(self.epochs):
            for i in range(0, n, mb):
                sl = slice(i, i + mb)
                m = critic_mask[sl]
                if m.sum() == 0 and not self.world.enabled:  # several ranks: every rank runs every backward
                    continue
                last = i + mb >= n  # under DDP, all-reduce the gradients once per optimizer step
                with nullcontext() if last or not isinstance(self.model, DDP) else self.model.no_sync():
                    values = self.model(batch.select(sl))  # [mb, T]
                    loss, clip_frac = value_loss(values, old_values[sl], returns[sl], m, self.value_clip)
                    share = (m.sum() * ranks / tokens).item()
                    (self.vf_coef * loss * share).backward()
                stats["value/loss"] += loss.item() * share / self.epochs
                stats["value/clip_frac"] += clip_frac.item() * share / self.epochs
            grad_norm = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.max_grad_norm)
            stats["value/grad_norm"] += grad_norm.item() / self.epochs
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return stats

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"critic": self.critic}

    def state_dict(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.optimizer.load_state_dict(state["optimizer"])


def _is_fsdp(module: nn.Module | None) -> bool:
    if module is None or not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> float:
    return x[m].mean().item() if m.any() else 0.0


def _check_vocab(critic: Critic, policy: nn.Module, path: str) -> None:
    need = policy.get_input_embeddings().num_embeddings
    have = critic.backbone.get_input_embeddings().num_embeddings
    if have < need:
        raise ValueError(
            f"critic model {path!r} has a vocabulary of {have} tokens but the policy uses {need}: "
            "the critic reads the policy's token ids, so algo.critic_model must share its tokenizer"
        )
