"""The fast sampler (prefill once, decode n from copies of the cache) against transformers' ``generate``.

Greedy outputs must be the same tokens; sampled outputs cannot share generate's random stream, so their
distribution is checked against the model's own softmax (temperature and top-p applied by hand) with a total
variation bound that a wrong temperature or a wrong top-p fails: each test also asserts that it can tell.
"""

from __future__ import annotations

import pytest
import torch

from reasoner.models import load_policy
from reasoner.rollout import SamplingParams
from reasoner.rollout.hf import HFEngine
from reasoner.rollout.lean import MAX_OWN_SLOTS
from reasoner.rollout.sampler import pick, prefill_once_sample

MIXED = ["1+1=", "123*45=", "7-3=", "(12+7)*3-100/4="]  # mixed lengths: left padding in every batch
SAMPLES = 4000  # draws per distribution check: total variation noise ~0.02 over ~30 likely tokens
TV_BOUND = 0.06


@pytest.fixture(scope="module")
def peaked(tiny_dir):
    """The tiny model re-initialised with larger weights: the default initialisation's near-uniform next-token
    distribution repeats one token greedily whatever the prompt; this one's greedy text depends on the prompt
    and its distribution is peaked enough that temperature and top-p change it a lot (a wrong one shows)."""
    model = load_policy(str(tiny_dir), "float32", torch.device("cpu")).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.15)
    return model


def encode(tokenizer, prompts):
    return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


def reference_generate(model, enc, n, max_new, eos, pad, **sampling):
    seqs = model.generate(**enc, max_new_tokens=max_new, num_return_sequences=n, top_k=None, eos_token_id=eos,
                          pad_token_id=pad, **sampling)  # fmt: skip
    out = seqs[:, enc["input_ids"].shape[1] :]
    return torch.nn.functional.pad(out, (0, max_new - out.shape[1]), value=pad)  # generate stops when all end


@pytest.fixture(
    params=[(True, True), (True, False), (False, False)], ids=["lean", "shared-prompt", "copied-prompt"]
)
def share(request):
    """Every decode path: the lean step (reasoner.rollout.lean) and the model's forward both reading each prompt's
    cache once for its n samples, and the model's forward over n copies of it."""
    return request.param


