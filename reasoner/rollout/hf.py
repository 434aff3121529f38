"""Rollouts with transformers models: batched, left-padded, KV-cached, seeded. CPU and GPU.

Two samplers: ``fast`` (the default) prefills each prompt once and decodes its ``n`` samples together, reading
the prompt's cache once for all of them (reasoner.rollout.sampler); ``generate`` is transformers' ``generate(num_return_sequences=n)``, kept as the
reference the fast one is tested against. The engine shares the policy module with the trainer, so
``sync_weights`` has nothing to copy. Both report each decoding step to an optional ``on_tokens`` callback
(the server streams with it). ``SamplingParams.logprobs`` (the fast sampler only) adds each token's log-prob,
taken from the logits it was sampled from, to the callback and to the rollouts.
Both end a row at ``SamplingParams.stop`` strings (:class:`StopWatch`).
Prompts are strings, or token ids taken as they are (the tool loop resumes from the tokens it sampled).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
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
        self,
        prompts: list[str] | list[list[int]],
        params: SamplingParams,
        on_tokens: TokenCallback | None = None,
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

    @torch.no_grad()
    def generate_mixed(
        self, requests: Sequence[tuple[str, SamplingParams]], on_tokens: TokenCallback | None = None
    ) -> list[list[Rollout]]:
        """Requests with settings of their own (``n``, temperature, top-p, ``max_new_tokens``, seed, log-probs)
        decoded in shared batches: ``result[i]`` holds request ``i``'s ``n`` rollouts, each at most its ``max_new_tokens``.
        ``on_tokens`` numbers rows over all the requests' rollouts in order (request 0's n, then request 1's).

        A seeded request's rollouts depend on its prompt, settings and seed alone, not on the requests beside it:
        each of its samples draws from a generator of its own, seeded from the request's seed
        (reasoner.rollout.sampler.RowSampling). A greedy request decodes once and copies its answer ``n`` times;
        the others decode in units of ``g`` samples per prompt copy, ``g`` the gcd of their ``n``.
        The ``generate`` sampler has no per-row settings: it runs each group of equal settings on its own."""
        if self.sampler != "fast":
            return self._generate_grouped(requests, on_tokens)
        from reasoner.rollout.sampler import RowSampling

        decoded = [1 if p.temperature == 0 else p.n for _, p in requests]  # samples each request decodes
        g = math.gcd(*decoded) if decoded else 1
        # each unit: g samples of one request's prompt, as (request, its first sample)
        units = [(i, c * g) for i, d in enumerate(decoded) for c in range(d // g)]
        first = list(itertools.accumulate((p.n for _, p in requests), initial=0))  # output row of rollout 0
        generators = [_sample_generators(p.seed, d) for (_, p), d in zip(requests, decoded, strict=True)]
        out: list[list[Rollout]] = [[] for _ in requests]
        tok, model = self.tokenizer, self.model
        per_call = max(1, self.batch_size // g)
        k_top = max((p.logprobs for _, p in requests if p.logprobs is not None), default=None)
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(units), per_call):
                chunk = units[start : start + per_call]
                # each decode row's request and sample
                rows = [(i, k + j) for i, k in chunk for j in range(g)]
                params = [requests[i][1] for i, _ in rows]
                targets = [  # each decode row's output rows (a greedy request's n copies share one row)
                    [first[i] + k] if decoded[i] == requests[i][1].n else list(range(first[i], first[i + 1]))
                    for i, k in rows
                ]
                per_row = RowSampling(
                    temperature=torch.tensor([p.temperature for p in params], dtype=torch.float32),
                    top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32),
                    generators=[generators[i][k] for i, k in rows],
                    max_new_tokens=torch.tensor([p.max_new_tokens for p in params]),
                )
                got: list[list[tuple[float, list[tuple[int, float]]]]] = [
                    [] for _ in rows
                ]  # log-probs per row
                step = None
                if on_tokens is not None or k_top is not None:

                    def step(decode_rows, ids, lps, targets=targets, got=got):
                        if lps is not None:
                            for j, r in enumerate(decode_rows):
                                top = list(zip(lps.top_ids[j], lps.top_logprobs[j], strict=True))
                                got[r].append((lps.sampled[j], top))
                        if on_tokens is None:
                            return
                        which = [(j, o) for j, r in enumerate(decode_rows) for o in targets[r]]
                        picked = None if lps is None else StepLogprobs(
                            *([column[j] for j, _ in which] for column in (lps.sampled, lps.top_ids, lps.top_logprobs))
                        )  # fmt: skip
                        on_tokens([o for _, o in which], [ids[j] for j, _ in which], picked)

                enc = tok([requests[i][0] for i, _ in chunk], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(model.device)  # fmt: skip
                completions = self._fast(
                    model, enc["input_ids"], enc["attention_mask"], n=g,
                    max_new_tokens=int(per_row.max_new_tokens.max()), temperature=1.0, top_p=1.0,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, on_step=step, rows=per_row,
                    logprobs=k_top,
                )  # fmt: skip
                masks = enc["attention_mask"].tolist()
                for r, ((i, _), row) in enumerate(zip(rows, completions.tolist(), strict=True)):
                    row = row[: params[r].max_new_tokens]
                    if tok.eos_token_id in row:
                        completion, finish = row[: row.index(tok.eos_token_id) + 1], "stop"
                    else:
                        completion, finish = row, "length"
                    ids = enc["input_ids"][r // g].tolist()
                    prompt_ids = [t for t, m in zip(ids, masks[r // g], strict=True) if m]
                    text = tok.decode(completion, skip_special_tokens=True)
                    steps = got[r][: len(completion)] if k_top is not None else None
                    lps = None if steps is None else [lp for lp, _ in steps]
                    tops = None if steps is None else [top for _, top in steps]
                    out[i] += [
                        Rollout(i, prompt_ids, list(completion), text, finish, lps, tops) for _ in targets[r]
                    ]
        finally:
            model.train(was_training)
        return out

    def _generate_grouped(
        self, requests: Sequence[tuple[str, SamplingParams]], on_tokens: TokenCallback | None
    ) -> list[list[Rollout]]:
        """``generate_mixed`` one ``generate`` call per group of requests with equal settings."""
        first = list(itertools.accumulate((p.n for _, p in requests), initial=0))
        groups: dict[SamplingParams, list[int]] = {}
        for i, (_, p) in enumerate(requests):
            groups.setdefault(p, []).append(i)
        out: list[list[Rollout]] = [[] for _ in requests]
        for params, members in groups.items():
            step = None
            if on_tokens is not None:

                def step(rows, ids, lps, members=members, n=params.n):
                    on_tokens([first[members[r // n]] + r % n for r in rows], ids, lps)

            rollouts = self.generate([requests[i][0] for i in members], params, step)
            for j, i in enumerate(members):
                out[i] = [replace(r, prompt_index=i) for r in rollouts[j * params.n : (j + 1) * params.n]]
        return out

    def _generate(
        self,
        prompts: list[str] | list[list[int]],
        params: SamplingParams,
        offset: int,
        generator,
        on_tokens: TokenCallback | None,
    ) -> list[Rollout]:
        tok, model = self.tokenizer, self.model
        if prompts and not isinstance(prompts[0], str):  # token ids, used as they are
            if any(isinstance(p, str) for p in prompts):
                raise TypeError(
                    "HFEngine.generate: prompts must be all strings or all token-id lists, not a mix"
                )
            enc = _left_pad(prompts, tok.pad_token_id, model.device)
        else:
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        watch = StopWatch(tok, params.stop, len(prompts) * params.n) if params.stop else None
        was_training = model.training
        model.eval()
        got: list[list[tuple[float, list[tuple[int, float]]]]] = [[] for _ in range(len(prompts) * params.n)]
        step = None if on_tokens is None else _offset_rows(on_tokens, offset * params.n)
        if params.logprobs is not None:  # each row's (log-prob, top k) per step, as the sampler reports them
            report = step

            def step(rows, ids, lps):
                for j, row in enumerate(rows):
                    got[row].append(
                        (lps.sampled[j], list(zip(lps.top_ids[j], lps.top_logprobs[j], strict=True)))
                    )
                if report is not None:
                    report(rows, ids, lps)

        try:
            completions = self._decode(enc, params, generator, step, watch)  # [len(prompts) * n, <= max_new]
        finally:
            model.train(was_training)
        prompt_rows = enc["input_ids"].repeat_interleave(params.n, dim=0).tolist()
        mask_rows = enc["attention_mask"].repeat_interleave(params.n, dim=0).tolist()
        rollouts = []
        for i, row in enumerate(completions.tolist()):
            stop_at, reason = (None, None) if watch is None else (watch.at[i], watch.reason[i])
            if stop_at is not None and tok.eos_token_id not in row[:stop_at]:
                completion, finish = row[:stop_at], "stop"
            elif tok.eos_token_id in row:
                completion, finish, reason = row[: row.index(tok.eos_token_id) + 1], "stop", None
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
                    stop_reason=reason,
                )
            )
        return rollouts

    def _decode(
        self, enc, params: SamplingParams, generator, on_tokens: TokenCallback | None = None, watch=None
    ) -> torch.Tensor:
        tok, greedy = self.tokenizer, params.temperature == 0
        if self.sampler == "fast":
            return self._fast(
                self.model, enc["input_ids"], enc["attention_mask"], n=params.n,
                max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, generator=generator,
                on_step=on_tokens, logprobs=params.logprobs, stop_check=watch,
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
            stopping_criteria=None if watch is None else StoppingCriteriaList([_WatchCriteria(watch)]),
        )
        return seqs[:, enc["input_ids"].shape[1] :]

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    def sleep(self) -> None:
        pass  # nothing to free: the engine holds no memory of its own between calls

    def wake_up(self) -> None:
        pass


def _sample_generators(seed: int | None, samples: int) -> list[torch.Generator]:
    """One CPU generator per sample of a request: seeded from the request's seed, or from the OS when it has none."""
    if seed is None:
        generators = [torch.Generator() for _ in range(samples)]
        for g in generators:
            g.seed()
        return generators
    seeds = torch.randint(0, 2**62, (samples,), generator=torch.Generator().manual_seed(seed)).tolist()
    return [torch.Generator().manual_seed(s) for s in seeds]


