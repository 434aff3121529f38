"""A decode loop for GRPO-shaped rollouts: prefill each prompt once, then decode its ``n`` samples together.

``model.generate(num_return_sequences=n)`` repeats every prompt ``n`` times *before* the prefill, so a group of 8
pays for its prompt 8 times, and its loop runs logits processors, stopping criteria and cache bookkeeping around
every token. Here the prefill runs on the unique prompts ``[B, L]``; row ``i * n + j`` of the decode is sample
``j`` of prompt ``i`` (the engine's prompt-major order), and each step is one forward on ``[rows, 1]`` plus
temperature / top-p sampling written out by hand. The samples see their prompt in one of two ways:

- shared (the default when every cache layer is a plain one): the prompt's keys and values stay one copy per
  prompt and a decode-time attention reads them once for its n samples (reasoner.rollout.prefix_attention);
- copied: the prompt's cache is repeated n-fold into buffers preallocated for the whole completion, so a step
  writes its position in place instead of concatenating the cache (:class:`BufferLayer`).

Rows that reach EOS are padded from then on; once a quarter of the batch has finished they leave it (their cache
with them: a prompt's n rows together when they share it), and the loop ends when none is left. Left padding
and position ids follow ``generate``, so greedy outputs are the same tokens; sampling draws from the same
distribution (not the same random stream), reproducibly from a seed through its own ``torch.Generator``,
leaving torch's global RNG alone. ``generate`` stays the reference (``rollout.sampler = "generate"``);
tests/rollout/test_sampler.py checks the two agree.

With ``rows`` (:class:`RowSampling`) every row has its own temperature, top-p, generator and budget, so requests
with different settings share one decode (the server's batches, reasoner.rollout.hf.HFEngine.generate_mixed); a
row's tokens then depend only on its prompt, settings and generator.

For the model families it knows (Llama, Mistral, Qwen2/3 with plain projections), the decode step itself is
reasoner.rollout.lean's: the same computation from the model's weights without transformers' per-step
plumbing, with each prompt and its samples' tokens in one buffer and one fused attention call per layer (on the
tiny model, generation +24% tokens/s at 1 thread). Other models decode through their forward as above.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from reasoner.rollout.base import StepLogprobs
from reasoner.rollout.lean import MAX_OWN_SLOTS, LeanDecode, unsupported
from reasoner.rollout.prefix_attention import SharedPrefix, shared_prefix_attention_in


@torch.no_grad()
def prefill_once_sample(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # [B, L] left-padded prompts
    attention_mask: torch.Tensor,  # [B, L]
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,  # 0 = greedy
    top_p: float,
    eos_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    share_prefix: bool | None = None,  # None: when lean, or n > 1 and every cache layer is a plain one
    on_step: Callable[[list[int], list[int], StepLogprobs | None], None] | None = None,
    lean: bool | None = None,  # None: reasoner.rollout.lean's decode step wherever it runs the model
    logprobs: int | None = None,  # k: each step's log-probs (the sampled token's and the top k) go to on_step
    # each row's own settings (then temperature, top_p and generator are unused)
    rows: RowSampling | None = None,
    stop_check: Callable[[list[int], list[int]], list[bool]] | None = None,
) -> torch.Tensor:
    """The completions ``[B * n, max_new_tokens]``, prompt-major, each padded with ``pad_token_id`` after its EOS.

    ``on_step(rows, ids, logprobs)``, when given, receives each step's token of every row still in the batch
    (output row indices; a finished row gets padding until it is dropped) and, with ``logprobs=k``, their
    log-probs from the logits they were sampled from (:func:`step_logprobs`; None otherwise). With ``rows``, each
    row samples with its own temperature, top-p and generator and ends at its own budget (padded after it, as
    after an EOS). ``stop_check(rows, ids)``, when given, sees each step's tokens as ``on_step`` does and answers
    which rows are done (a stop string): they are padded from then on, as after an EOS."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if logprobs is not None and on_step is None:
        raise ValueError("logprobs are reported through on_step: give on_step too")
    if rows is not None:
        rows.check(len(input_ids) * n, max_new_tokens)
    forward_args = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in forward_args else "past_key_values"  # renamed in transformers 5.x
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in forward_args else {}
    positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)  # [B, L] as generate's
    cache = DynamicCache(config=model.config)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                **{cache_arg: cache}, **last_only)  # fmt: skip
    plain = all(type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers)
    why_not_lean = (
        "lean=False" if lean is False
        else "the model's cache layers are not all plain DynamicLayers" if not plain
        else "share_prefix=False" if share_prefix is False
        else unsupported(model) or (f"n * max_new_tokens > {MAX_OWN_SLOTS}" if n * max_new_tokens > MAX_OWN_SLOTS else None)
    )  # fmt: skip
    if lean and why_not_lean is not None:
        raise ValueError(f"lean=True cannot run: {why_not_lean}")
    lean = why_not_lean is None
    share_prefix = lean or (n > 1 and plain) if share_prefix is None else share_prefix
    if share_prefix and not plain:
        raise ValueError("share_prefix needs a model whose cache layers are all plain DynamicLayers")
    # unit: rows that leave the batch together (a prompt's n rows when they share it)
    prefix, step, unit = None, None, 1
    if lean:  # one buffer per prompt for its prompt and its samples' tokens (reasoner.rollout.lean)
        step, unit = LeanDecode(model, cache, attention_mask, n, max_new_tokens), n
    elif share_prefix:
        prefix = SharedPrefix([x.keys for x in cache.layers], [x.values for x in cache.layers],
                              attention_mask.bool())  # fmt: skip
        rows_shape = (
            len(input_ids) * n,
            *cache.layers[0].keys.shape[1:2],
            max_new_tokens,
            cache.layers[0].keys.shape[-1],
        )
        cache.layers = [BufferLayer(x.keys.new_empty(rows_shape), x.values.new_empty(rows_shape), 0, input_ids.shape[1])
                        for x in cache.layers]  # fmt: skip
        unit = n
    else:  # the prompt's cache, copied for each of its samples into buffers with room for the whole completion
        preallocate(cache, n, max_new_tokens - 1)
    logits = out.logits[:, -1].float().repeat_interleave(n, dim=0)  # [B*n, V]
    attention_mask = torch.cat(
        [attention_mask, attention_mask.new_ones(attention_mask.shape[0], max_new_tokens - 1)], dim=1
    ).repeat_interleave(n, dim=0)  # [B*n, L + T - 1]: column L + t is read from step t on
    width = input_ids.shape[1]
    position = positions[:, -1:].repeat_interleave(n, dim=0)  # [A, 1]
    per_row = rows  # each row's own settings, or None
    rows = torch.arange(logits.shape[0], device=logits.device)  # [A] each live row's output row
    tokens = torch.full(
        (logits.shape[0], max_new_tokens), pad_token_id, dtype=torch.long, device=logits.device
    )
    live = torch.ones_like(rows, dtype=torch.bool)  # [A] rows that have not produced EOS yet
    extra = {} if prefix is None else {"shared_prefix": prefix}
    with shared_prefix_attention_in(model) if prefix is not None else nullcontext():
        for t in range(max_new_tokens):
            if per_row is None:
                nxt = pick(logits, temperature, top_p, generator)  # [A]
            else:
                nxt = per_row.pick(logits, rows)  # [A]
            tokens[rows, t] = torch.where(live, nxt, pad_token_id)
            if on_step is not None:
                heat = temperature if per_row is None else per_row.temperature.to(rows.device)[rows]  # [A]
                lps = None if logprobs is None else step_logprobs(logits, nxt, heat, logprobs)
                on_step(rows.tolist(), tokens[rows, t].tolist(), lps)
            live = live & (nxt != eos_token_id)
            if per_row is not None:  # a row's own budget ends it as an EOS would
                live = live & (per_row.max_new_tokens.to(rows.device)[rows] > t + 1)
            if stop_check is not None:
                done = stop_check(rows.tolist(), tokens[rows, t].tolist())
                live = live & ~torch.tensor(done, dtype=torch.bool, device=live.device)
            if t == max_new_tokens - 1:
                break
            units = live.view(-1, unit).any(1)  # [A / unit] units with a row still decoding
            dead = len(units) - int(units.sum())
            if dead == len(units):
                break
            # Finished rows need no more forwards, but dropping them copies their cache: do it once a quarter
            # of the batch has finished (with a copied prompt cache, a copy per finished row costs more than it saves).
            if dead * 4 >= len(units):
                kept = units.nonzero().squeeze(1)
                keep = (kept[:, None] * unit + torch.arange(unit, device=kept.device)).flatten()
                if step is not None:
                    step.select(kept)
                else:
                    cache.batch_select_indices(keep)
                if prefix is not None:
                    prefix.select(kept)
                rows, nxt, live = rows[keep], nxt[keep], live[keep]
                attention_mask, position = attention_mask[keep], position[keep]
            position = position + 1
            if step is not None:
                logits = step(nxt, position)
                continue
            calls = prefix.calls if prefix is not None else 0
            out = model(input_ids=nxt[:, None], attention_mask=attention_mask[:, : width + t + 1],
                        position_ids=position, use_cache=True, **{cache_arg: cache}, **extra)  # fmt: skip
            if prefix is not None and prefix.calls - calls != len(cache.layers):
                raise RuntimeError(f"{type(model).__name__}'s attention bypasses transformers' attention interface, "
                                   "so the shared-prompt decode cannot run: use rollout.sampler=generate")  # fmt: skip
            logits = out.logits[:, -1].float()
    return tokens


