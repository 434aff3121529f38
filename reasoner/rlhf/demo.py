"""The offline RLHF demo (`make train-rlhf`): warm start -> preference pairs -> reward model(s) -> GRPO vs the RM.

1. SFT the tiny policy on the preference task's mixed-style answers (cached; ``reasoner.train.sft``);
2. label preference pairs with the hidden gold rule (``rlhf.rule``), flipping ``rlhf.noise`` of them;
3. train ``rlhf.ensemble`` Bradley–Terry reward models from the warm start (``reasoner.rlhf.rm_training``), held-out accuracy
   measured on pairs labelled by the gold rule without noise, next to what "the longer answer wins" scores;
4. GRPO against the reward model(s) alone (``task.rewards=[{name: model}]``); the task's own reward, the gold
   rule, is only used to evaluate, so ``eval_before``/``eval_after`` are the gold score before and after;
5. the RM's accuracy on the policy's own samples before and after RL (``rm_on_policy_before``/``_after``): pairs
   of the policy's samples to held-out prompts, labelled by the gold rule. Held-out template pairs measure the RM
   where it was trained; this measures it where the RL takes the policy, and its fall is over-optimisation seen
   from the RM's side.
Ends with one JSON result: ``gold_before``, ``gold_after``, ``rm_accuracy``, ``wall_s`` and the rest.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import torch

from reasoner.config import Config, RewardTerm, with_values
from reasoner.train.checkpoint import write_json_atomic


def length_heuristic_accuracy(rows: list[dict]) -> float:
    """Pairwise accuracy of "the longer response wins" (ties count half): the baseline a real RM must beat."""
    score = [1.0 if len(r["chosen"]) > len(r["rejected"]) else 0.5 if len(r["chosen"]) == len(r["rejected"]) else 0.0
             for r in rows]  # fmt: skip
    return sum(score) / len(score)


def make_preference_data(cfg: Config, out: Path) -> tuple[Path, Path, list[dict]]:
    from reasoner.tasks.preference import make_pairs

    rc = cfg.rlhf
    train = make_pairs(rc.rule, rc.pairs, cfg.train.seed, rc.noise, "train")
    held_out = make_pairs(rc.rule, rc.eval_pairs, cfg.train.seed, 0.0, "test")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("train", train), ("eval", held_out)):
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths[0], paths[1], held_out


def train_reward_models(
    cfg: Config, init: str, train_path, eval_path, out: Path, progress: bool
) -> list[dict]:
    from reasoner.rlhf.rm_training import train_reward_model

    results = []
    for k in range(cfg.rlhf.ensemble):
        member = with_values(cfg, {"train.seed": cfg.train.seed + k})  # another head init and pair order
        done = out / f"rm-{k}" / "result.json"
        if done.is_file() and Path(json.loads(done.read_text())["model"]).is_dir():
            results.append(json.loads(done.read_text()))  # resumable: a finished member is kept
            print(f"[rlhf] reusing reward model {k}: {results[-1]['model']}")
            continue
        results.append(
            train_reward_model(member, init, str(train_path), str(eval_path), out / f"rm-{k}", progress)
        )
        print(f"[rlhf] reward model {k}: held-out accuracy {results[-1]['accuracy']}")
    return results


def sample_answers(
    policy: str,
    prompts: list[str],
    n: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    sampler: str = "fast",
) -> list[str]:
    """``n`` sampled answers of the saved ``policy`` to each prompt, prompt by prompt (the hf engine)."""
    from reasoner.models import default_device, load_policy, load_tokenizer
    from reasoner.rollout.base import SamplingParams
    from reasoner.rollout.hf import HFEngine

    model = load_policy(policy, device=default_device()).eval()
    engine = HFEngine(model, load_tokenizer(policy), sampler=sampler)
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    return [r.text for r in engine.generate(prompts, params)]


def policy_pairs(policy: str, cfg: Config, prompts: list[str], seed: int) -> list[dict]:
    """Preference rows from ``policy``'s own samples: ``rlhf.on_policy_samples`` answers per prompt (the
    rollout's temperature and length), every two that the gold rule ``rlhf.rule`` ranks apart, without noise."""
    from reasoner.tasks.preference import family, label_pair

    k = cfg.rlhf.on_policy_samples
    texts = sample_answers(policy, prompts, k, cfg.rollout.temperature, cfg.rollout.max_new_tokens, seed,
                           cfg.rollout.sampler)  # fmt: skip
    rows = []
    for i, prompt in enumerate(prompts):
        group = texts[i * k : (i + 1) * k]
        for a, b in itertools.combinations(group, 2):
            pair = label_pair(cfg.rlhf.rule, prompt, a, b)
            if pair is not None:
                rows.append(
                    {"prompt": prompt, "chosen": pair[0], "rejected": pair[1], "family": family(prompt, a, b)}
                )
    return rows


