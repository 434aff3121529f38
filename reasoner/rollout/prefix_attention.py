"""Decode-time attention that reads each prompt's keys and values once for all of its samples.

After the prefill, the ``n`` samples of a prompt share its ``L`` prompt positions and differ only in the
``t`` positions they generated. Copying the prompt's cache n-fold makes every decode step read ``n`` copies of
it (on long prompts, most of a step's time); here the prompt part stays ``[P, kv_heads, L, dim]`` and each
sample's own part is ``[P * n, kv_heads, t, dim]``. A step's queries are grouped by prompt, so the prompt part
is one batched matmul per prompt for all n samples; both parts' scores go through one softmax (exactly the
attention over the concatenation ``[prompt; own tokens]``, the prompt's padding masked).

It plugs into transformers through its attention interface (the model's ``config._attn_implementation`` names
it while the decode loop runs, :func:`shared_prefix_attention_in`) and a cache that stores only the samples'
own positions (reasoner.rollout.sampler.BufferLayer); the prompt part travels as the ``shared_prefix`` keyword
of the model's forward, which transformers passes down to the attention function.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface

NAME = "reasoner_shared_prefix"


@dataclass
class SharedPrefix:
    keys: list[torch.Tensor]  # per layer [P, kv_heads, L, dim]
    values: list[torch.Tensor]
    mask: torch.Tensor  # [P, L] bool: False at left padding
    calls: int = 0  # attention calls that read it: every layer at every step, or the model bypasses us

    def select(self, prompts: torch.Tensor) -> None:
        self.keys = [k[prompts] for k in self.keys]
        self.values = [v[prompts] for v in self.values]
        self.mask = self.mask[prompts]


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            shared_prefix: SharedPrefix | None = None, **kwargs):  # fmt: skip
    """``query [A, H, 1, D]`` (A = P * n rows, prompt-major), ``key``/``value`` the rows' own positions
    ``[A, KV, t, D]``; returns ``([A, 1, H, D], None)`` like transformers' attention functions."""
    if shared_prefix is None:
        raise RuntimeError(
            f"{NAME} attention needs the shared_prefix keyword (set by reasoner.rollout.sampler)"
        )
    shared_prefix.calls += 1
    pk, pv = shared_prefix.keys[module.layer_idx], shared_prefix.values[module.layer_idx]  # [P, KV, L, D]
    prompts, kv, length, dim = pk.shape
    rows, heads, q_len, _ = query.shape
    n, group, t = rows // prompts, heads // kv, key.shape[-2]
    if q_len != 1 or n * prompts != rows:
        raise ValueError(
            f"{NAME}: one query per row and n rows per prompt, got {tuple(query.shape)}, {prompts} prompts"
        )
    scaling = dim**-0.5 if scaling is None else scaling
    q = query.reshape(prompts, n, kv, group, dim).transpose(1, 2).reshape(prompts, kv, n * group, dim)
    own_q = query.reshape(rows, kv, group, dim)
    prompt_scores = (q @ pk.transpose(-1, -2)).float() * scaling  # [P, KV, n*G, L]
    prompt_scores = prompt_scores.masked_fill(~shared_prefix.mask[:, None, None, :], float("-inf"))
    own_scores = (own_q @ key.transpose(-1, -2)).float() * scaling  # [A, KV, G, t]
    own_scores = (
        own_scores.reshape(prompts, n, kv, group, t).transpose(1, 2).reshape(prompts, kv, n * group, t)
    )
    probs = torch.cat([prompt_scores, own_scores], dim=-1).softmax(-1).to(query.dtype)  # [P, KV, n*G, L+t]
    out = probs[..., :length] @ pv  # [P, KV, n*G, D]
    out = out.reshape(prompts, kv, n, group, dim).transpose(1, 2).reshape(rows, kv, group, dim)
    own_probs = (
        probs[..., length:].reshape(prompts, kv, n, group, t).transpose(1, 2).reshape(rows, kv, group, t)
    )
    out = out + own_probs @ value  # [A, KV, G, D]
    return out.reshape(rows, heads, 1, dim).transpose(1, 2).contiguous(), None


@contextmanager
def shared_prefix_attention_in(model: torch.nn.Module):
    """While inside, ``model``'s attention layers call :func:`shared_prefix_attention`."""
    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, shared_prefix_attention)
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