def step_logprobs(
    logits: torch.Tensor, sampled: torch.Tensor, temperature: float | torch.Tensor, k: int
) -> StepLogprobs:
    """The log-probs of ``sampled [A]`` and of the ``k`` most likely tokens under the distribution ``pick`` samples
    from, before its top-p cut: ``log_softmax(logits [A, V] / temperature)`` (temperature 0: the model's own).
    ``temperature``: one for all rows, or each row's ``[A]``.

    >>> lp = step_logprobs(torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([0]), 2.0, k=1)
    >>> round(lp.sampled[0], 4), lp.top_ids, round(lp.top_logprobs[0][0], 4)  # log 1/(2 + e), log e/(2 + e)
    (-1.5514, [[2]], -0.5514)
    """
    t = torch.as_tensor(temperature, dtype=torch.float32, device=logits.device)
    scores = logits.float() / torch.where(t > 0, t, 1.0).reshape(
        -1, 1
    )  # [A, V] (a single temperature: [1, 1])
    logp = scores.log_softmax(-1)  # [A, V]
    top = logp.topk(min(k, logp.shape[-1]), dim=-1)  # [A, k]
    picked = logp.gather(-1, sampled[:, None]).squeeze(-1)  # [A]
    return StepLogprobs(picked.tolist(), top.indices.tolist(), top.values.tolist())


