"""The checkpoint ``make real-model`` writes, and the rollout decode paths on it: the lean step
(reasoner/rollout/lean.py) and the fast sampler (reasoner/rollout/sampler.py) against the model's own forward
and ``generate``, with grouped-query attention (9 query / 3 KV heads), tied embeddings and 30 layers."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from transformers import DynamicCache

from reasoner.rollout.lean import LeanDecode, unsupported
from reasoner.rollout.sampler import prefill_once_sample
from tests.real_model.conftest import CPU, GGUF_NAME, chat_prompts, real_model_cache

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

QUESTIONS = ["What is 15 + 27?", "Name a color.", "Write one sentence about the sea, then stop."]


def cache_arg(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def encode(tokenizer, prompts):
    return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


def test_the_checkpoint_is_smollm2_with_its_tokenizer_and_chat_template(
    real_model_dir, real_policy, real_tokenizer
):
    config = real_policy.config
    assert (config.model_type, config.num_hidden_layers, config.num_attention_heads) == ("llama", 30, 9)
    assert config.num_key_value_heads == 3 and config.tie_word_embeddings
    assert real_policy.lm_head.weight.data_ptr() == real_policy.model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in real_policy.parameters()) == 134_515_008
    assert "quantization_config" not in json.loads((real_model_dir / "config.json").read_text())
    tok = real_tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None and tok.padding_side == "left"
    text = "Hello  world,\n\tcafé ☕ 15 + 27 = ?"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level BPE: spaces, tabs, accents, emoji survive
    prompt = chat_prompts(tok, ["Hi"])[0]
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_gguf_model_path_loads_the_same_model_as_transformers_gguf_loader(
    real_policy, real_tokenizer, tmp_path, monkeypatch
):
    """``model.path`` naming a .gguf file: converted once into the cache, then the same model as the checkpoint
    ``make real-model`` wrote (whose logits equal transformers' own GGUF loading: checked when it was written)."""
    from reasoner.models import gguf_cache_dir, load_policy, load_tokenizer

    gguf = real_model_cache() / GGUF_NAME
    if not gguf.is_file():
        pytest.skip(f"{gguf} not found: REASONER_REAL_MODEL points at a checkpoint built elsewhere")
    monkeypatch.setenv("REASONER_CACHE", str(tmp_path))
    via_path = load_policy(str(gguf), "float32", CPU).eval()
    assert gguf_cache_dir(gguf).is_relative_to(tmp_path) and (gguf_cache_dir(gguf) / "config.json").is_file()
    assert load_tokenizer(str(gguf)).chat_template == real_tokenizer.chat_template
    enc = encode(real_tokenizer, chat_prompts(real_tokenizer, QUESTIONS[:2]))
    with torch.no_grad():
        torch.testing.assert_close(via_path(**enc).logits, real_policy(**enc).logits, rtol=0, atol=0)


def _full_forward_logprobs(model, prompt_ids, prompt_mask, completions):
    """log-softmax of the whole left-padded sequences ``[A, L + T]`` at the completion positions -> ``[A, T, V]``."""
    n = completions.shape[0] // prompt_ids.shape[0]
    ids = torch.cat([prompt_ids.repeat_interleave(n, 0), completions], dim=1)
    mask = torch.cat([prompt_mask.repeat_interleave(n, 0), torch.ones_like(completions)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
    length = prompt_ids.shape[1]
    return logits[:, length - 1 : -1].log_softmax(-1)


def test_the_lean_decode_step_gives_the_forwards_logprobs(real_policy, real_tokenizer):
    """Teacher-forced: each prompt's two samples get different tokens; every step's log-probs over the whole
    vocabulary equal the full forward's on prompt + completion."""
    model, tok = real_policy, real_tokenizer
    assert unsupported(model) is None
    enc = encode(tok, chat_prompts(tok, QUESTIONS[:2]))  # different lengths: left padding in the prefill
    texts = [
        "15 + 27 = 42. The answer is",
        "I am not sure, but maybe",
        "Blue is a color that",
        "Red is the color of the sun",
    ]
    rows = [tok(t, add_special_tokens=False)["input_ids"][:5] for t in texts]
    completions = torch.tensor(rows)  # [A=4, T=5], prompt-major: rows 2i, 2i+1 belong to prompt i
    n, steps = 2, completions.shape[1]
    mask = enc["attention_mask"]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        first = model(**enc, position_ids=positions, use_cache=True, **{cache_arg(model): cache}).logits[
            :, -1
        ]
    step = LeanDecode(model, cache, mask, n, steps)
    got = [first.float().repeat_interleave(n, 0).log_softmax(-1)]
    position = positions[:, -1:].repeat_interleave(n, 0)
    for t in range(steps - 1):
        position = position + 1
        got.append(step(completions[:, t], position).log_softmax(-1))
    got = torch.stack(got, dim=1)  # [A, T, V]
    want = _full_forward_logprobs(model, enc["input_ids"], mask, completions)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-4)
    chosen = want.gather(-1, completions[..., None])
    assert chosen.min() < -1.0  # off the greedy path too: the comparison is not only of confident tokens


@pytest.fixture(scope="module")
def greedy_reference(real_policy, real_tokenizer):
    tok = real_tokenizer
    enc = encode(tok, chat_prompts(tok, QUESTIONS))
    with torch.no_grad():
        out = real_policy.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id,
                                   eos_token_id=tok.eos_token_id)  # fmt: skip
    return enc, out[:, enc["input_ids"].shape[1] :]


def _pad_after_eos(tokens, eos, pad):
    tokens = tokens.clone()
    for row in tokens:
        hits = (row == eos).nonzero()
        if len(hits):
            row[hits[0, 0] + 1 :] = pad
    return tokens


@pytest.mark.parametrize(
    ("share", "lean"),
    [(True, True), (True, False), (False, False)],
    ids=["lean", "shared-prompt", "copied-prompt"],
)
def test_greedy_samples_are_generates_tokens(real_policy, real_tokenizer, greedy_reference, share, lean):
    tok = real_tokenizer
    enc, want = greedy_reference
    got = prefill_once_sample(real_policy, enc["input_ids"], enc["attention_mask"], n=2, max_new_tokens=10,
                              temperature=0.0, top_p=1.0, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id, share_prefix=share, lean=lean)  # fmt: skip
    want = _pad_after_eos(want, tok.eos_token_id, tok.pad_token_id)
    width = want.shape[1]
    assert torch.equal(got[::2, :width], want) and torch.equal(got[1::2, :width], want)
    assert (got[:, width:] == tok.pad_token_id).all()  # generate stopped early: every row had ended


def test_sampled_tokens_have_the_forwards_probabilities(real_policy, real_tokenizer):
    """Temperature 1 through the lean path: the sampled completions are ones the model finds likely (their
    per-token log-probs under the full forward are those of samples, not garbage), and the seed fixes them."""
    tok = real_tokenizer
    enc = encode(tok, chat_prompts(tok, QUESTIONS[:2]))
    kwargs = dict(n=3, max_new_tokens=8, temperature=1.0, top_p=1.0, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, lean=True)  # fmt: skip
    a = prefill_once_sample(real_policy, enc["input_ids"], enc["attention_mask"],
                            generator=torch.Generator().manual_seed(3), **kwargs)  # fmt: skip
    b = prefill_once_sample(real_policy, enc["input_ids"], enc["attention_mask"],
                            generator=torch.Generator().manual_seed(3), **kwargs)  # fmt: skip
    assert torch.equal(a, b) and len({tuple(r) for r in a.tolist()}) > 2
    logp = _full_forward_logprobs(real_policy, enc["input_ids"], enc["attention_mask"], a).gather(
        -1, a[..., None]
    )
    real = torch.ones_like(a, dtype=torch.bool)
    for i, row in enumerate(a.tolist()):
        if tok.eos_token_id in row:
            real[i, row.index(tok.eos_token_id) + 1 :] = False
    # the mean log-prob of a model's own samples is minus its entropy: a few nats, far from uniform (-10.8)
    assert -5.0 < logp[..., 0][real].mean().item() < -0.05
