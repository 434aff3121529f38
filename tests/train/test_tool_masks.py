"""Training on multi-turn rollouts: a tool's output is context, not action (STYLE.md 17).

A hand-built two-turn answer (the policy's call, the tool's output, the policy's answer) on the real tiny model:
its output tokens are out of the policy loss, the KL, the entropy, and PPO's values and GAE; and an answer that
calls no tool trains exactly as a single-turn one.
"""

from __future__ import annotations

import torch

from reasoner.algo import gae, group_advantages, kl_penalty
from reasoner.algo.reinforce import token_rewards
from reasoner.config import load_config
from reasoner.models import load_policy
from reasoner.rollout import Rollout, SamplingParams
from reasoner.rollout.base import ToolTrace
from reasoner.rollout.tools import ToolEngine, ToolSettings
from reasoner.train.batch import make_batch, sequence_logprobs
from reasoner.train.estimators import make_estimator
from reasoner.train.update import Learner, Scored, update
from tests.rollout.test_tools import TOK, ScriptedEngine

CPU = torch.device("cpu")
PROMPT = "What is 6*7?\n"
CALL, OUTPUT, ANSWER = "<python>print(6*7)</python>", "<output>\n42\n</output>\n", "#### 42"


def _ids(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


def two_turn(answer: str = ANSWER) -> Rollout:
    ids = _ids(CALL) + _ids(OUTPUT) + _ids(answer) + [TOK.eos_token_id]
    mask = [1] * len(CALL) + [0] * len(OUTPUT) + [1] * (len(answer) + 1)
    trace = ToolTrace(["passed"], answer=CALL + answer)
    return Rollout(0, _ids(PROMPT), ids, TOK.decode(ids, skip_special_tokens=True), "stop", action_mask=mask,
                   tools=trace)  # fmt: skip


def one_turn(text: str, index: int = 0, **fields) -> Rollout:
    ids = _ids(text) + [TOK.eos_token_id]
    return Rollout(index, _ids(PROMPT), ids, text, "stop", **fields)


def test_make_batch_marks_the_tool_output_as_context():
    batch = make_batch([two_turn(), one_turn("#### 41")], TOK.pad_token_id)
    c, o, a = len(CALL), len(OUTPUT), len(ANSWER) + 1
    assert batch.completion_mask[0].tolist() == [1.0] * (c + o + a)
    assert batch.action_mask[0].tolist() == [1.0] * c + [0.0] * o + [1.0] * a
    assert batch.action_mask[1].tolist() == [1.0] * 8 + [0.0] * (c + o + a - 8)  # padding is never an action
    assert batch.select(slice(0, 1)).action_mask.tolist() == batch.action_mask[:1].tolist()


def test_gae_skips_the_tool_output_as_if_it_were_not_there():
    # rewards, values over [policy, policy, tool, tool, policy]: the same as GAE over the three policy tokens
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.4, 9.0, 9.0, 0.6]])
    rewards = token_rewards(torch.tensor([1.0]), mask)
    assert rewards.tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0]]
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    dense_adv, dense_ret = gae(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.2, 0.4, 0.6]]), torch.ones(1, 3), 0.9, 0.8
    )
    assert torch.allclose(adv[:, [0, 1, 4]], dense_adv) and torch.allclose(ret[:, [0, 1, 4]], dense_ret)
    assert adv[0, 2:4].tolist() == [0.0, 0.0] and ret[0, 2:4].tolist() == [0.0, 0.0]
    # by hand: delta_4 = 1 - 0.6 = 0.4; delta_1 = 0 + 0.9 * 0.6 - 0.4 = 0.14; A_1 = 0.14 + 0.72 * 0.4 = 0.428
    assert abs(adv[0, 1].item() - 0.428) < 1e-6


class Recorder(torch.optim.SGD):
    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.grads = []

    def step(self, closure=None):
        self.grads.append(
            torch.cat([p.grad.flatten().clone() for g in self.param_groups for p in g["params"]])
        )
        return super().step(closure)


def _update(model_dir, rollouts, rewards, overrides=()):
    cfg = load_config(None, ["rollout.n=2", "optim.max_grad_norm=1e9", "algo.beta=0.5", "algo.loss_agg=token-mean",
                             *overrides])  # fmt: skip
    policy = load_policy(str(model_dir), "float32", CPU)
    reference = _reference(model_dir)
    optimizer = Recorder(policy.parameters())
    estimator = make_estimator(cfg, policy, str(model_dir), CPU)
    learner = Learner(cfg=cfg, model=policy, reference=reference, estimator=estimator, optimizer=optimizer,
                      pad_id=TOK.pad_token_id, device=CPU)  # fmt: skip
    scored = torch.ones(len(rewards), dtype=torch.bool)
    metrics = update(learner, Scored(rollouts=rollouts, rewards=torch.tensor(rewards), scored=scored))
    return optimizer.grads[0], metrics


