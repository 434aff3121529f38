"""Rollout engines: sample G completions per prompt. ``hf`` (transformers, CPU/GPU) and ``vllm`` (GPU)."""

from reasoner.rollout.base import Engine, Rollout, SamplingParams, make_engine

__all__ = ["Engine", "Rollout", "SamplingParams", "make_engine"]
