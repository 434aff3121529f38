"""The PPO estimator on the tiny model: reward placement, value columns, critic learning, warm-up, resume.

GAE and the value loss themselves are tested against hand-computed numbers in tests/algo; here the
pieces are checked as the trainer uses them, with real transformers models and real rollouts.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from reasoner.algo import token_rewards
from reasoner.config import load_config
from reasoner.models import load_policy, load_tokenizer
from reasoner.rollout import SamplingParams
from reasoner.rollout.hf import HFEngine
from reasoner.tasks import TASKS
from reasoner.tasks.base import Example, Task
from reasoner.train.batch import make_batch, sequence_logprobs
from reasoner.train.checkpoint import latest_checkpoint, load_extra, load_trainer_state, save_checkpoint
from reasoner.train.estimators import make_estimator
from reasoner.train.estimators.ppo import PPOEstimator
from reasoner.train.trainer import train

PROMPTS = [
    "Ann has 3 pens, finds 2. How many now?\n",
    "Bob has 12 cards, loses 5, wins 7. How many now?\n",
    "1+1=\n",
]


def _seven(source, split, size, seed):
    # A task the random tiny model can stumble on (its last number must be 7), scored by the real math checker.
    return [Example(prompt=f"{i}: 3+4 is\n", gold="7") for i in range(size or 64)]


if "seven-ppo" not in TASKS:
    TASKS.register("seven-ppo")(Task(name="seven-ppo", reward="math", load=_seven, kind="math"))

SEVEN = [
    "algo.name=ppo", "task.name=seven-ppo", "task.eval_size=16", "rollout.n=8", "rollout.max_new_tokens=6",
    "train.prompts_per_step=8", "train.micro_batch_size=32", "optim.lr=3e-3", "sft.steps=0", "train.eval_every=0",
    "train.tensorboard=false",
]  # fmt: skip


def _cfg(*overrides: str):
    base = [
        "algo.name=ppo",
        "rollout.n=4",
        "rollout.max_new_tokens=10",
        "train.micro_batch_size=5",
        "algo.critic_lr=1e-3",
    ]
    return load_config(None, base + list(overrides))


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    torch.manual_seed(0)
    policy = load_policy(str(tiny_model_dir), "float32", torch.device("cpu"))
    tok = load_tokenizer(str(tiny_model_dir))
    rollouts = HFEngine(policy, tok).generate(PROMPTS, SamplingParams(n=4, max_new_tokens=10, seed=0))
    batch = make_batch(rollouts, tok.pad_token_id)
    assert len({len(r.prompt_ids) for r in rollouts}) > 1  # left padding is exercised
    return policy, batch, str(tiny_model_dir)


def _estimator(setup, *overrides: str) -> PPOEstimator:
    policy, _, path = setup
    torch.manual_seed(0)
    est = make_estimator(_cfg(*overrides), policy, path, torch.device("cpu"))
    assert isinstance(est, PPOEstimator)
    return est


def _inputs(batch, rewards=None):
    n = len(batch)
    rewards = torch.tensor([float(i % 2) for i in range(n)]) if rewards is None else rewards
    return rewards, torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)


def test_token_rewards_sit_on_the_last_real_token_and_pay_kl_on_every_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]).float()
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert token_rewards(rewards, mask).tolist() == [
        [0, 0, 1, 0], [2, 0, 0, 0], [0, 0, 0, 3], [0, 0, 0, 0]  # an empty row gets nothing
    ]  # fmt: skip
    kl = torch.arange(16.0).view(4, 4)
    got = token_rewards(rewards, mask, kl, beta=0.5)
    want = [[0.0, -0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-4.0, -4.5, -5.0, -2.5], [0.0, 0.0, 0.0, 0.0]]
    assert got.tolist() == want  # row 0: 1 - 0.5 * 2 on its last token; row 1: 2 - 0.5 * 4


def test_estimator_places_outcome_and_kl_rewards_on_real_tokens(setup):
    """gamma = lam = 1: returns are the sum of future token rewards, whatever the critic says."""
    _, batch, _ = setup
    est = _estimator(setup, "algo.gamma=1.0", "algo.lam=1.0", "algo.whiten_advantages=false", "algo.beta=0.1",
                     "algo.kl_estimator=k1")  # fmt: skip
    rewards, scored, keep = _inputs(batch)
    old_logp = -torch.rand(batch.completion_mask.shape)
    ref_logp = -torch.rand(batch.completion_mask.shape)
    adv, metrics, kept = est.advantages(batch, rewards, scored, keep, old_logp, ref_logp)
    returns = adv + est.values(batch)  # [N, T] on real tokens
    m = batch.completion_mask
    assert kept.all() and metrics["critic_warmup"] == 0.0
    for i in range(len(batch)):
        length = int(m[i].sum())
        for t in range(length):
            kl_tail = (old_logp[i, t:length] - ref_logp[i, t:length]).sum()  # k1 = logp - ref_logp
            assert returns[i, t].item() == pytest.approx(rewards[i].item() - 0.1 * kl_tail.item(), abs=1e-5)
        assert (adv[i, length:] == 0).all()
    assert metrics["kl_reward"] == pytest.approx(
        (0.1 * ((old_logp - ref_logp) * m).sum(1)).mean().item(), rel=1e-5
    )


def test_kl_stays_out_of_the_reward_when_configured_for_the_loss(setup):
    _, batch, _ = setup
    est = _estimator(
        setup, "algo.gamma=1.0", "algo.lam=1.0", "algo.whiten_advantages=false", "algo.kl_in_reward=false"
    )
    assert est.kl_in_reward is False  # the trainer then adds beta * KL to the loss
    rewards, scored, keep = _inputs(batch)
    shape = batch.completion_mask.shape
    adv, metrics, _ = est.advantages(batch, rewards, scored, keep, -torch.rand(shape), -torch.rand(shape))
    returns = (adv + est.values(batch)) * batch.completion_mask
    assert torch.allclose(returns, rewards[:, None] * batch.completion_mask, atol=1e-6)
    assert "kl_reward" not in metrics


def test_values_sit_at_the_logprob_columns(setup):
    """values[i, t] = head(hidden state at the token before completion token t), padding or not."""
    policy, batch, _ = setup
    est = _estimator(setup)
    torch.nn.init.normal_(est.critic.head.weight)  # a zero head would make every column equal
    values = est.values(batch)
    logp, _ = sequence_logprobs(policy, batch, 1.0)
    assert values.shape == logp.shape == batch.completion_mask.shape
    for i in (5, 11):  # different prompt lengths
        real = batch.input_ids[i][batch.attention_mask[i].bool()]  # unpadded prompt + completion
        prompt_len = int(batch.attention_mask[i, : batch.prompt_width].sum())
        for t in range(int(batch.completion_mask[i].sum())):
            with torch.no_grad():
                hidden = est.critic.backbone(input_ids=real[None, : prompt_len + t]).last_hidden_state[0, -1]
                want = est.critic.head(hidden).item()
                want_logp = torch.log_softmax(
                    policy(input_ids=real[None, : prompt_len + t]).logits[0, -1], -1
                )[real[prompt_len + t]]
            assert values[i, t].item() == pytest.approx(want, abs=1e-4)
            assert logp[i, t].item() == pytest.approx(want_logp.item(), abs=1e-4)  # the same column


def test_update_lowers_the_value_loss_on_a_fixed_batch(setup):
    """The critic learns which prompt pays: below what the best constant value could reach."""
    _, batch, _ = setup
    est = _estimator(setup, "algo.gamma=1.0", "algo.lam=1.0")  # lam = 1: targets do not depend on the critic
    rewards, scored, keep = _inputs(batch, torch.tensor([1.0] * 4 + [0.0] * 4 + [1.0] * 4))  # by prompt
    m = batch.completion_mask
    losses, metrics = [], {}
    for _ in range(10):
        _, metrics, _ = est.advantages(batch, rewards, scored, keep, torch.zeros(m.shape), None)
        stats = est.update(batch, m)
        losses.append(stats["value/loss"])
        assert 0.0 <= stats["value/clip_frac"] <= 1.0
    targets = rewards[:, None].expand_as(m)[m.bool()]  # [tokens]: every token's return is its reward
    assert losses[0] == pytest.approx(0.5 * targets.square().mean().item(), abs=1e-6)  # zero head: values 0
    best_constant = 0.5 * targets.var(unbiased=False).item()
    assert losses[-1] < 0.5 * best_constant, losses
    assert metrics["value/explained_var"] > 0.5
    with pytest.raises(RuntimeError, match="advantages"):
        est.update(batch, m)  # targets are used once, on the batch they came from


def test_warmup_freezes_the_policy_while_the_critic_learns(setup):
    from reasoner.train.update import Learner, Scored
    from reasoner.train.update import update as trainer_update

    policy, batch, path = setup
    cfg = _cfg("algo.critic_warmup_steps=2", "algo.beta=0.0", "optim.lr=1e-2")
    est = make_estimator(cfg, policy, path, torch.device("cpu"))
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=1e-2, weight_decay=0.1
    )  # decay would move a "frozen" policy
    tok = load_tokenizer(path)
    rollouts = HFEngine(policy, tok).generate(PROMPTS, SamplingParams(n=4, max_new_tokens=10, seed=1))
    rewards = torch.tensor([float(i % 2) for i in range(len(rollouts))])
    scored = torch.ones(len(rollouts), dtype=torch.bool)
    policy_before = {k: v.clone() for k, v in policy.state_dict().items()}
    try:
        for step in range(3):
            critic_before = est.critic.head.weight.clone()
            metrics = trainer_update(
                Learner(
                    cfg=cfg,
                    model=policy,
                    reference=None,
                    estimator=est,
                    optimizer=optimizer,
                    pad_id=tok.pad_token_id,
                    device=torch.device("cpu"),
                ),
                Scored(rollouts=rollouts, rewards=rewards, scored=scored),
            )
            assert not torch.equal(critic_before, est.critic.head.weight)  # the critic always learns
            frozen = all(torch.equal(policy_before[k], v) for k, v in policy.state_dict().items())
            assert metrics["critic_warmup"] == float(step < 2)
            assert frozen == (step < 2)
    finally:
        policy.load_state_dict(policy_before)  # the module-scoped policy is shared with other tests


def test_checkpoint_restores_the_critic_and_its_optimizer(setup, tmp_path):
    policy, batch, path = setup
    rewards, scored, keep = _inputs(batch)
    zeros = torch.zeros(batch.completion_mask.shape)
    tok = load_tokenizer(path)

    def train(est, steps):
        for _ in range(steps):
            est.advantages(batch, rewards, scored, keep, zeros, None)
            est.update(batch, batch.completion_mask)

    first = _estimator(setup)
    train(first, 2)
    save_checkpoint(tmp_path, 2, policy, tok, {"estimator": first.state_dict()}, first.extra_modules())
    resumed = _estimator(setup)
    ckpt = latest_checkpoint(tmp_path)
    resumed.load_state_dict(load_trainer_state(ckpt)["estimator"])
    for name, module in resumed.extra_modules().items():
        load_extra(ckpt, name, module)
    assert resumed.step == 2
    train(first, 1)
    train(resumed, 1)  # same weights and Adam moments -> the same next step
    for (name, a), b in zip(first.critic.named_parameters(), resumed.critic.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_critic_can_be_another_model_with_the_same_vocabulary(setup, tmp_path):
    from transformers import LlamaConfig, LlamaModel

    policy, batch, _ = setup
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 2}  # fmt: skip
    vocab = policy.get_input_embeddings().num_embeddings
    LlamaModel(LlamaConfig(vocab_size=vocab, **shape)).save_pretrained(tmp_path / "small")
    est = make_estimator(
        _cfg(f"algo.critic_model={tmp_path / 'small'}"), policy, "unused", torch.device("cpu")
    )
    assert est.critic.head.in_features == 32
    assert est.values(batch).shape == batch.completion_mask.shape
    LlamaModel(LlamaConfig(vocab_size=vocab // 2, **shape)).save_pretrained(tmp_path / "other-vocab")
    with pytest.raises(ValueError, match="vocabulary"):
        make_estimator(
            _cfg(f"algo.critic_model={tmp_path / 'other-vocab'}"), policy, "unused", torch.device("cpu")
        )


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ppo_end_to_end_reward_rises(tiny_model_dir, tmp_path):
    cfg = load_config(None, SEVEN + [f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path}", "train.steps=24",
                                     "train.save_every=0"])  # fmt: skip
    result = train(cfg, progress=False)
    rows = [r for r in _rows(tmp_path) if "reward/mean" in r]
    rewards = [r["reward/mean"] for r in rows]
    assert len(rewards) == 24
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.2, f"mean reward did not rise: {first:.3f} -> {last:.3f}"
    assert result["algo"] == "ppo" and result["eval_after"] > result["eval_before"]
    for key in ("value/loss", "value/clip_frac", "value/explained_var", "value/mean", "returns/mean", "adv/mean",
                "adv/std", "kl_reward", "critic_warmup", "kl", "clip_frac"):  # fmt: skip
        assert key in rows[-1], key
    assert (tmp_path / "checkpoints" / "step-0000024" / "critic.pt").is_file()


@pytest.mark.slow
def test_resume_restores_the_critic_its_optimizer_and_the_warmup_count(tiny_model_dir, tmp_path):
    """Rewind a finished run to its step-3 checkpoint and resume: steps 4-6 must come out the same."""
    args = SEVEN + [f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path}", "train.steps=6",
                    "train.save_every=3", "algo.critic_warmup_steps=4", "optim.warmup_steps=2"]  # fmt: skip
    train(load_config(None, args), progress=False)
    full = _rows(tmp_path)
    lrs = [r["lr"] for r in full if "lr" in r]  # the policy's lr schedule starts when the policy does
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3, 2e-3, 3e-3])
    ckpts = tmp_path / "checkpoints"
    shutil.rmtree(ckpts / "step-0000006")
    (ckpts / "latest").write_text("step-0000003")
    train(load_config(None, args + ["train.resume=true"]), progress=False)
    resumed = _rows(tmp_path)
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    assert [r.get("critic_warmup") for r in resumed] == [None, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, None]
    for a, b in zip(full, resumed, strict=True):
        for key in ("value/loss", "value/mean", "returns/mean", "reward/mean", "loss", "kl"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)


@pytest.mark.parametrize("kind", ["math", "code"])
def test_ppo_configs_share_the_grpo_warm_start_and_sample_budget(kind):
    """`make train-{kind} ALGO=ppo` reuses GRPO's cached SFT model and generates as many samples per step."""
    from pathlib import Path

    from reasoner.train.sft import _cache_key

    configs = Path(__file__).resolve().parents[2] / "configs"
    grpo, ppo = (load_config(configs / f"{kind}-{algo}.yaml") for algo in ("grpo", "ppo"))
    assert ppo.algo.name == "ppo" and grpo.algo.name == "grpo"
    assert _cache_key(ppo, ppo.model.path, []) == _cache_key(grpo, grpo.model.path, [])
    assert (
        ppo.sft == grpo.sft
        and ppo.task == grpo.task
        and ppo.model == grpo.model
        and ppo.rollout == grpo.rollout
    )
    assert (ppo.train.steps, ppo.train.prompts_per_step) == (grpo.train.steps, grpo.train.prompts_per_step)
    assert ppo.train.output_dir != grpo.train.output_dir
