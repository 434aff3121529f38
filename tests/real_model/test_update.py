"""The update on SmolLM2 (reasoner/train/update.py, reasoner/train/layout.py): shared-prompt and packed layouts give the
padded path's log-probs, loss and gradients on a real GQA model with a BPE chat prompt (the tiny-model version
is tests/train/test_update_layouts.py)."""

from __future__ import annotations

import pytest
import torch

from reasoner.config import load_config
from reasoner.models import load_policy
from reasoner.rollout import Rollout
from reasoner.train.batch import make_batch, sequence_logprobs
from reasoner.train.estimators import make_estimator
from reasoner.train.update import Learner, Scored, update
from tests.real_model.conftest import CPU, chat_prompts

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

QUESTIONS = ["Tom has 3 apples and buys 4 more. How many apples does he have?", "What is 6 times 7?"]
ANSWERS = [
    ["Tom has 3 + 4 = 7 apples.\n#### 7", "He has 12 apples.\n#### 12", "", "3 + 4 = 7"],
    ["6 * 7 = 42\n#### 42", "The answer is 13.", "42", "Six times seven is forty"],
]


def real_rollouts(tokenizer) -> list[Rollout]:
    """Two groups of four: EOS-ended answers, a truncated one, an EOS-only one; prompts of different lengths."""
    out = []
    for g, prompt in enumerate(chat_prompts(tokenizer, QUESTIONS)):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for j, text in enumerate(ANSWERS[g]):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            stop = j != 3
            out.append(
                Rollout(
                    g, prompt_ids, ids + [tokenizer.eos_token_id] * stop, text, "stop" if stop else "length"
                )
            )
    return out


LAYOUTS = [(False, True), (True, False), (True, True)]
IDS = ["packed", "shared", "shared+packed"]


@pytest.mark.parametrize(("shared_prefix", "pack"), LAYOUTS, ids=IDS)
def test_logprobs_and_entropy_equal_the_padded_path(real_policy, real_tokenizer, shared_prefix, pack):
    rollouts = real_rollouts(real_tokenizer)
    pad = real_tokenizer.pad_token_id
    padded = make_batch(rollouts, pad)
    with torch.no_grad():
        want, want_ent = sequence_logprobs(real_policy, padded, temperature=0.7, with_entropy=True)
        got, got_ent = sequence_logprobs(real_policy, make_batch(rollouts, pad, shared_prefix=shared_prefix, pack=pack),
                                         temperature=0.7, with_entropy=True)  # fmt: skip
    real = padded.completion_mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=0, atol=1e-4)
    torch.testing.assert_close(got_ent[real], want_ent[real], rtol=0, atol=1e-4)


def test_update_loss_and_gradients_equal_the_padded_path(real_model_dir, real_policy, real_tokenizer):
    """One update (lr 0, so the policy stays put) through the plain padded rows and through shared prompts
    packed together, micro-batches that split a group, a KL term against a reference that differs."""
    policy = load_policy(str(real_model_dir), "float32", CPU)
    torch.manual_seed(0)
    with torch.no_grad():  # the policy differs from the reference: the KL term has a gradient
        policy.model.norm.weight.add_(0.05 * torch.randn_like(policy.model.norm.weight))
    rollouts = real_rollouts(real_tokenizer)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0])

    def record(layout):
        cfg = load_config(None, ["rollout.n=4", "optim.max_grad_norm=1e9", "optim.lr=0", "algo.beta=0.04",
                                 "algo.kl_estimator=k3", "train.micro_batch_size=3", *layout])  # fmt: skip
        grads = []

        class Recorder(torch.optim.SGD):
            def step(self, closure=None):
                grads.append(torch.cat([p.grad.flatten().clone() for p in policy.parameters()]))
                return super().step(closure)

        estimator = make_estimator(cfg, policy, str(real_model_dir), CPU)
        learner = Learner(cfg=cfg, model=policy, reference=real_policy, estimator=estimator,
                          optimizer=Recorder(policy.parameters(), lr=0.0), pad_id=real_tokenizer.pad_token_id,
                          device=CPU)  # fmt: skip
        metrics = update(learner, Scored(rollouts, rewards, torch.ones(len(rollouts), dtype=torch.bool)))
        return metrics, grads[0]

    want_metrics, want = record(["train.shared_prefix=false", "train.pack=false"])
    got_metrics, got = record(["train.shared_prefix=true", "train.pack=true"])
    scale = want.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * scale)
    for key in ("loss", "kl", "entropy", "completion_len"):
        assert got_metrics[key] == pytest.approx(want_metrics[key], rel=1e-3, abs=1e-6), key
    assert want_metrics["kl"] > 0
