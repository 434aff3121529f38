"""``reasoner.train.update.update`` off its default path, on the real tiny model: each option changes exactly what it names.

Gradients are read through an optimizer that records them (no clipping: ``optim.max_grad_norm`` is huge), so
each test compares the update's own gradients with the ones the option promises.
"""

import pytest
import torch

from reasoner.config import load_config
from reasoner.models import load_policy, load_tokenizer
from reasoner.rollout import Rollout
from reasoner.train.estimators import make_estimator
from reasoner.train.update import Learner, Scored, update

CPU = torch.device("cpu")


class Recorder(torch.optim.SGD):
    """SGD that keeps a copy of the gradients of every step it takes."""

    def __init__(self, params, lr=0.0):
        super().__init__(params, lr=lr)
        self.grads = []

    def step(self, closure=None):
        self.grads.append(
            torch.cat([p.grad.flatten().clone() for g in self.param_groups for p in g["params"]])
        )
        return super().step(closure)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return tiny_model_dir, load_tokenizer(tiny_model_dir)


def _rollouts(tokenizer, completions: list[tuple[str, str]]) -> list[Rollout]:
    prompt = tokenizer("3+4 is ", add_special_tokens=False)["input_ids"]
    out = []
    for i, (text, finish) in enumerate(completions):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(Rollout(i // 2, prompt, ids, text, finish))
    return out


def _grads(tiny, overrides, completions, rewards, lr=0.0, logprobs=None):
    model_dir, tokenizer = tiny
    cfg = load_config(
        None, ["rollout.n=2", "optim.max_grad_norm=1e9", "train.micro_batch_size=8", *overrides]
    )
    torch.manual_seed(0)
    policy = load_policy(str(model_dir), "float32", CPU)
    reference = None
    if cfg.algo.beta > 0:
        reference = load_policy(str(model_dir), "float32", CPU).eval().requires_grad_(False)
        with torch.no_grad():  # a reference that differs from the policy: the KL term has a gradient
            for p in reference.parameters():
                p.add_(0.01 * torch.randn_like(p))
    rollouts = _rollouts(tokenizer, completions)
    for r, lp in zip(rollouts, logprobs or [None] * len(rollouts), strict=True):
        r.logprobs = lp
    optimizer = Recorder(policy.parameters(), lr=lr)
    estimator = make_estimator(cfg, policy, str(model_dir), CPU)
    metrics = update(
        Learner(
            cfg=cfg,
            model=policy,
            reference=reference,
            estimator=estimator,
            optimizer=optimizer,
            pad_id=tokenizer.pad_token_id,
            device=CPU,
        ),
        Scored(
            rollouts=rollouts,
            rewards=torch.tensor(rewards),
            scored=torch.ones(len(rewards), dtype=torch.bool),
        ),
    )
    return optimizer.grads, metrics


# Two prompts, G = 2; the first group's rewards are equal (no signal), the second's differ.
GROUPS = [("12+7=19 #### 19", "stop"), ("#### 19", "stop"), ("#### 7", "stop"), ("3+4=7 #### 7", "stop")]
OTHER_FIRST_GROUP = [("99 #### 1", "stop"), ("5-5=0 ####", "stop")] + GROUPS[2:]


@pytest.mark.parametrize("drop", [True, False])
def test_drop_zero_variance_removes_those_groups_from_the_loss(tiny, drop):
    # With beta > 0 a zero-variance group still pulls through its KL term, unless it is dropped.
    args = ["algo.beta=0.5", "algo.loss_agg=token-mean", f"algo.drop_zero_variance={str(drop).lower()}"]
    (g1,), m1 = _grads(tiny, args, GROUPS, [0.0, 0.0, 1.0, 0.0])
    (g2,), _ = _grads(tiny, args, OTHER_FIRST_GROUP, [0.0, 0.0, 1.0, 0.0])
    assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-7) == drop
    assert m1["masked_frac"] == (0.5 if drop else 0.0)


@pytest.mark.parametrize("mask", [True, False])
def test_mask_truncated_removes_cut_completions_from_the_loss(tiny, mask):
    args = ["algo.beta=0.0", "algo.loss_agg=token-mean", f"algo.mask_truncated={str(mask).lower()}"]
    cut = [("#### 7", "stop"), ("12+7=1", "length"), ("#### 7", "stop"), ("3+4=7 #### 7", "stop")]
    other_cut = [cut[0], ("99+1=9", "length")] + cut[2:]
    (g1,), m1 = _grads(tiny, args, cut, [1.0, 0.0, 1.0, 0.0])
    (g2,), _ = _grads(tiny, args, other_cut, [1.0, 0.0, 1.0, 0.0])
    assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-7) == mask
    assert m1["masked_frac"] == (0.25 if mask else 0.0) and m1["truncated_frac"] == 0.25


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_add_up_to_the_whole_batch_gradient(tiny, agg):
    # Completions of very different lengths, so token-mean's per-micro-batch weights are far from 1 / 4.
    completions = [
        ("#### 7", "stop"),
        ("1+2=3, 3+4=7, 7+0=7 #### 7", "stop"),
        ("7", "stop"),
        ("3+4=7 #### 7", "stop"),
    ]
    rewards = [1.0, 0.0, 0.0, 1.0]
    (whole,), _ = _grads(
        tiny, ["algo.beta=0.0", f"algo.loss_agg={agg}", "train.micro_batch_size=8"], completions, rewards
    )
    (split,), _ = _grads(
        tiny, ["algo.beta=0.0", f"algo.loss_agg={agg}", "train.micro_batch_size=1"], completions, rewards
    )
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-7)


