"""The engine interface every rollout backend implements.

``generate`` returns completions prompt-major: the ``n`` completions of prompt 0, then of prompt 1, ...
so that ``rollouts[i * n:(i + 1) * n]`` is the group of prompt ``i``. A prompt is a string, or a list of token
ids used as they are (multi-turn rollouts resume from the exact tokens sampled so far). ``SamplingParams.stop``
ends a completion at the first of these strings (kept in the completion, named in ``Rollout.stop_reason``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int | None = None
    # None: no log-probs; k >= 0: each sampled token's log-prob and the k most likely tokens' (HFEngine's fast
    # sampler), from the distribution sampled from: softmax(logits / temperature), before the top-p cut
    # (temperature 0: the model's own softmax)
    logprobs: int | None = None
    stop: tuple[str, ...] = ()  # end a completion at the first of these strings (included in it)


@dataclass
class StepLogprobs:
    """One decoding step's log-probs, one entry per row reported: the sampled token's, and the ids and log-probs
    of the k most likely tokens (most likely first)."""

    sampled: list[float]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


@dataclass
class ToolTrace:
    """What the tools did in one multi-turn rollout (reasoner.rollout.tools)."""

    # one per call: passed, failed, timeout, memory, error (the sandbox failed), budget (refused, not run)
    statuses: list[str] = field(default_factory=list)
    answer: str = ""  # the policy's own text with the tool outputs left out: what the reward scores
    infra_error: bool = False  # the sandbox itself failed on a call: the rollout cannot be scored

    @property
    def calls(self) -> int:
        return len(self.statuses)


@dataclass
class Rollout:
    prompt_index: int
    prompt_ids: list[int]
    completion_ids: list[int]  # includes the EOS token when finish_reason == "stop"
    text: str  # the decoded completion, special tokens removed
    finish_reason: Literal["stop", "length"]
    logprobs: list[float] | None = None  # the engine's own per-token log-probs, when it reports them
    top_logprobs: list[list[tuple[int, float]]] | None = (
        None  # per token: (id, log-prob) of the k most likely
    )
    stop_reason: str | None = None  # the ``SamplingParams.stop`` string that ended it, if one did
    # 1 on the tokens the policy sampled, 0 on context it did not (a tool's output); None = all sampled
    action_mask: list[int] | None = None
    tools: ToolTrace | None = None  # multi-turn rollouts with tools: the calls and the answer to score


def reward_text(rollout: Rollout) -> str:
    """The text a reward scores: the policy's own words (tool outputs left out), or the whole completion."""
    return rollout.tools.answer if rollout.tools is not None else rollout.text


class Engine(Protocol):
    def generate(self, prompts: list[str] | list[list[int]], params: SamplingParams) -> list[Rollout]: ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the next ``generate`` use ``model``'s current weights."""

    def sleep(self) -> None:
        """Free generation memory (KV cache, engine weights) while the trainer updates."""

    def wake_up(self) -> None: ...
