"""The engine's log-probs (``SamplingParams.logprobs``): taken from the logits each token was sampled from, they
must equal a separate teacher-forced forward's at the sampling temperature (computed here only to check them),
reach ``on_tokens`` step by step, and be refused by the sampler that cannot give them."""

from __future__ import annotations

import math

import pytest
import torch

from reasoner.algo import token_logprobs
from reasoner.models import load_policy
from reasoner.rollout import SamplingParams
from reasoner.rollout.hf import HFEngine
from reasoner.rollout.sampler import step_logprobs

PROMPTS = ["1+1=", "123*45=", "7-3="]  # mixed lengths: left padding


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_policy(str(tiny_dir), "float32", torch.device("cpu")).eval()


def recomputed(model, r, temperature: float) -> list[float]:
    ids = torch.tensor([r.prompt_ids + r.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[
            :, len(r.prompt_ids) - 1 : -1
        ]  # [1, T, V] predicting the completion
    return token_logprobs(logits, torch.tensor([r.completion_ids]), temperature)[0].tolist()


def test_step_logprobs_by_hand():
    logits = torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0]])  # [A=2, V=3]
    lp = step_logprobs(logits, torch.tensor([0, 2]), temperature=0.5, k=2)
    # row 0 at temperature 0.5: scores 2, 6, 0 -> log-sum-exp = log(e^2 + e^6 + 1)
    lse = math.log(math.e**2 + math.e**6 + 1)
    assert lp.sampled[0] == pytest.approx(2 - lse, abs=1e-5)
    assert lp.top_ids[0] == [1, 0] and lp.top_logprobs[0] == pytest.approx([6 - lse, 2 - lse], abs=1e-5)
    assert lp.sampled[1] == pytest.approx(math.log(1 / 3), abs=1e-5)  # uniform: any order of ties
    greedy = step_logprobs(logits, torch.tensor([1, 0]), temperature=0.0, k=0)  # the model's own softmax
    assert greedy.sampled[0] == pytest.approx(3 - math.log(math.e + math.e**3 + 1), abs=1e-5)
    assert greedy.top_ids == [[], []]
    per_row = step_logprobs(logits, torch.tensor([0, 2]), torch.tensor([0.5, 0.0]), k=2)  # each row its own
    assert per_row.sampled == pytest.approx([lp.sampled[0], math.log(1 / 3)], abs=1e-5)


@pytest.mark.parametrize("temperature,n", [(0.7, 2), (1.3, 1), (0.0, 3)])
def test_the_engines_logprobs_are_the_sampling_distributions(model, tokenizer, temperature, n):
    engine = HFEngine(model, tokenizer, batch_size=4)  # n=2 x 3 prompts: two chunks, rows carry an offset
    steps: dict[int, list[float]] = {}

    def on_tokens(rows, ids, lps):
        for j, row in enumerate(rows):
            steps.setdefault(row, []).append(lps.sampled[j])

    params = SamplingParams(n=n, temperature=temperature, top_p=0.9, max_new_tokens=10, seed=4, logprobs=3)
    rollouts = engine.generate(PROMPTS, params, on_tokens=on_tokens)
    for row, r in enumerate(rollouts):
        assert len(r.logprobs) == len(r.top_logprobs) == len(r.completion_ids) > 0
        # top-p does not change them: they are the full softmax at the temperature (the trainer's)
        assert r.logprobs == pytest.approx(recomputed(model, r, temperature or 1.0), abs=1e-4)
        assert steps[row][: len(r.logprobs)] == r.logprobs
        for token, lp, top in zip(r.completion_ids, r.logprobs, r.top_logprobs, strict=True):
            values = [v for _, v in top]
            assert len(top) == 3 and values == sorted(values, reverse=True)
            assert dict(top).get(token, lp) == pytest.approx(lp) and (token in dict(top) or lp <= values[-1])
        if temperature == 0:  # greedy: the sampled token is the most likely one
            assert [t[0][0] for t in r.top_logprobs] == r.completion_ids
    assert engine.generate(PROMPTS, SamplingParams(n=n, max_new_tokens=4, seed=4))[0].logprobs is None


def test_the_generate_sampler_refuses_logprobs(model, tokenizer):
    engine = HFEngine(model, tokenizer, sampler="generate")
    with pytest.raises(ValueError, match="rollout.sampler=fast"):
        engine.generate(["1+1="], SamplingParams(max_new_tokens=2, logprobs=0))