def test_inner_epochs_take_several_steps_against_the_first_policy(tiny):
    args = ["algo.beta=0.0", "algo.clip_low=0.01", "algo.clip_high=0.01"]
    grads2, m2 = _grads(tiny, args + ["algo.inner_epochs=2"], GROUPS, [0.0, 0.0, 1.0, 0.0], lr=5.0)
    grads1, m1 = _grads(tiny, args + ["algo.inner_epochs=1"], GROUPS, [0.0, 0.0, 1.0, 0.0], lr=5.0)
    assert len(grads2) == 2 and len(grads1) == 1
    torch.testing.assert_close(grads2[0], grads1[0], rtol=1e-5, atol=1e-8)  # epoch 1: ratio 1, same gradient
    # Epoch 2 compares the moved policy with the *sampling* policy: ratios leave the tight clip range.
    assert m1["clip_frac"] == 0.0 and m2["clip_frac"] > 0.0
    assert not torch.allclose(grads2[1], grads2[0])


def test_tis_weights_each_token_by_the_capped_trainer_engine_ratio(tiny):
    model_dir, tokenizer = tiny
    rollouts = _rollouts(tokenizer, GROUPS)
    from reasoner.train.batch import make_batch, sequence_logprobs

    policy = load_policy(str(model_dir), "float32", CPU)
    with torch.no_grad():
        logp, _ = sequence_logprobs(policy, make_batch(rollouts, tokenizer.pad_token_id), 1.0)
    # The engine gave every token 1 nat less than the trainer: ratio e ~ 2.72, capped at 2 -> every weight is 2.
    engine = [(logp[i, : len(r.completion_ids)] - 1.0).tolist() for i, r in enumerate(rollouts)]
    rewards, args = [0.0, 0.0, 1.0, 0.0], ["algo.beta=0.0", "rollout.tis_cap=2.0"]
    (plain,), m_plain = _grads(tiny, args, GROUPS, rewards, logprobs=engine)
    (tis,), m_tis = _grads(
        tiny, args + ["rollout.use_engine_logprobs=true"], GROUPS, rewards, logprobs=engine
    )
    torch.testing.assert_close(tis, 2.0 * plain, rtol=1e-5, atol=1e-8)
    assert m_tis["tis/capped_frac"] == 1.0 and m_plain["mismatch/k1"] == pytest.approx(-1.0, abs=1e-5)


def test_engine_logprobs_without_an_engine_that_reports_them_is_an_error(tiny):
    with pytest.raises(ValueError, match="rollout.engine=vllm"):
        _grads(tiny, ["rollout.use_engine_logprobs=true"], GROUPS, [0.0, 0.0, 1.0, 0.0])