def fast(model, enc, n, max_new, eos, pad, temperature=0.0, top_p=1.0, seed=None, share=None):
    """``share``: (share_prefix, lean), or share_prefix alone (lean then as the sampler decides)."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    share, lean = share if isinstance(share, tuple) else (share, None)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    while (
        lean and n * max_new > MAX_OWN_SLOTS
    ):  # the same rows, prompt-major: each prompt twice, n / 2 samples each
        assert n % 2 == 0
        ids, mask, n = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0), n // 2
    return prefill_once_sample(model, ids, mask, n=n, max_new_tokens=max_new,
                               temperature=temperature, top_p=top_p, eos_token_id=eos, pad_token_id=pad,
                               generator=generator, share_prefix=share, lean=lean)  # fmt: skip


def frequent_token(model, tokenizer, greedy: bool = False) -> int:
    """A token that some rows emit within 12 tokens and others do not: used as EOS, so rows end at different
    steps. ``greedy``: in the greedy completions of MIXED, else in samples at temperature 1."""
    enc = encode(tokenizer, MIXED)
    with torch.no_grad():
        if greedy:
            ids = fast(model, enc, 1, 12, -1, tokenizer.pad_token_id)
        else:
            ids = fast(model, enc, 8, 12, -1, tokenizer.pad_token_id, temperature=1.0, seed=0)
    rows_with = torch.stack([(ids == t).any(1).sum() for t in range(model.config.vocab_size)])  # [V]
    rows_with[rows_with == len(ids)] = 0  # a token in every row would end them all
    return int(rows_with.argmax())


def test_greedy_matches_generate_on_mixed_prompt_lengths(peaked, tokenizer, share):
    enc = encode(tokenizer, MIXED)
    args = (peaked, enc, 1, 12, tokenizer.eos_token_id, tokenizer.pad_token_id)
    with torch.no_grad():
        assert fast(*args, share=share).tolist() == reference_generate(*args, do_sample=False).tolist()


def test_each_sample_continues_its_own_prompts_cache(peaked, tokenizer, share):
    """n samples per prompt at a temperature near 0 are the prompt's greedy completion: a cache copied in the
    wrong order (sample j of prompt i reading another prompt's keys) gives another prompt's text."""
    enc, eos, pad = (
        encode(tokenizer, MIXED),
        frequent_token(peaked, tokenizer, greedy=True),
        tokenizer.pad_token_id,
    )
    with torch.no_grad():  # the frequent token as EOS: some prompts' samples end (and leave the batch) early
        greedy = fast(peaked, enc, 1, 10, eos, pad)
        cold = fast(peaked, enc, 3, 10, eos, pad, temperature=1e-4, seed=0, share=share)
    assert len({tuple(r) for r in greedy.tolist()}) == len(MIXED), "the prompts need different completions"
    assert 0 < int((greedy == eos).any(1).sum()) < len(MIXED), (
        "some prompts' samples must end early, some not"
    )
    assert cold.tolist() == greedy.repeat_interleave(3, dim=0).tolist()


def test_greedy_matches_generate_when_rows_stop_at_eos_at_different_steps(peaked, tokenizer, share):
    """With a frequent token as EOS, rows finish early and leave the batch (the cache is compacted): the
    survivors' tokens must not change, and finished rows are padded after their EOS like generate's."""
    eos = frequent_token(peaked, tokenizer, greedy=True)
    enc = encode(tokenizer, MIXED)
    args = (peaked, enc, 1, 12, eos, tokenizer.pad_token_id)
    with torch.no_grad():
        ours, theirs = fast(*args, share=share), reference_generate(*args, do_sample=False)
    ended = (ours == eos).any(1)
    assert 0 < int(ended.sum()) < len(ours), "the test needs rows that stop and rows that do not"
    assert ours.tolist() == theirs.tolist()


def test_rows_end_at_their_first_eos_and_are_padded_after_it(peaked, tokenizer, share):
    eos, pad = frequent_token(peaked, tokenizer), tokenizer.pad_token_id
    enc = encode(tokenizer, MIXED)
    with torch.no_grad():
        ids = fast(peaked, enc, 16, 12, eos, pad, temperature=1.0, seed=3, share=share)
    stopped = 0
    for row in ids.tolist():
        if eos in row:
            end = row.index(eos) + 1
            assert all(t == pad for t in row[end:]), row
            stopped += end < len(row)
    assert stopped > 0, "no row stopped before max_new_tokens: the test would not see the padding"


def expected_distribution(model, enc, temperature, top_p) -> torch.Tensor:
    """The first sampled token's distribution, from the model's logits with temperature and top-p by hand."""
    with torch.no_grad():
        logits = model(**enc).logits[:, -1].float()  # [1, V]
    probs = (logits / temperature).softmax(-1)
    if top_p < 1.0:  # the smallest set of most likely tokens whose mass reaches top_p
        sorted_probs, order = probs.sort(descending=True)
        keep_sorted = sorted_probs.cumsum(-1) - sorted_probs < top_p
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter(1, order, keep_sorted)
        probs = torch.where(keep, probs, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs[0]


def empirical(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).float() / len(tokens)


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8)])
def test_first_token_distribution_matches_the_models_softmax(peaked, tokenizer, temperature, top_p, share):
    enc = encode(tokenizer, ["12+7="])
    vocab = peaked.config.vocab_size
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = fast(peaked, enc, SAMPLES, 1, eos, pad, temperature, top_p, 0, share)
    want = expected_distribution(peaked, enc, temperature, top_p)
    assert tv(empirical(ids[:, 0], vocab), want) < TV_BOUND
    # the bound has power: the distributions a wrong temperature or top-p would give lie well outside it
    for wrong in [(temperature * 1.5, top_p), (temperature, 0.5 if top_p == 1.0 else 1.0)]:
        assert tv(want, expected_distribution(peaked, enc, *wrong)) > 2 * TV_BOUND, wrong


def test_second_token_distribution_matches_generate(peaked, tokenizer, share):
    """The second token is decoded from a copied cache: its marginal over many samples must match generate's
    (two samples of the same law: twice the one-sample bound), and differ from a wrong temperature's."""
    enc = encode(tokenizer, ["3*4="])
    vocab, eos, pad = peaked.config.vocab_size, -1, tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.no_grad():
        theirs = reference_generate(peaked, enc, SAMPLES, 2, eos, pad, do_sample=True, temperature=0.8)
        ours = fast(peaked, enc, SAMPLES, 2, eos, pad, temperature=0.8, seed=0, share=share)
        hot = fast(peaked, enc, SAMPLES, 2, eos, pad, temperature=1.3, seed=0, share=share)
    assert tv(empirical(ours[:, 1], vocab), empirical(theirs[:, 1], vocab)) < 2 * TV_BOUND
    assert tv(empirical(hot[:, 1], vocab), empirical(theirs[:, 1], vocab)) > 2 * TV_BOUND


def test_the_seed_fixes_the_samples_and_leaves_the_global_rng_alone(peaked, tokenizer):
    engine = HFEngine(peaked, tokenizer, sampler="fast")
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=11)
    state = torch.get_rng_state()
    a = [r.completion_ids for r in engine.generate(MIXED, params)]
    assert torch.equal(state, torch.get_rng_state()), (
        "a seeded fast sampler must not reseed torch's global RNG"
    )
    assert a == [r.completion_ids for r in engine.generate(MIXED, params)]
    other = engine.generate(MIXED, SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=12))
    assert a != [r.completion_ids for r in other]


