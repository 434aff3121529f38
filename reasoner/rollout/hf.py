"""Rollouts with transformers models: batched, left-padded, KV-cached, seeded. CPU and GPU.

Two samplers: ``fast`` (the default) prefills each prompt once and decodes its ``n`` samples together, reading
the prompt's cache once for all of them (reasoner.rollout.sampler); ``generate`` is transformers' ``generate(num_return_sequences=n)``, kept as the
reference the fast one is tested against. The engine shares the policy module with the trainer, so
``sync_weights`` has nothing to copy.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from reasoner.rollout.base import Rollout, SamplingParams

SAMPLERS = ("fast", "generate")


class HFEngine:
    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 256, sampler: str = "fast"):
        if tokenizer.padding_side != "left":
            raise ValueError("HFEngine needs a left-padding tokenizer (tokenizer.padding_side = 'left')")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        if sampler == "fast":
            try:  # transformers' cache layers (4.56+)
                from reasoner.rollout.sampler import prefill_once_sample
            except ImportError as e:
                raise ValueError(f"the fast sampler needs transformers >= 4.56 ({e}); set rollout.sampler=generate "
                                 "or upgrade transformers") from None  # fmt: skip
            self._fast = prefill_once_sample
        self.model, self.tokenizer, self.batch_size, self.sampler = model, tokenizer, batch_size, sampler

    @torch.no_grad()
    def generate(self, prompts: list[str], params: SamplingParams) -> list[Rollout]:
        if (
            params.temperature == 0 and params.n > 1
        ):  # greedy samples are identical: decode once, copy n times
            once = self.generate(prompts, replace(params, n=1))
            return [replace(r, completion_ids=list(r.completion_ids)) for r in once for _ in range(params.n)]
        generator = None  # fast: its own seeded stream; generate: torch's global one, seeded here
        if params.seed is not None and self.sampler == "fast":
            generator = torch.Generator(self.model.device).manual_seed(params.seed)
        elif params.seed is not None:
            torch.manual_seed(params.seed)
        per_call = max(1, self.batch_size // params.n)
        out: list[Rollout] = []
        for start in range(0, len(prompts), per_call):
            out += self._generate(prompts[start : start + per_call], params, start, generator)
        return out

    def _generate(self, prompts: list[str], params: SamplingParams, offset: int, generator) -> list[Rollout]:
        tok, model = self.tokenizer, self.model
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        was_training = model.training
        model.eval()
        try:
            completions = self._decode(enc, params, generator)  # [len(prompts) * n, <= max_new_tokens]
        finally:
            model.train(was_training)
        prompt_rows = enc["input_ids"].repeat_interleave(params.n, dim=0).tolist()
        mask_rows = enc["attention_mask"].repeat_interleave(params.n, dim=0).tolist()
        rollouts = []
        for i, row in enumerate(completions.tolist()):
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

    def _decode(self, enc, params: SamplingParams, generator) -> torch.Tensor:
        tok, greedy = self.tokenizer, params.temperature == 0
        if self.sampler == "fast":
            return self._fast(
                self.model, enc["input_ids"], enc["attention_mask"], n=params.n,
                max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, generator=generator,
            )  # fmt: skip
        seqs = self.model.generate(
            **enc,
            max_new_tokens=params.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p,
            top_k=None,
            num_return_sequences=params.n,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        return seqs[:, enc["input_ids"].shape[1] :]

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    def sleep(self) -> None:
        pass  # nothing to free: the engine holds no memory of its own between calls

    def wake_up(self) -> None:
        pass