def _reference(model_dir):
    torch.manual_seed(0)
    reference = load_policy(str(model_dir), "float32", CPU).eval().requires_grad_(False)
    with torch.no_grad():  # a reference that differs from the policy: the KL has a value and a gradient
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return reference


def _by_hand(model_dir, rollouts, rewards, mask_of):
    """The GRPO loss of the update (on-policy, token-mean, beta = 0.5), summed over the tokens ``mask_of`` marks."""
    policy = load_policy(str(model_dir), "float32", CPU)
    batch = make_batch(rollouts, TOK.pad_token_id)
    m = mask_of(batch)  # [N, T]
    logp, entropy = sequence_logprobs(policy, batch, 1.0, with_entropy=True)
    with torch.no_grad():
        ref_logp, _ = sequence_logprobs(_reference(model_dir), batch, 1.0)
    adv = group_advantages(torch.tensor(rewards), 2, "group")[:, None]  # [N, 1]
    kl = kl_penalty(logp, ref_logp, "k3")
    loss = ((-adv * torch.exp(logp - logp.detach()) + 0.5 * kl) * m).sum() / m.sum()
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in policy.parameters()])
    return grads, ((kl * m).sum() / m.sum()).item(), ((entropy * m).sum() / m.sum()).item()


def test_the_update_learns_from_the_policy_tokens_only(tiny_model_dir):
    rollouts, rewards = [two_turn(), one_turn("#### 41")], [1.0, 0.0]
    grads, metrics = _update(tiny_model_dir, rollouts, rewards)
    expected, kl, entropy = _by_hand(tiny_model_dir, rollouts, rewards, lambda b: b.action_mask)
    assert torch.allclose(grads, expected, atol=1e-5, rtol=1e-4)
    assert abs(metrics["kl"] - kl) < 1e-6 and abs(metrics["entropy"] - entropy) < 1e-5
    # the test can fail: counting the tool's output as the policy's gives other gradients and another KL (the
    # random model's entropy is near ln(vocab) on every token, so it cannot tell the two apart)
    wrong, wrong_kl, _ = _by_hand(tiny_model_dir, rollouts, rewards, lambda b: b.completion_mask)
    assert not torch.allclose(grads, wrong, atol=1e-4) and abs(wrong_kl - kl) > 1e-5


def test_ppo_values_and_gae_see_the_policy_tokens_only(tiny_model_dir):
    cfg = load_config(None, ["algo.name=ppo", "rollout.n=2", "algo.whiten_advantages=false", "algo.beta=0.0"])
    est = make_estimator(cfg, None, str(tiny_model_dir), CPU)
    with torch.no_grad():  # a critic that values tokens differently: GAE across the hole has something to do
        est.critic.head.weight.normal_(0, 0.1)
        est.critic.head.bias.fill_(0.3)
    batch = make_batch([two_turn(), one_turn("#### 41")], TOK.pad_token_id)
    keep = torch.ones(2, dtype=torch.bool)
    adv, _, _ = est.advantages(batch, torch.tensor([1.0, 0.0]), keep, keep, None, None)
    m = batch.action_mask
    tool = (batch.completion_mask - m).bool()
    assert tool.sum() == len(OUTPUT) and (adv[tool] == 0).all()
    values = est.values(batch)
    expected, returns = gae(
        token_rewards(torch.tensor([1.0, 0.0]), m), values, m, cfg.algo.gamma, cfg.algo.lam
    )
    assert torch.allclose(adv, expected)
    _, _, critic_returns, critic_mask = est._targets
    assert torch.equal(critic_mask, m) and torch.allclose(critic_returns, returns)  # the value loss's tokens


def test_no_tool_call_trains_exactly_as_a_single_turn_answer(tiny_model_dir):
    texts = ["#### 42", "#### 41"]
    plain = [one_turn(t, i // 2) for i, t in enumerate(texts)]
    # the tool loop around an engine whose answers call no tool: the same rollouts, marked all-policy
    inner = ScriptedEngine({PROMPT: [[t] for t in texts]})
    looped = ToolEngine(inner, TOK, ToolSettings()).generate([PROMPT], SamplingParams(n=2, max_new_tokens=40))
    assert [r.completion_ids for r in looped] == [r.completion_ids for r in plain]
    assert all(r.action_mask == [1] * len(r.completion_ids) and r.tools.calls == 0 for r in looped)
    g_plain, m_plain = _update(tiny_model_dir, plain, [1.0, 0.0])
    g_loop, m_loop = _update(tiny_model_dir, looped, [1.0, 0.0])
    assert torch.equal(g_plain, g_loop)
    assert {k: m_plain[k] for k in ("loss", "kl", "entropy")} == {
        k: m_loop[k] for k in ("loss", "kl", "entropy")
    }