class StopWatch:
    """Ends rows at stop strings: called with each decoding step's ``(rows, token_ids)``, it answers which of
    those rows have just completed one of ``stops``. ``at[row]`` is then the completion's length up to and
    including the token that completed it, and ``reason[row]`` the string.

    Each row keeps the tail of its decoded text (token pieces decoded one by one, long enough for the longest
    stop string), so a stop string split over several tokens is found, at a dictionary lookup per token.

    >>> from reasoner.models import build_char_tokenizer
    >>> tok = build_char_tokenizer()
    >>> w = StopWatch(tok, ("</python>",), rows=2)
    >>> for ch0, ch1 in zip("a</python>", "bcdefghijk"):
    ...     hit = w([0, 1], tok.convert_tokens_to_ids([ch0, ch1]))
    >>> w.at, w.reason, hit
    ([10, None], ['</python>', None], [True, False])
    """

    def __init__(self, tokenizer, stops: tuple[str, ...], rows: int):
        if not stops or any(not s for s in stops):
            raise ValueError(f"stop strings must be non-empty, got {stops!r}")
        self.tokenizer, self.stops = tokenizer, tuple(stops)
        self.keep = max(len(s) for s in stops)
        self.tails, self.count = [""] * rows, [0] * rows
        self.at: list[int | None] = [None] * rows
        self.reason: list[str | None] = [None] * rows
        self._pieces: dict[int, str] = {}

    def __call__(self, rows, ids) -> list[bool]:
        out = []
        for r, i in zip(rows, ids, strict=True):
            if self.at[r] is None:
                self.count[r] += 1
                piece = self._pieces.get(i)
                if piece is None:
                    piece = self._pieces[i] = self.tokenizer.decode([i], skip_special_tokens=True)
                tail = self.tails[r] + piece
                hit = next((s for s in self.stops if s in tail), None)
                if hit is not None:
                    self.at[r], self.reason[r] = self.count[r], hit
                self.tails[r] = tail[-(self.keep - 1) :] if self.keep > 1 else ""
            out.append(self.at[r] is not None)
        return out


class _WatchCriteria(StoppingCriteria):
    """A :class:`StopWatch` as a per-row stopping criterion of transformers' ``generate``."""

    def __init__(self, watch: StopWatch):
        self.watch = watch

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        hits = self.watch(range(input_ids.shape[0]), input_ids[:, -1].tolist())
        return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)


def _left_pad(prompts: list[list[int]], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Token-id prompts as a left-padded batch, as the tokenizer pads strings."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


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
