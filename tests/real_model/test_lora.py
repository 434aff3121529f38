"""LoRA (reasoner/train/lora.py) on SmolLM2: what trains in a real update step, the adapters-off reference, decoding
through the peft-wrapped model, and the merged weights an engine loads (tied embeddings stay tied and frozen)."""

from __future__ import annotations

import pytest
import torch

from reasoner.config import load_config
from reasoner.models import load_policy, load_trainable_policy
from reasoner.rollout import SamplingParams
from reasoner.rollout.hf import HFEngine
from reasoner.train.batch import make_batch, sequence_logprobs
from reasoner.train.estimators import make_estimator
from reasoner.train.lora import AdaptersOff, materialize, named_merged_weights
from reasoner.train.optim import make_optimizer
from reasoner.train.update import Learner, Scored, update
from tests.real_model.conftest import CPU, chat_prompts
from tests.real_model.test_update import QUESTIONS, real_rollouts

pytestmark = [pytest.mark.slow, pytest.mark.real_model]


def _logp(model, rollouts, pad):
    with torch.no_grad():
        return sequence_logprobs(model, make_batch(rollouts, pad), temperature=1.0)[0]


def test_lora_update_step_trains_the_adapters_only_against_the_adapters_off_reference(
    real_model_dir, real_policy, real_tokenizer
):
    tok, pad = real_tokenizer, real_tokenizer.pad_token_id
    cfg = load_config(None, ["model.lora.r=8", "model.lora.target_modules=all-linear", "rollout.n=4",
                             "algo.beta=0.04", "train.micro_batch_size=4"])  # fmt: skip
    torch.manual_seed(0)
    policy = load_trainable_policy(cfg, str(real_model_dir), CPU)
    lora = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert len(lora) == 30 * 7 * 2 and all("lora_" in n for n in lora)  # 30 layers x 7 linear layers x (A, B)
    base = policy.get_base_model()
    assert (
        base.lm_head.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()
    )  # still tied, no adapter

    # fresh adapters (B = 0) are the base model: the sampler decodes the peft model through its forward
    engine = HFEngine(policy, tok)
    prompts = chat_prompts(tok, QUESTIONS)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)
    tokens = [r.completion_ids for r in engine.generate(prompts, params)]
    assert tokens == [r.completion_ids for r in HFEngine(real_policy, tok).generate(prompts, params)]

    rollouts = real_rollouts(tok)
    reference = AdaptersOff(policy)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    optimizer = make_optimizer(policy.parameters(), lr=1e-3)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    estimator = make_estimator(cfg, policy, str(real_model_dir), CPU)
    learner = Learner(cfg=cfg, model=policy, reference=reference, estimator=estimator, optimizer=optimizer,
                      pad_id=pad, device=CPU)  # fmt: skip
    metrics = update(learner, Scored(rollouts, rewards, torch.ones(8, dtype=torch.bool)))
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # the adapters started at zero: policy = reference
    moved = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {n for n in lora if "lora_B" in n}  # B moves first (A's gradient is 0 while B = 0)
    torch.testing.assert_close(
        _logp(reference, rollouts, pad), _logp(real_policy, rollouts, pad), atol=1e-5, rtol=0
    )
    after = _logp(policy, rollouts, pad)
    assert (after - _logp(real_policy, rollouts, pad)).abs().max() > 1e-3  # the adapters are back on

    # the weights an engine loads: merged out of place into a plain model, they reproduce the adapter model
    plain = load_policy(str(real_model_dir), "float32", CPU).eval()
    params = dict(plain.named_parameters())
    with torch.no_grad():
        for name, tensor in named_merged_weights(policy):
            params[name].copy_(materialize(tensor))
    torch.testing.assert_close(_logp(plain, rollouts, pad), after, atol=1e-4, rtol=0)
