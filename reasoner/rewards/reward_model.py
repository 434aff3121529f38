"""A trained reward model as a reward: scoring, normalisation, clipping and conservative ensembles.

An RM is a directory written by `reasoner rm train`: ``AutoModelForSequenceClassification`` (num_labels = 1)
plus its tokenizer and ``rm_stats.json`` (the reward mean/std over training responses, whether its rows were
conversational, its max length). The score of ``prompt + response`` is ``logits[0, 0]``, exactly what plain
transformers computes; for an RM trained on conversational rows the pair is rendered with the RM's own chat
template. Each member's score is normalised (``stats``: with its saved mean/std; ``batch``: over the batch),
several members are combined conservatively (``mean - lam * std`` or ``min``; Coste et al. 2023), then
clipped. Registered in the trainer as the reward ``model``; its settings are the ``reward_model`` section.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from reasoner.algo.pairwise import ensemble_aggregate
from reasoner.rewards.base import RewardOutput
from reasoner.tasks.base import Example

STATS_FILE = "rm_stats.json"


def load_rm(path: str, device: torch.device | None = None):
    """(model, tokenizer) of a reward model; the model's ``pad_token_id`` is set so that the head reads the last
    non-pad token (Llama-style sequence classifiers need it to find each row's end)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not Path(path).exists() and "/" not in path:
        raise FileNotFoundError(
            f"reward model {path!r} not found: give a directory written by `reasoner rm train`"
        )
    from reasoner.models import resolve_model_path

    path = resolve_model_path(path)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    return model.to(device or torch.device("cpu")), tok


def encode_texts(tokenizer, texts: Sequence[str], max_length: int, device) -> dict[str, torch.Tensor]:
    """Right-padded ids [B, L] and attention mask; a text longer than ``max_length`` keeps its end."""
    rows = [tokenizer(t)["input_ids"][-max_length:] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def score_texts(
    model, tokenizer, texts: Sequence[str], batch_size: int = 64, max_length: int = 512
) -> torch.Tensor:
    """Raw RM scores [N] (``logits[:, 0]``) of whole texts, in batches."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        out.append(
            model(**encode_texts(tokenizer, texts[i : i + batch_size], max_length, device)).logits[:, 0]
        )
    model.train(was_training)
    return torch.cat(out).float().cpu() if out else torch.zeros(0)


def render_pair(tokenizer, prompt: str, response: str, chat: bool) -> str:
    """The text an RM scores: ``prompt + response``, or the chat template over a user and an assistant turn."""
    if not chat:
        return prompt + response
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def normalize(scores: torch.Tensor, mode: str, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """[N] scores: ``stats`` (given mean/std), ``batch`` (the batch's own), or ``none``.

    >>> normalize(torch.tensor([1.0, 3.0]), "batch").tolist()
    [-1.0, 1.0]
    >>> normalize(torch.tensor([1.0, 3.0]), "stats", mean=1.0, std=2.0).tolist()
    [0.0, 1.0]
    """
    if mode == "none":
        return scores
    if mode == "batch":
        mean, std = scores.mean().item(), scores.std(unbiased=False).item() if len(scores) > 1 else 1.0
    if mode not in ("stats", "batch"):
        raise ValueError(f"unknown reward normalisation {mode!r}; valid: stats, batch, none")
    return (scores - mean) / max(std, 1e-6)


class RewardModel:
    """One reward model or an ensemble: ``RewardModel(paths, device).score(prompts, responses) -> [float]``."""

    def __init__(self, path_or_paths: str | Sequence[str], device=None, normalize: str = "stats",
                 clip: float = 0.0, ensemble: str = "mean-std", lam: float = 1.0, batch_size: int = 64):  # fmt: skip
        paths = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
        if not paths:
            raise ValueError("RewardModel needs at least one path (set reward_model.paths=[DIR, ...])")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.norm, self.clip, self.ensemble, self.lam, self.batch_size = (
            normalize,
            clip,
            ensemble,
            lam,
            batch_size,
        )
        self.members = []
        for p in map(str, paths):
            model, tok = load_rm(p, self.device)
            stats_file = Path(p) / STATS_FILE
            stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
            if normalize == "stats" and "mean" not in stats:
                raise ValueError(
                    f"reward model {p}: no {STATS_FILE} with mean/std; use reward_model.normalize=batch"
                )
            self.members.append((model.eval().requires_grad_(False), tok, stats))

    def member_scores(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Normalised scores [K, N] of each member."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses: they must align 1:1")
        rows = []
        for model, tok, stats in self.members:
            texts = [
                render_pair(tok, p, r, stats.get("chat", False))
                for p, r in zip(prompts, responses, strict=True)
            ]
            raw = score_texts(model, tok, texts, self.batch_size, stats.get("max_length", 512))
            rows.append(normalize(raw, self.norm, stats.get("mean", 0.0), stats.get("std", 1.0)))
        return torch.stack(rows)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        agg = ensemble_aggregate(self.member_scores(prompts, responses), self.ensemble, self.lam)  # [N]
        if self.clip > 0:
            agg = agg.clamp(-self.clip, self.clip)
        return agg.tolist()


def model_reward(cfg, device) -> callable:
    """The reward ``model`` built from ``cfg.reward_model``: a reward function with the registry's contract."""
    rc = cfg.reward_model
    rm = RewardModel(rc.paths, device, rc.normalize, rc.clip, rc.ensemble, rc.lam, rc.batch_size)

    def reward(completions: Sequence[str], examples: Sequence[Example]) -> RewardOutput:
        if len(completions) != len(examples):
            raise ValueError(
                f"{len(completions)} completions but {len(examples)} examples: they must align 1:1"
            )
        members = rm.member_scores([ex.prompt for ex in examples], completions)  # [K, N]
        scores = ensemble_aggregate(members, rm.ensemble, rm.lam)
        if rm.clip > 0:
            scores = scores.clamp(-rm.clip, rm.clip)
        metrics = {"rm_std": members.std(0, unbiased=False).mean().item()} if len(members) > 1 else {}
        return RewardOutput(scores=scores.tolist(), metrics=metrics)

    return reward