def pick(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row of ``logits [A, V]``: argmax at temperature 0, else a sample from
    softmax(logits / temperature) restricted to the top-p nucleus (transformers' ``TopPLogitsWarper`` rule: drop
    the tokens whose ascending cumulative probability is <= 1 - top_p, always keeping the most likely one)."""
    if temperature == 0:
        return logits.argmax(-1)
    scores = logits / temperature
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1)  # ascending
        drop = sorted_scores.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)


@dataclass
class RowSampling:
    """Each decode row's own sampling settings, so that requests with different ones share one decode.

    A row's tokens depend only on its prompt, its settings and its own generator's stream: it draws one uniform
    number per step from its generator whatever else is in the batch, and samples by inverting its own
    cumulative distribution. (The shared-settings path keeps ``torch.multinomial`` on one generator: the
    trainer's samples for a seed stay what they were.)"""

    temperature: torch.Tensor  # [R] 0 = greedy
    top_p: torch.Tensor  # [R]
    generators: list[torch.Generator]  # [R] CPU generators, one per row
    max_new_tokens: torch.Tensor  # [R] long: the row ends after this many tokens

    def check(self, rows: int, max_new_tokens: int) -> None:
        sizes = {len(self.temperature), len(self.top_p), len(self.generators), len(self.max_new_tokens)}
        if sizes != {rows}:
            raise ValueError(
                f"RowSampling needs one entry per decode row ({rows}); got lengths {sorted(sizes)}"
            )
        if int(self.max_new_tokens.max()) > max_new_tokens or int(self.max_new_tokens.min()) < 1:
            raise ValueError(
                f"RowSampling.max_new_tokens must be in 1..{max_new_tokens} (the batch's budget)"
            )

    def pick(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """One token for each of ``logits [A, V]``'s rows, whose output rows are ``rows [A]``."""
        index = rows.tolist()
        uniform = torch.cat([torch.rand(1, generator=self.generators[r], dtype=torch.float64) for r in index])
        device = logits.device
        return pick_rows(
            logits, self.temperature.to(device)[rows], self.top_p.to(device)[rows], uniform.to(device)
        )


def pick_rows(
    logits: torch.Tensor,  # [A, V]
    temperature: torch.Tensor,  # [A] 0 = greedy
    top_p: torch.Tensor,  # [A]
    uniform: torch.Tensor,  # [A] float64 draws in [0, 1), one per row
) -> torch.Tensor:
    """``pick`` with each row's own temperature and top-p, sampling by inverse CDF from ``uniform``: the first
    token, in vocabulary order, whose cumulative probability exceeds ``uniform * total``, over the tokens ``pick``
    keeps (the top-p nucleus). The order is the same whatever the other rows' settings, so a row's token depends
    only on its own logits, settings and draw."""
    greedy = temperature == 0  # [A]
    scores = logits.float() / torch.where(greedy, 1.0, temperature).to(logits.dtype)[:, None]  # [A, V]
    probs = scores.softmax(-1)  # [A, V]
    if bool((top_p < 1).any()):  # a row with top_p 1 drops only tokens without mass
        sorted_probs, order = probs.sort(dim=-1)  # ascending
        drop = sorted_probs.cumsum(-1) <= (1 - top_p)[:, None]
        drop[:, -1] = False  # the most likely token always stays
        probs = probs.masked_fill(drop.scatter(1, order, drop), 0.0)
    cdf = probs.double().cumsum(-1)  # [A, V]
    index = (cdf <= (uniform * cdf[:, -1])[:, None]).sum(-1)  # [A]
    last = probs.shape[1] - 1 - (probs.flip(-1) > 0).int().argmax(-1)  # [A] the last token with mass
    index = torch.minimum(index, last)  # rounding at the top end never lands on a token without mass
    return torch.where(greedy, logits.argmax(-1), index)


def preallocate(cache, n: int, extra: int) -> None:
    """Repeat each row of a prefilled ``DynamicCache`` ``n`` times, into buffers ``extra`` positions longer, so that
    each decode step writes its keys and values in place instead of concatenating the whole cache
    (``torch.cat`` copies all of it, every step). Layers of other kinds (sliding windows) are only repeated."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            length = layer.keys.shape[-2]
            keys, values = (_repeat_into(x, n, extra) for x in (layer.keys, layer.values))
            cache.layers[i] = BufferLayer(keys, values, length, 0)
        else:
            layer.batch_repeat_interleave(n)


class BufferLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are the first ``length`` positions of preallocated
    ``[A, KV, capacity, D]`` buffers; ``update`` writes the next positions in place. ``prefix_length`` counts
    positions held elsewhere (the shared prompt) in the sequence length, as a full cache's would."""

    def __init__(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int, prefix_length: int):
        super().__init__()
        self.device, self.is_initialized = key_buffer.device, True
        self.key_buffer, self.value_buffer, self.length, self.prefix_length = (
            key_buffer,
            value_buffer,
            length,
            prefix_length,
        )
        self._views()

    def _views(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            raise RuntimeError(f"BufferLayer is full: {end} > {self.key_buffer.shape[-2]} positions")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.prefix_length + self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self._views()


def _repeat_into(x: torch.Tensor, n: int, extra: int) -> torch.Tensor:
    """``x [B, H, L, D]`` -> ``[B * n, H, L + extra, D]``: row ``i * n + j`` holds ``x[i]`` in its first L slots."""
    b, h, length, d = x.shape
    buffer = x.new_empty(b, n, h, length + extra, d)
    buffer[:, :, :, :length] = x[:, None]
    return buffer.view(b * n, h, length + extra, d)