def on_policy_accuracy(rows: list[dict], reward) -> dict:
    """How often the reward (the aggregate the RL optimised) ranks the gold-preferred sample higher: overall
    and per ``family``; ties count half. ``{"accuracy": None}`` when no pair was ranked apart."""
    if not rows:
        return {"accuracy": None, "pairs": 0}
    from reasoner.algo.pairwise import pairwise_accuracy

    prompts = [r["prompt"] for r in rows]
    hits = pairwise_accuracy(torch.tensor(reward.score(prompts, [r["chosen"] for r in rows])),
                             torch.tensor(reward.score(prompts, [r["rejected"] for r in rows])))  # fmt: skip
    families: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        families.setdefault(row["family"], []).append(i)
    return {"accuracy": round(hits.mean().item(), 4), "pairs": len(rows),
            "by_family": {f: {"accuracy": round(hits[idx].mean().item(), 4), "pairs": len(idx)}
                          for f, idx in sorted(families.items())}}  # fmt: skip


def measure_on_policy(cfg: Config, policies: dict[str, str], rm_paths: list[str]) -> dict[str, dict]:
    """``on_policy_accuracy`` of the RM(s) on each named policy's samples to the same held-out prompts."""
    from reasoner.models import default_device
    from reasoner.rewards.reward_model import RewardModel
    from reasoner.tasks.preference import load

    if cfg.rlhf.on_policy_prompts <= 0:
        return {}
    prompts = [
        ex.prompt for ex in load(cfg.rlhf.rule, None, "test", cfg.rlhf.on_policy_prompts, cfg.train.seed)
    ]
    rc = cfg.reward_model
    reward = RewardModel(rm_paths, default_device(), normalize=rc.normalize, clip=rc.clip, ensemble=rc.ensemble,
                         lam=rc.lam, batch_size=rc.batch_size)  # fmt: skip
    return {name: on_policy_accuracy(policy_pairs(path, cfg, prompts, cfg.train.seed), reward)
            for name, path in policies.items()}  # fmt: skip


def run_rlhf(cfg: Config, progress: bool = True) -> dict:
    from reasoner.train.sft import run_sft
    from reasoner.train.trainer import train

    t0 = time.time()
    out = Path(cfg.rlhf.output_dir)
    if cfg.task.name not in ("preference", "preference-casual"):
        raise ValueError(
            f"reasoner rlhf runs on the preference task (task.name=preference); got {cfg.task.name!r}"
        )
    init = (
        str(run_sft(cfg, cfg.model.path, cfg.sft.output_dir, progress=progress))
        if cfg.sft.steps
        else cfg.model.path
    )
    train_path, eval_path, held_out = make_preference_data(cfg, out / "data")
    rms = train_reward_models(cfg, init, train_path, eval_path, out, progress)
    t_rm = time.time()

    rl = with_values(cfg, {
        "task.rewards": [RewardTerm(name="model", weight=1.0)],
        "reward_model.paths": [r["model"] for r in rms],
        "train.output_dir": str(out / "grpo"),
        "model.path": init, "sft.steps": 0,  # already warm-started; the reference model is the warm start
    })  # fmt: skip
    result = train(rl, progress=progress)
    on_policy = measure_on_policy(cfg, {"before": init, "after": str(Path(rl.train.output_dir) / "final")},
                                  rl.reward_model.paths)  # fmt: skip
    summary = {
        "gold_before": result["eval_before"], "gold_after": result["eval_after"],
        "gold_gain": round(result["eval_after"] - result["eval_before"], 4),
        "rm_accuracy": round(sum(r["accuracy"] for r in rms) / len(rms), 4),
        "rm_accuracies": [r["accuracy"] for r in rms],
        "length_heuristic_accuracy": round(length_heuristic_accuracy(held_out), 4),
        **{f"rm_on_policy_{k}": v["accuracy"] for k, v in on_policy.items()},
        "rule": cfg.rlhf.rule, "noise": cfg.rlhf.noise, "ensemble": cfg.rlhf.ensemble, "algo": cfg.algo.name,
        "steps": cfg.train.steps, "final_kl": _last(Path(rl.train.output_dir) / "metrics.jsonl", "kl"),
        "rm_s": round(t_rm - t0, 1), "wall_s": round(time.time() - t0, 1), "output_dir": str(out),
    }  # fmt: skip
    write_json_atomic(out / "result.json", summary)
    if on_policy:
        write_json_atomic(out / "rm_on_policy.json", on_policy)
    return summary


def _last(path: Path, key: str):
    from reasoner.train.metrics import read_metrics

    vals = [r[key] for r in read_metrics(path) if key in r]
    return round(vals[-1], 5) if vals else None
