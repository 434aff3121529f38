"""Rollouts with transformers models: batched, left-padded, KV-cached, seeded. CPU and GPU.

Two samplers: ``fast`` (the default) prefills each prompt once and decodes its ``n`` samples together, reading
the prompt's cache once for all of them (reasoner.rollout.sampler); ``generate`` is transformers' ``generate(num_return_sequences=n)``, kept as the
reference the fast one is tested against. The engine shares the policy module with the trainer, so
``sync_weights`` has nothing to copy. Both report each decoding step to an optional ``on_tokens`` callback
(the server streams with it). ``SamplingParams.logprobs`` (the fast sampler only) adds each token's log-prob,
taken from the logits it was sampled from, to the callback and to the rollouts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from transformers.generation.streamers import BaseStreamer

from reasoner.rollout.base import Rollout, SamplingParams, StepLogprobs

SAMPLERS = ("fast", "generate")

# on_tokens(rows, token_ids, logprobs): one decoding step's new token per row; rows are indices into generate's
# output (prompt-major, n rows per prompt); logprobs: the step's StepLogprobs (rows in the same order) when
# SamplingParams.logprobs is set, else None. A finished row may keep receiving the pad token for a while, or stop
# being reported (the fast sampler drops finished rows); either way nothing follows its EOS but padding.
TokenCallback = Callable[[Sequence[int], list[int], StepLogprobs | None], None]


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
    def generate(
        self, prompts: list[str], params: SamplingParams, on_tokens: TokenCallback | None = None
    ) -> list[Rollout]:
        """``on_tokens``, when given, sees every decoding step as it happens."""
        n = params.n
        if params.temperature == 0 and n > 1:  # greedy samples are identical: decode once, copy n times
            fan_out = None
            if on_tokens is not None:

                def fan_out(rows, ids, lps):
                    on_tokens([r * n + k for r in rows for k in range(n)], [t for t in ids for _ in range(n)],
                              None if lps is None else _repeat(lps, n))  # fmt: skip

            once = self.generate(prompts, replace(params, n=1), fan_out)
            return [replace(r, completion_ids=list(r.completion_ids)) for r in once for _ in range(n)]
        generator = None  # fast: its own seeded stream; generate: torch's global one, seeded here
        if params.seed is not None and self.sampler == "fast":
            generator = torch.Generator(self.model.device).manual_seed(params.seed)
        elif params.seed is not None:
            torch.manual_seed(params.seed)
        per_call = max(1, self.batch_size // params.n)
        out: list[Rollout] = []
        for start in range(0, len(prompts), per_call):
            out += self._generate(prompts[start : start + per_call], params, start, generator, on_tokens)
        return out

    def _generate(
        self,
        prompts: list[str],
        params: SamplingParams,
        offset: int,
        generator,
        on_tokens: TokenCallback | None,
    ) -> list[Rollout]:
        tok, model = self.tokenizer, self.model
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        was_training = model.training
        model.eval()
        got: list[list[tuple[float, list[tuple[int, float]]]]] = [[] for _ in range(len(prompts) * params.n)]
        step = None if on_tokens is None else _offset_rows(on_tokens, offset * params.n)
        if params.logprobs is not None:  # each row's (log-prob, top k) per step, as the sampler reports them
            report = step

            def step(rows, ids, lps):
                for row, lp, top_ids, top_lps in zip(
                    rows, lps.sampled, lps.top_ids, lps.top_logprobs, strict=True
                ):
                    got[row].append((lp, list(zip(top_ids, top_lps, strict=True)) if top_ids else []))
                if report is not None:
                    report(rows, ids, lps)

        try:
            completions = self._decode(enc, params, generator, step)  # [len(prompts) * n, <= max_new_tokens]
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
            steps = got[i][: len(completion)] if params.logprobs is not None else None
            rollouts.append(
                Rollout(
                    prompt_index=offset + i // params.n,
                    prompt_ids=prompt_ids,
                    completion_ids=completion,
                    text=tok.decode(completion, skip_special_tokens=True),
                    finish_reason=finish,
                    logprobs=None if steps is None else [lp for lp, _ in steps],
                    top_logprobs=None if steps is None else [top for _, top in steps],
                )
            )
        return rollouts

    def _decode(
        self, enc, params: SamplingParams, generator, on_tokens: TokenCallback | None = None
    ) -> torch.Tensor:
        tok, greedy = self.tokenizer, params.temperature == 0
        if self.sampler == "fast":
            return self._fast(
                self.model, enc["input_ids"], enc["attention_mask"], n=params.n,
                max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, generator=generator,
                on_step=on_tokens, logprobs=params.logprobs,
            )  # fmt: skip
        if params.logprobs is not None:
            raise ValueError(
                "log-probs (SamplingParams.logprobs) need the fast sampler: set rollout.sampler=fast"
            )
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
            streamer=None if on_tokens is None else _StepStreamer(on_tokens),
        )
        return seqs[:, enc["input_ids"].shape[1] :]

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    def sleep(self) -> None:
        pass  # nothing to free: the engine holds no memory of its own between calls

    def wake_up(self) -> None:
        pass


def _offset_rows(on_tokens: TokenCallback, first_row: int) -> TokenCallback:
    """A chunk's rows numbered in the whole ``generate`` call (chunks of ``batch_size`` sequences)."""
    return lambda rows, ids, lps: on_tokens([first_row + r for r in rows], ids, lps)


def _repeat(lps: StepLogprobs, n: int) -> StepLogprobs:
    """Each row's entry ``n`` times (greedy samples decoded once, reported as their n copies)."""
    return StepLogprobs(
        *([x for x in column for _ in range(n)] for column in (lps.sampled, lps.top_ids, lps.top_logprobs))
    )


class _StepStreamer(BaseStreamer):
    """Hands each decoding step of transformers' ``generate`` to ``on_tokens`` (rows numbered in the chunk)."""

    def __init__(self, on_tokens: TokenCallback):
        self.on_tokens, self.prompt_seen = on_tokens, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # transformers puts the prompt ids first
            self.prompt_seen = True
            return
        ids = value.reshape(-1).tolist()
        self.on_tokens(range(len(ids)), ids, None)

    def end(self) -> None:
        pass