def test_engine_results_agree_between_samplers_for_greedy_and_chunked_batches(peaked, tokenizer):
    """Through the engine: greedy rollouts are identical, also when batch_size splits the prompts in chunks."""
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=10)
    ref = HFEngine(peaked, tokenizer, batch_size=4, sampler="generate").generate(MIXED, params)
    ours = HFEngine(peaked, tokenizer, batch_size=4, sampler="fast").generate(MIXED, params)
    assert ours == ref


def test_top_p_keeps_the_most_likely_token_and_temperature_zero_is_argmax():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    assert pick(logits, 0.0, 1.0, None).tolist() == [1, 0]
    generator = torch.Generator().manual_seed(0)
    assert pick(logits.repeat(50, 1), 1.0, 1e-6, generator).tolist() == [1, 0] * 50


def test_unknown_sampler_is_refused(peaked, tokenizer):
    with pytest.raises(ValueError, match="valid: fast, generate"):
        HFEngine(peaked, tokenizer, sampler="beam")


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "forward"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_grouped_query_attention_models_share_the_prompt_too(tokenizer, family, lean):
    """Fewer key/value heads than query heads (Qwen, Llama 3): each key head serves a group of query heads."""
    import transformers

    torch.manual_seed(0)
    config_class, model_class = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                                 "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),  # biased q/k/v projections
                                 "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),  # per-head q/k norms
                                 "mistral": ("MistralConfig", "MistralForCausalLM")}[family]  # fmt: skip
    extra = {"sliding_window": None} if family == "mistral" else {}
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.15, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, head_dim=16, **extra,
    )  # fmt: skip
    model = getattr(transformers, model_class)(config).eval()
    if family == "qwen2":  # the default initialisation zeroes biases: give them values, so dropping one shows
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
                layer.self_attn.k_proj.bias.normal_(0, 0.5)
                layer.self_attn.v_proj.bias.normal_(0, 0.5)
    enc, pad = encode(tokenizer, MIXED), tokenizer.pad_token_id
    with torch.no_grad():
        greedy = reference_generate(model, enc, 1, 10, -1, pad, do_sample=False)
        cold = fast(model, enc, 3, 10, -1, pad, temperature=1e-4, seed=0, share=(True, lean))
    assert len({tuple(r) for r in greedy.tolist()}) == len(MIXED)
    assert cold.tolist() == greedy.repeat_interleave(3, dim=0).tolist()


def test_the_rollout_sampler_setting_reaches_the_engine(peaked, tokenizer, tiny_dir):
    from reasoner.config import ConfigError, load_config
    from reasoner.rollout import make_engine

    for name in ("fast", "generate"):
        cfg = load_config(None, [f"rollout.sampler={name}"])
        assert make_engine(cfg.rollout, peaked, tokenizer, str(tiny_dir)).sampler == name
    assert load_config(None, []).rollout.sampler == "fast"
    with pytest.raises(ConfigError, match="generate"):
        load_config(None, ["rollout.sampler=beam"])


def test_models_the_lean_step_does_not_know_decode_through_their_forward(peaked, tokenizer):
    """A model with a wrapped projection (as peft's LoRA layers are) is refused by the lean step, with the reason,
    and the default sampler decodes it through the model's forward instead: the same greedy tokens."""
    import copy

    from reasoner.rollout.lean import unsupported

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    wrapped = copy.deepcopy(peaked)
    wrapped.model.layers[0].self_attn.q_proj = Wrapped(wrapped.model.layers[0].self_attn.q_proj)
    assert unsupported(peaked) is None
    assert "layer 0 has projections that are not plain nn.Linear" in unsupported(wrapped)
    enc, eos, pad = encode(tokenizer, MIXED), tokenizer.eos_token_id, tokenizer.pad_token_id
    with pytest.raises(ValueError, match="lean=True cannot run: layer 0"):
        fast(wrapped, enc, 2, 6, eos, pad, share=(True, True))
    with torch.no_grad():
        assert fast(wrapped, enc, 2, 6, eos, pad).tolist() == fast(peaked, enc, 2, 6, eos, pad).tolist()
