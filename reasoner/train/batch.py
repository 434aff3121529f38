"""Turn rollouts into padded tensors and score them with a model.

Layout: prompts are left-padded and completions right-padded, so every completion starts at the same
column ``prompt_width`` and the model only has to produce logits for the last ``T + 1`` positions::

    [pad pad p p p | c c c eos pad]
    [pad p p p p   | c c c c   c  ]

``completion_mask`` marks the real completion tokens (what the model reads); ``action_mask`` the ones the policy
sampled, which alone take part in the losses, the KL, the entropy and PPO's values and GAE. They differ only in
multi-turn rollouts, where a tool's output is context, not action (``Rollout.action_mask``)::

    [p p | c c c <o o o> c c eos]   completion_mask 1 1 1 1 1 1 1 1 1
                                    action_mask     1 1 1 0 0 0 1 1 1
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch

from reasoner.algo import entropy_from_logits, token_logprobs
from reasoner.rollout.base import Rollout
from reasoner.train.layout import layout_inputs, pack_batch, packed_logprobs


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor  # [N, P + T]
    attention_mask: torch.Tensor  # [N, P + T]
    completion_mask: torch.Tensor  # [N, T] float, 1 on completion tokens (the policy's and the tools')
    prompt_width: int  # P
    # how the model sees the rows (reasoner/train/layout.py); outputs always come back on this padded grid
    shared_prefix: bool = False
    pack: bool = False
    # [N, T] float, 1 on the tokens the policy sampled (None: the completion_mask)
    action_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.action_mask is None:
            self.action_mask = self.completion_mask

    @property
    def completion_ids(self) -> torch.Tensor:  # [N, T]
        return self.input_ids[:, self.prompt_width :]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx: torch.Tensor | slice) -> RolloutBatch:
        return replace(
            self,
            input_ids=self.input_ids[idx],
            attention_mask=self.attention_mask[idx],
            completion_mask=self.completion_mask[idx],
            action_mask=self.action_mask[idx],
        )


def make_batch(
    rollouts: list[Rollout],
    pad_id: int,
    device: torch.device | str = "cpu",
    shared_prefix: bool = False,
    pack: bool = False,
) -> RolloutBatch:
    width_p = max(len(r.prompt_ids) for r in rollouts)
    width_c = max(1, max(len(r.completion_ids) for r in rollouts))
    ids = torch.full((len(rollouts), width_p + width_c), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    sampled = torch.zeros(len(rollouts), width_c)  # [N, T]
    for i, r in enumerate(rollouts):
        p, c = len(r.prompt_ids), len(r.completion_ids)
        ids[i, width_p - p : width_p] = torch.tensor(r.prompt_ids)
        ids[i, width_p : width_p + c] = torch.tensor(r.completion_ids, dtype=torch.long)
        attn[i, width_p - p : width_p + c] = 1
        if r.action_mask is None:
            sampled[i, :c] = 1
        elif len(r.action_mask) != c:
            raise ValueError(
                f"rollout {i}: action_mask has {len(r.action_mask)} entries for {c} completion tokens"
            )
        else:
            sampled[i, :c] = torch.tensor(r.action_mask, dtype=torch.float32)
    completion_mask = attn[:, width_p:].float().to(device)
    return RolloutBatch(ids.to(device), attn.to(device), completion_mask, width_p, shared_prefix, pack,
                        action_mask=(sampled * completion_mask.cpu()).to(device))  # fmt: skip


def autocast(device: torch.device):
    """bf16 autocast on CUDA (weights stay fp32 for the optimizer); nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def sequence_logprobs(
    model: torch.nn.Module, batch: RolloutBatch, temperature: float, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs [N, T] of the completion under ``model`` at the sampling temperature (and entropy).

    With ``batch.shared_prefix`` or ``batch.pack`` the model sees the layout of reasoner/train/layout.py; the result
    is the same [N, T] grid (equal to float tolerance on real tokens; padding holds finite filler).
    """
    if batch.shared_prefix or batch.pack:
        layout = pack_batch(batch, batch.shared_prefix, batch.pack)
        with autocast(batch.input_ids.device):
            logits = model(**layout_inputs(model, layout)).logits  # [K, V]
        return packed_logprobs(logits, layout, batch.completion_ids, temperature, with_entropy)
    width_c = batch.completion_mask.shape[1]
    # Position ids count real tokens only, exactly as generate() numbered them under left padding.
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with autocast(batch.input_ids.device):
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=positions,
            logits_to_keep=width_c + 1,
            use_cache=False,
        ).logits[:, :-1]  # [N, T, V]: the logit at column P + t - 1 predicts completion token t
    logp = token_logprobs(logits, batch.completion_ids, temperature)
    entropy = entropy_from_logits(logits.detach(), temperature) if with_entropy else None
    return logp, entropy
