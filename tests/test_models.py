import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasoner.cli import main
from reasoner.models import (
    build_char_tokenizer,
    convert_gguf,
    gguf_cache_dir,
    load_policy,
    load_tokenizer,
)
from reasoner.rollout import SamplingParams
from reasoner.rollout.hf import HFEngine

TEXTS = [
    "12 + 7 = 19\n#### 19",
    "Ann has 3 pens, finds 2.  How many now?\n",
    "\tdef f(x):\n    return x + 1\n",
    "~!@#$%^&*()",
]


def test_tokenizer_round_trip_keeps_every_character(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)  # one token per character
        assert tok.decode(ids) == text
    assert (
        json.loads((tiny_model_dir / "tokenizer_config.json").read_text())["tokenizer_class"]
        == "PreTrainedTokenizerFast"
    )
    assert {tok.pad_token, tok.bos_token, tok.eos_token} == {"<pad>", "<bos>", "<eos>"}
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "1+1?"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "user: 1+1?\nassistant:"


def test_tiny_model_loads_and_generates(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama"
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 3e6
    tok = load_tokenizer(str(tiny_model_dir))
    engine = HFEngine(model, tok)
    out = engine.generate(
        ["1+1=", "Ann has 3 pens"], SamplingParams(n=3, temperature=1.0, max_new_tokens=5, seed=0)
    )
    assert [r.prompt_index for r in out] == [0, 0, 0, 1, 1, 1]
    for r in out:
        assert r.finish_reason in ("stop", "length") and 1 <= len(r.completion_ids) <= 5
        assert tok.decode(r.prompt_ids) in ("1+1=", "Ann has 3 pens")
    again = engine.generate(
        ["1+1=", "Ann has 3 pens"], SamplingParams(n=3, temperature=1.0, max_new_tokens=5, seed=0)
    )
    assert [r.text for r in out] == [r.text for r in again]  # seeded


def test_greedy_generation_matches_a_manual_argmax_loop(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    prompts = ["ab", "Ann has 12"]  # different lengths: exercises left padding
    out = HFEngine(model, tok).generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=6))
    for prompt, r in zip(prompts, out, strict=True):
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        for _ in range(len(r.completion_ids)):
            nxt = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
        assert ids[0, -len(r.completion_ids) :].tolist() == r.completion_ids


def test_char_tokenizer_handles_unknown_characters():
    tok = build_char_tokenizer()
    assert tok.decode(tok("é")["input_ids"], skip_special_tokens=True) == ""


def test_a_gguf_path_that_is_missing_or_not_gguf_fails_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"missing\.gguf.*make real-model"):
        load_policy(str(tmp_path / "missing.gguf"), "float32")
    junk = tmp_path / "junk.gguf"
    junk.write_text("not a GGUF file")
    with pytest.raises(ValueError, match=r"transformers cannot read the GGUF file .*junk\.gguf"):
        convert_gguf(junk, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()
    assert main(["convert-gguf", str(junk), "--out", str(tmp_path / "out")]) == 2
    # the cache key follows the file: a replaced file is converted again
    first = gguf_cache_dir(junk)
    assert first.parent == tmp_path / "cache" / "gguf" and first.name.startswith("junk-")
    os.utime(junk, ns=(0, 0))
    assert gguf_cache_dir(junk) != first
