"""Per-row sampling settings (issue 32): requests with different seed, n, temperature, top-p and max_tokens share
one decode, and a seeded request's samples are the ones it gets alone."""

from __future__ import annotations

import pytest
import torch

from reasoner.rollout import SamplingParams
from reasoner.rollout.hf import HFEngine
from reasoner.rollout.sampler import RowSampling, pick_rows, prefill_once_sample
from tests.rollout.test_sampler import MIXED, encode, peaked  # noqa: F401 (peaked: a fixture)

PROBS = [0.1, 0.2, 0.7]


def rows(probs, settings, uniform):
    """pick_rows on one row per (temperature, top_p) setting, all with the logits log(probs)."""
    logits = torch.tensor(probs).log().repeat(len(settings), 1)
    temperature = torch.tensor([t for t, _ in settings])
    top_p = torch.tensor([p for _, p in settings])
    return pick_rows(logits, temperature, top_p, torch.tensor(uniform, dtype=torch.float64)).tolist()


def test_pick_rows_inverts_each_rows_own_cumulative_distribution():
    # temperature 1: cdf 0.1, 0.3, 1.0
    assert rows(PROBS, [(1.0, 1.0)] * 4, [0.0, 0.05, 0.15, 0.45]) == [0, 0, 1, 2]
    # temperature 2: p ** 0.5 normalised = 0.198, 0.279, 0.523 (cdf 0.198, 0.477): u = 0.45 is token 1 now
    assert rows(PROBS, [(2.0, 1.0), (1.0, 1.0)], [0.45, 0.45]) == [1, 2]
    # top-p 0.75 drops 0.1 (its ascending cdf 0.1 <= 0.25): kept 0.2, 0.7 of 0.9; u = 0.1 -> 0.09 < 0.2: token 1
    # (vocabulary order: the dropped token 0 has no mass left)
    assert rows(PROBS, [(1.0, 0.75), (1.0, 0.75), (1.0, 1.0)], [0.0, 0.1, 0.0]) == [1, 1, 0]
    # top-p 0.5 keeps only the most likely token; temperature 0 is argmax whatever the draw
    assert rows(PROBS, [(1.0, 0.5), (0.0, 1.0), (0.0, 0.1)], [0.0, 0.0, 0.99]) == [2, 2, 2]
    # a row's token does not depend on its neighbour's top-p (vocabulary order both times: cdf 0.7, 0.8, 1.0)
    assert rows([0.7, 0.1, 0.2], [(1.0, 1.0)], [0.75]) == [1]
    assert rows([0.7, 0.1, 0.2], [(1.0, 1.0), (1.0, 0.5)], [0.75, 0.0]) == [1, 0]
    # the top of the unit interval lands on a token with mass, not past it
    assert rows([0.5, 0.5, 0.0], [(1.0, 1.0)], [1 - 1e-16]) == [1]


def expected(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """softmax(logits / temperature) over the top-p nucleus, by hand: the smallest set of most likely tokens
    whose probability reaches top_p."""
    probs = (logits / temperature).softmax(-1)
    order = probs.argsort(descending=True).tolist()
    kept, total = [], 0.0
    for t in order:
        kept.append(t)
        total += float(probs[t])
        if total >= top_p:
            break
    out = torch.zeros_like(probs)
    out[kept] = probs[kept] / probs[kept].sum()
    return out


def test_each_row_samples_from_its_own_temperature_and_top_p():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])
    settings = [(1.0, 1.0), (0.5, 1.0), (1.0, 0.6), (2.0, 0.9)]
    draws = 4000
    gen = torch.Generator().manual_seed(0)
    uniform = torch.rand(draws * len(settings), generator=gen, dtype=torch.float64)
    temperature = torch.tensor([t for t, _ in settings]).repeat(draws)  # row r has setting r % 4
    top_p = torch.tensor([p for _, p in settings]).repeat(draws)
    picked = pick_rows(logits.repeat(len(uniform), 1), temperature, top_p, uniform).view(draws, len(settings))
    for k, (t, p) in enumerate(settings):
        seen = torch.bincount(picked[:, k], minlength=len(logits)).double() / draws
        want = expected(logits, t, p).double()
        assert 0.5 * float((seen - want).abs().sum()) < 0.03, (t, p)
        for other in settings[:k] + settings[k + 1 :]:  # the bound tells the settings apart
            assert 0.5 * float((expected(logits, *other) - want).abs().sum()) > 0.06


def test_a_rows_budget_ends_it_and_its_samples_do_not_depend_on_its_neighbours(peaked, tokenizer):  # noqa: F811
    """Through the decode itself, on each path: rows end at their own budget (padded after it), and a row's tokens
    are the same whether its neighbours are hot, greedy or gone early."""
    enc = encode(tokenizer, MIXED[:2])
    pad = tokenizer.pad_token_id

    def decode(temps, budgets, seeds, share, lean):
        per_row = RowSampling(
            torch.tensor(temps), torch.ones(len(temps)),
            [torch.Generator().manual_seed(s) for s in seeds], torch.tensor(budgets),
        )  # fmt: skip
        return prefill_once_sample(peaked, enc["input_ids"], enc["attention_mask"], n=2, max_new_tokens=9,
                                   temperature=1.0, top_p=1.0, eos_token_id=-1, pad_token_id=pad,
                                   share_prefix=share, lean=lean, rows=per_row).tolist()  # fmt: skip

    for share, lean in [(True, True), (True, False), (False, False)]:
        a = decode([1.0, 0.0, 0.7, 1.3], [9, 4, 2, 9], [5, 6, 7, 8], share, lean)
        b = decode([1.0, 1.0, 0.7, 0.0], [9, 9, 9, 3], [5, 1, 7, 2], share, lean)
        assert a[1][4:] == [pad] * 5 and a[2][2:] == [pad] * 7 and pad not in a[0]
        assert a[0] == b[0], (share, lean)  # same seed, settings and prompt: same tokens
        assert a[2][:2] == b[2][:2], (share, lean)
    with pytest.raises(ValueError, match="one entry per decode row"):
        decode([1.0], [9], [0], None, None)


