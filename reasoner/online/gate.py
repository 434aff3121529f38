"""The deploy gate: a candidate policy goes live only if it is not worse than the deployed version k.

Both models answer the same held-out prompts (prompts users asked that neither the reward model nor the RL
round trained on). Measured: the mean reward-model score of each, the RM-judged win rate of the candidate
(sample i of the candidate against sample i of version k on the same prompt; a tie counts one half), a
verifiable score where the task has one, and KL(candidate || k) per sequence (k1 estimator on the
candidate's own samples, unbiased), or KL to another reference such as v0. ``decide`` turns these into accept / refuse with the reasons.

>>> ok, why = decide({"win_rate": 0.4, "score_candidate": 1.0, "score_parent": 0.9, "kl": 0.1},
...                  min_win_rate=0.5, score_tolerance=0.0, verifiable_tolerance=0.0, max_kl=5.0)
>>> ok, why
(False, ['win rate 0.400 < 0.500'])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from reasoner.models import load_policy, load_tokenizer
from reasoner.rollout.base import SamplingParams
from reasoner.rollout.hf import HFEngine
from reasoner.train.batch import make_batch, sequence_logprobs

Scorer = Callable[[list[str], list[str]], list[float]]  # (prompts, responses) -> one score each


def decide(
    m: dict, *, min_win_rate: float, score_tolerance: float, verifiable_tolerance: float, max_kl: float
) -> tuple[bool, list[str]]:
    """Accept unless a measured quantity says the candidate is worse; the reasons name each failed check."""
    reasons = []
    if m["win_rate"] < min_win_rate:
        reasons.append(f"win rate {m['win_rate']:.3f} < {min_win_rate:.3f}")
    if m["score_candidate"] < m["score_parent"] - score_tolerance:
        reasons.append(
            f"RM score {m['score_candidate']:.3f} < version k's {m['score_parent']:.3f} - {score_tolerance}"
        )
    if m.get("verifiable_candidate") is not None and (
        m["verifiable_candidate"] < m["verifiable_parent"] - verifiable_tolerance
    ):
        reasons.append(
            f"verifiable score {m['verifiable_candidate']:.3f} < version k's {m['verifiable_parent']:.3f}"
            f" - {verifiable_tolerance}"
        )
    if m["kl"] > max_kl:
        reasons.append(f"KL to version k {m['kl']:.3f} > {max_kl}")
    return not reasons, reasons


def win_rate(candidate: Sequence[float], parent: Sequence[float]) -> float:
    """Fraction of paired samples where the candidate scores higher; ties count one half.

    >>> win_rate([1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 2.0, 0.5])
    0.625
    """
    if len(candidate) != len(parent) or not candidate:
        raise ValueError(
            f"win_rate needs equal, non-empty score lists; got {len(candidate)} and {len(parent)}"
        )
    wins = sum(1.0 if c > p else 0.5 if c == p else 0.0 for c, p in zip(candidate, parent, strict=True))
    return wins / len(candidate)


@torch.no_grad()
def compare(
    candidate_path: str,
    parent_path: str,
    prompts: list[str],
    scorer: Scorer,
    *,
    samples: int = 2,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    seed: int = 0,
    verifiable: Callable[[list[str], list[int]], list[float | None]] | None = None,
    render: Callable[[str], str] = lambda p: p,
    kl_reference: str | None = None,
) -> dict:
    """Sample ``samples`` answers per prompt from each model and measure them (see the module docstring).

    ``prompts`` are what users asked (what the RM scores with a response); ``render`` turns one into the
    text the policy continues, as the server does. ``verifiable(responses, prompt_indices)`` scores
    responses where the task has a checker (None = cannot). ``kl_reference``: measure KL(candidate || it)
    instead of KL(candidate || version k), e.g. to the original policy the RL round was anchored to.
    """
    if not prompts:
        raise ValueError("the gate needs held-out prompts; none were given (collect more feedback)")
    tokenizer = load_tokenizer(parent_path)
    params = SamplingParams(n=samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    out: dict = {"prompts": len(prompts), "samples": samples}
    texts, rollouts = {}, {}
    candidate = load_policy(candidate_path, "float32").eval()
    for name, path in (("candidate", candidate_path), ("parent", parent_path)):
        model = candidate if name == "candidate" else load_policy(path, "float32").eval()
        rollouts[name] = HFEngine(model, tokenizer).generate([render(p) for p in prompts], params)
        texts[name] = [r.text for r in rollouts[name]]
        if name == "parent":
            ref = model if kl_reference is None else load_policy(kl_reference, "float32").eval()
            out["kl"] = _kl(candidate, ref, rollouts["candidate"], tokenizer.pad_token_id, temperature)
    owners = [prompts[r.prompt_index] for r in rollouts["candidate"]]
    scores = {name: scorer(owners, texts[name]) for name in texts}
    out["score_candidate"] = sum(scores["candidate"]) / len(owners)
    out["score_parent"] = sum(scores["parent"]) / len(owners)
    out["win_rate"] = win_rate(scores["candidate"], scores["parent"])
    out["verifiable_candidate"] = out["verifiable_parent"] = None
    if verifiable is not None:
        for name in texts:
            got = [
                s for s in verifiable(texts[name], [r.prompt_index for r in rollouts[name]]) if s is not None
            ]
            out[f"verifiable_{name}"] = sum(got) / len(got) if got else None
        if out["verifiable_parent"] is None or out["verifiable_candidate"] is None:
            out["verifiable_candidate"] = out["verifiable_parent"] = None
    out["examples"] = [
        {"prompt": owners[i], "candidate": texts["candidate"][i], "parent": texts["parent"][i]}
        for i in range(min(4, len(owners)))
    ]
    return out


def _kl(candidate, parent, rollouts, pad_id: int, temperature: float, micro: int = 64) -> float:
    """Mean over the candidate's samples of sum_t (log p_cand - log p_parent): KL(candidate || parent)."""
    total, n = 0.0, 0
    for i in range(0, len(rollouts), micro):
        batch = make_batch(rollouts[i : i + micro], pad_id)
        lc, _ = sequence_logprobs(candidate, batch, temperature)  # [B, T]
        lp, _ = sequence_logprobs(parent, batch, temperature)  # [B, T]
        total += ((lc - lp) * batch.completion_mask).sum().item()
        n += len(batch)
    return total / max(1, n)
