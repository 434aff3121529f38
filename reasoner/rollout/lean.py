"""One decode step of a Llama-family model in plain tensor ops, for the shared-prompt sampler.

A decode step is one token per row: its matrices are small, so on CPU (and on a GPU without CUDA graphs) the
time goes as much to the Python around the ops as to the ops. transformers' forward builds an attention mask,
goes through the cache object, the attention-interface lookup and keyword plumbing in every layer; for the
tiny model that is a quarter of the step. :class:`LeanDecode` runs the same computation from the model's own
weights and submodules: embedding, rotary embedding (the model's module, so every rope type), then per layer
norm, q/k/v projections (Qwen3's per-head norms), rotary, one attention call over the prompt's and its samples'
keys (the buffer layout below), output projection, norm and gated MLP, then the final norm and the LM head on
the one position. It decodes as the model does in eval mode (no dropout), as the engines run it.

It runs only models whose forward it reproduces exactly (:func:`unsupported` says why not otherwise, and the
sampler then decodes through the model's forward): the Llama, Mistral, Qwen2 and Qwen3 families, full attention
in every layer, plain ``nn.Linear`` projections (a peft-wrapped model goes the ordinary way), and no
attention-logit softcapping. Greedy outputs are the same tokens as ``generate``'s (tests/rollout/test_sampler.py
runs every sampler test through it).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
# n * max_new_tokens up to which the lean step runs: above it, scoring the masked sibling slots costs more
# than the fused attention saves
MAX_OWN_SLOTS = 4096


def unsupported(model: torch.nn.Module) -> str | None:
    """Why :class:`LeanDecode` cannot run ``model`` (None: it can)."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        return f"model_type {kind!r} is not one of {', '.join(FAMILIES)}"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        return f"{type(model).__name__} has no .model.layers / .lm_head"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return "some layers use sliding-window attention"
    if kind in ("mistral",) and getattr(config, "sliding_window", None):
        return "Mistral's sliding window"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp != 1"
    if not hasattr(inner, "rotary_emb"):
        return "no model-level rotary embedding (transformers too old)"
    for i, layer in enumerate(inner.layers):
        attn, mlp = layer.self_attn, layer.mlp
        missing = [a for a in ("head_dim", "scaling") if not hasattr(attn, a)] + (
            [] if hasattr(mlp, "act_fn") else ["mlp.act_fn"]
        )
        if missing:
            return f"layer {i} lacks {', '.join(missing)} (transformers too old)"
        linears = [
            attn.q_proj,
            attn.k_proj,
            attn.v_proj,
            attn.o_proj,
            mlp.gate_proj,
            mlp.up_proj,
            mlp.down_proj,
        ]
        if any(type(m) is not torch.nn.Linear for m in linears):
            return f"layer {i} has projections that are not plain nn.Linear (adapters?)"
    if type(model.lm_head) is not torch.nn.Linear:
        return "lm_head is not a plain nn.Linear"
    return None


