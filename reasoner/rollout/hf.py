"""Rollouts with transformers ``generate``: batched, left-padded, KV-cached, seeded. CPU and GPU.

The engine shares the policy module with the trainer, so ``sync_weights`` has nothing to copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from transformers.generation.streamers import BaseStreamer

from reasoner.rollout.base import Rollout, SamplingParams

# on_tokens(rows, token_ids): one decoding step's new token per row; rows are indices into generate's output
# (prompt-major, n rows per prompt). A finished row keeps receiving the pad token until the whole call ends.
TokenCallback = Callable[[Sequence[int], list[int]], None]


class HFEngine:
    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 256):
        if tokenizer.padding_side != "left":
            raise ValueError("HFEngine needs a left-padding tokenizer (tokenizer.padding_side = 'left')")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @torch.no_grad()
    def generate(
        self, prompts: list[str], params: SamplingParams, on_tokens: TokenCallback | None = None
    ) -> list[Rollout]:
        """``on_tokens``, when given, sees every decoding step as it happens (the server streams with it)."""
        n = params.n
        if params.temperature == 0 and n > 1:  # greedy samples are identical: decode once, copy n times
            fan_out = None
            if on_tokens is not None:

                def fan_out(rows, ids):
                    on_tokens([r * n + k for r in rows for k in range(n)], [t for t in ids for _ in range(n)])

            once = self.generate(prompts, replace(params, n=1), fan_out)
            return [replace(r, completion_ids=list(r.completion_ids)) for r in once for _ in range(n)]
        if params.seed is not None:
            torch.manual_seed(params.seed)
        per_call = max(1, self.batch_size // n)
        out: list[Rollout] = []
        for start in range(0, len(prompts), per_call):
            out += self._generate(prompts[start : start + per_call], params, start, on_tokens)
        return out

    def _generate(
        self, prompts: list[str], params: SamplingParams, offset: int, on_tokens: TokenCallback | None = None
    ) -> list[Rollout]:
        tok, model = self.tokenizer, self.model
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        greedy = params.temperature == 0
        was_training = model.training
        model.eval()
        try:
            seqs = model.generate(
                **enc,
                max_new_tokens=params.max_new_tokens,
                do_sample=not greedy,
                temperature=None if greedy else params.temperature,
                top_p=None if greedy else params.top_p,
                top_k=None,
                num_return_sequences=params.n,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                streamer=None if on_tokens is None else _StepStreamer(on_tokens, offset * params.n),
            )
        finally:
            model.train(was_training)
        width = enc["input_ids"].shape[1]
        prompt_rows = enc["input_ids"].repeat_interleave(params.n, dim=0).tolist()
        mask_rows = enc["attention_mask"].repeat_interleave(params.n, dim=0).tolist()
        rollouts = []
        for i, row in enumerate(seqs[:, width:].tolist()):
            if tok.eos_token_id in row:
                completion, finish = row[: row.index(tok.eos_token_id) + 1], "stop"
            else:
                completion, finish = row, "length"
            prompt_ids = [t for t, m in zip(prompt_rows[i], mask_rows[i], strict=True) if m]
            rollouts.append(
                Rollout(
                    prompt_index=offset + i // params.n,
                    prompt_ids=prompt_ids,
                    completion_ids=completion,
                    text=tok.decode(completion, skip_special_tokens=True),
                    finish_reason=finish,
                )
            )
        return rollouts

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    def sleep(self) -> None:
        pass  # nothing to free: the engine holds no memory of its own between calls

    def wake_up(self) -> None:
        pass


class _StepStreamer(BaseStreamer):
    """Hands each decoding step's tokens to ``on_tokens`` with their rows in the whole ``generate`` call."""

    def __init__(self, on_tokens: TokenCallback, first_row: int):
        self.on_tokens, self.first_row, self.prompt_seen = on_tokens, first_row, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # transformers puts the prompt ids first
            self.prompt_seen = True
            return
        ids = value.reshape(-1).tolist()
        self.on_tokens(range(self.first_row, self.first_row + len(ids)), ids)

    def end(self) -> None:
        pass
