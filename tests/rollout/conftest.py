"""Fixtures for the rollout tests: a tiny model built once per session, and the engines under test."""

from __future__ import annotations

import gc
import importlib.util

import pytest
import torch

from reasoner.models import build_tiny_model, load_policy, load_tokenizer
from reasoner.rollout.hf import HFEngine

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}


def vllm_usable() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-rollout"), seed=0, **TINY)


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    return load_tokenizer(str(tiny_dir))


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def policy(tiny_dir):
    """The trainer's model: what the engine syncs from. float32, on the GPU when there is one."""
    return load_policy(str(tiny_dir), "float32", _device())


VLLM = pytest.param(
    "vllm", marks=[pytest.mark.gpu, pytest.mark.skipif(not vllm_usable(), reason="needs vllm and a CUDA GPU")]
)


@pytest.fixture(scope="module", params=["hf", VLLM])
def engine(request, tiny_dir, tokenizer):
    """Each engine on the tiny model, built once per module (a vLLM start-up takes a while); the same
    conformance tests run against every one. Tests that push other weights push the originals back."""
    if request.param == "hf":
        # Its own copy of the weights, so that sync_weights has something to copy (the trainer shares one module).
        yield HFEngine(load_policy(str(tiny_dir), "float32", _device()), tokenizer, batch_size=64)
        return
    from reasoner.rollout.vllm import VLLMEngine

    engine = VLLMEngine(
        str(tiny_dir), tokenizer, gpu_memory_utilization=0.2, dtype="float32", max_model_len=512, bucket_mb=1
    )
    yield engine
    del engine.llm
    gc.collect()
    torch.cuda.empty_cache()