def test_a_seeded_request_gets_the_same_answer_alone_and_in_a_mixed_batch(peaked, tokenizer):  # noqa: F811
    engine = HFEngine(peaked, tokenizer, batch_size=64)
    mine = ("(12+7)*3-100/4=", SamplingParams(n=2, temperature=0.9, top_p=0.95, max_new_tokens=10, seed=7))
    others = [
        ("1+1=", SamplingParams(n=3, temperature=1.0, max_new_tokens=16, seed=1)),
        ("7-3=", SamplingParams(n=1, temperature=0.0, max_new_tokens=4)),
        ("123*45=", SamplingParams(n=4, temperature=1.2, top_p=0.8, max_new_tokens=12)),  # unseeded
    ]
    alone = engine.generate_mixed([mine])[0]
    mixed = engine.generate_mixed([others[0], mine, *others[1:]])
    assert [r.completion_ids for r in mixed[1]] == [r.completion_ids for r in alone]
    assert alone[0].completion_ids != alone[1].completion_ids  # its two samples draw apart
    other_seed = engine.generate_mixed([(mine[0], SamplingParams(**{**vars(mine[1]), "seed": 8}))])[0]
    assert [r.completion_ids for r in other_seed] != [r.completion_ids for r in alone]
    for (_, params), got in zip([others[0], mine, *others[1:]], mixed, strict=True):
        assert len(got) == params.n
        assert all(len(r.completion_ids) <= params.max_new_tokens for r in got)
    greedy = engine.generate(["7-3="], SamplingParams(n=1, temperature=0.0, max_new_tokens=4))
    assert [r.completion_ids for r in mixed[2]] == [r.completion_ids for r in greedy]


def test_generate_mixed_reports_each_rollouts_tokens_in_order(peaked, tokenizer):  # noqa: F811
    """``on_tokens`` rows number the requests' rollouts in order (a greedy request's n copies each get its
    tokens); on both samplers what the callback saw up to a row's end is its rollout."""
    requests = [
        ("1+1=", SamplingParams(n=2, temperature=0.0, max_new_tokens=5)),
        ("(12+7)*3-100/4=", SamplingParams(n=3, temperature=1.0, max_new_tokens=7, seed=3)),
        ("7-3=", SamplingParams(n=1, temperature=0.5, max_new_tokens=3, seed=4)),
    ]
    for sampler in ("fast", "generate"):
        seen: dict[int, list[int]] = {}

        def on_tokens(rows, ids, *_, seen=seen):  # (and the step's log-probs, when asked for)
            for r, t in zip(rows, ids, strict=True):
                seen.setdefault(r, []).append(t)

        out = HFEngine(peaked, tokenizer, sampler=sampler).generate_mixed(requests, on_tokens)
        flat = [r for got in out for r in got]
        assert [len(got) for got in out] == [2, 3, 1]
        assert sorted(seen) == list(range(len(flat)))
        for row, r in enumerate(flat):
            assert seen[row][: len(r.completion_ids)] == r.completion_ids, (sampler, row)
            assert r.finish_reason == "length" or r.completion_ids[-1] == tokenizer.eos_token_id


def test_generate_mixed_reports_each_rows_log_probs_at_its_own_temperature(peaked, tokenizer):  # noqa: F811
    """A request's log-probs (top-k too) are those of its own tokens under its own temperature, the same alone and
    beside requests at other temperatures, and one per completion token."""
    engine = HFEngine(peaked, tokenizer)
    mine = ("(12+7)*3-100/4=", SamplingParams(n=2, temperature=0.7, max_new_tokens=6, seed=5, logprobs=2))
    hot = ("1+1=", SamplingParams(n=1, temperature=1.5, max_new_tokens=9, seed=6, logprobs=0))
    alone = engine.generate_mixed([mine])[0]
    mixed = engine.generate_mixed([hot, mine])
    for a, b in zip(alone, mixed[1], strict=True):
        assert a.completion_ids == b.completion_ids
        assert len(a.logprobs) == len(a.completion_ids) == len(a.top_logprobs)
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
        assert all(len(top) == 2 for top in b.top_logprobs)
    cold = engine.generate_mixed([(mine[0], SamplingParams(**{**vars(mine[1]), "temperature": 0.3}))])[0]
    assert cold[0].logprobs[0] != pytest.approx(alone[0].logprobs[0], abs=1e-3)  # the temperature counts
    enc = encode(tokenizer, [mine[0]])
    with torch.no_grad():
        first = peaked(**enc).logits[0, -1].float()
    want = (first / 0.7).log_softmax(-1)[alone[0].completion_ids[0]]
    assert alone[0].logprobs[0] == pytest.approx(float(want), abs=1e-4)