class LeanDecode:
    """The decode of a batch of prompts' ``n`` samples each, one step per call.

    Keys and values live per prompt in one buffer per layer, ``[P, kv_heads, L + T * n, dim]``: the prompt's L
    positions, then time-major the samples' own, slot ``L + t * n + j`` for sample ``j``'s token ``t``. A step's
    queries, grouped by prompt (``[P, kv_heads, n * group, dim]``), attend to the first ``L + (t + 1) * n`` slots
    in one ``scaled_dot_product_attention`` call, under a mask that hides the prompt's left padding and the other
    samples' tokens. That reads each prompt's keys once for its n samples (as reasoner.rollout.prefix_attention
    does) in one fused op instead of a dozen small ones; the price is that every query also scores its siblings'
    t * (n - 1) masked keys, which is why the sampler keeps it for ``n * max_new_tokens <= MAX_OWN_SLOTS``."""

    def __init__(self, model: torch.nn.Module, cache, prompt_mask: torch.Tensor, n: int, max_new_tokens: int):
        why = unsupported(model)
        if why is not None:
            raise ValueError(f"LeanDecode cannot run {type(model).__name__}: {why}")
        self.model, self.inner, self.n = model, model.model, n
        attn = self.inner.layers[0].self_attn
        self.rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        self.head_dim = attn.head_dim
        prompts, kv, length, dim = cache.layers[0].keys.shape
        self.length, self.t = length, 0
        width = length + max_new_tokens * n
        self.keys, self.values = [], []
        for layer in cache.layers:
            for store, x in ((self.keys, layer.keys), (self.values, layer.values)):
                buffer = x.new_zeros(prompts, kv, width, dim)  # zeros: a masked slot must not hold a NaN
                buffer[:, :, :length] = x
                store.append(buffer)
        group = self.model.config.num_attention_heads // kv
        # [P, 1, n * group, width]: query row r = j * group + g (sample j) sees the prompt's real positions and
        # the slots of sample j; -inf elsewhere
        sample = torch.arange(n, device=prompt_mask.device).repeat_interleave(group)  # [n * group]
        own = (torch.arange(width - length, device=prompt_mask.device) % n)[None, :] == sample[:, None]
        allowed = torch.cat([prompt_mask.bool()[:, None, :].expand(-1, n * group, -1),
                             own[None].expand(prompts, -1, -1)], dim=-1)  # fmt: skip
        bias = torch.zeros(allowed.shape, dtype=self.keys[0].dtype, device=allowed.device)
        self.bias = bias.masked_fill(~allowed, float("-inf"))[:, None]

    def select(self, prompts: torch.Tensor) -> None:
        """Keep only these prompts (indices into the current ones) and their samples."""
        self.keys = [k[prompts] for k in self.keys]
        self.values = [v[prompts] for v in self.values]
        self.bias = self.bias[prompts]

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """``ids [A]`` (A = P * n, prompt-major) at ``position [A, 1]`` -> next-token logits ``[A, V]`` float32."""
        inner, rows, dim, n = self.inner, ids.shape[0], self.head_dim, self.n
        prompts = rows // n
        end = self.length + (self.t + 1) * n
        slots = slice(end - n, end)
        bias = self.bias[..., :end]
        x = inner.embed_tokens(ids)  # [A, H]
        cos, sin = inner.rotary_emb(x[:, None], position)  # [A, 1, dim]
        for i, layer in enumerate(inner.layers):
            attn = layer.self_attn
            h = _norm(layer.input_layernorm, x)
            q = attn.q_proj(h).view(rows, 1, -1, dim)
            k = attn.k_proj(h).view(rows, 1, -1, dim)
            if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head before the rotary embedding
                q, k = _norm(attn.q_norm, q), _norm(attn.k_norm, k)
            # [A, heads, 1, dim] and [A, kv, 1, dim]
            q, k = self.rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            kv = k.shape[1]
            self.keys[i][:, :, slots] = k.view(prompts, n, kv, dim).transpose(1, 2)
            self.values[i][:, :, slots] = attn.v_proj(h).view(prompts, n, kv, dim).transpose(1, 2)
            q = q.reshape(prompts, n, kv, -1, dim).transpose(1, 2).reshape(prompts, kv, -1, dim)
            out = F.scaled_dot_product_attention(q, self.keys[i][:, :, :end], self.values[i][:, :, :end], bias,
                                                 scale=attn.scaling)  # fmt: skip
            out = out.view(prompts, kv, n, -1, dim).transpose(1, 2).reshape(rows, -1)  # [A, heads * dim]
            x = x + attn.o_proj(out)
            h = _norm(layer.post_attention_layernorm, x)
            mlp = layer.mlp
            x = x + mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))
        self.t += 1
        return self.model.lm_head(_norm(inner.norm, x)).float()


def _norm(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for an RMSNorm; in float32 the fused ``F.rms_norm`` computes the same numbers in one op."""
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", None)
    if x.dtype == torch.float32 and weight is not None and weight.dtype == torch.float32 and eps is not None:
        return F.rms_norm(x, weight.shape, weight, eps)
    return module(x)
