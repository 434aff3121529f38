"""The offline RLHF demo (`make train-rlhf`): warm start -> preference pairs -> reward model(s) -> GRPO vs the RM.

1. SFT the tiny policy on the preference task's mixed-style answers (cached; ``reasoner.sft``);
2. label preference pairs with the hidden gold rule (``rlhf.rule``), flipping ``rlhf.noise`` of them;
3. train ``rlhf.ensemble`` Bradley–Terry reward models from the warm start (``reasoner.rm``), held-out accuracy
   measured on pairs labelled by the gold rule without noise, next to what "the longer answer wins" scores;
4. GRPO against the reward model(s) alone (``task.rewards=[{name: model}]``); the task's own reward, the gold
   rule, is only used to evaluate, so ``eval_before``/``eval_after`` are the gold score before and after.
Ends with one JSON result: ``gold_before``, ``gold_after``, ``rm_accuracy``, ``wall_s`` and the rest.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from reasoner.checkpoint import write_json_atomic
from reasoner.config import Config, RewardTerm


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
    from reasoner.rm import train_reward_model

    results = []
    for k in range(cfg.rlhf.ensemble):
        member = copy.deepcopy(cfg)
        member.train.seed = cfg.train.seed + k  # a different score-head init and pair order per member
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


def run_rlhf(cfg: Config, progress: bool = True) -> dict:
    from reasoner.sft import run_sft
    from reasoner.trainer import train

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

    rl = copy.deepcopy(cfg)
    rl.task.rewards = [RewardTerm(name="model", weight=1.0)]
    rl.reward_model.paths = [r["model"] for r in rms]
    rl.train.output_dir = str(out / "grpo")
    rl.model.path, rl.sft.steps = init, 0  # already warm-started; the reference model is the warm start
    result = train(rl, progress=progress)
    summary = {
        "gold_before": result["eval_before"], "gold_after": result["eval_after"],
        "gold_gain": round(result["eval_after"] - result["eval_before"], 4),
        "rm_accuracy": round(sum(r["accuracy"] for r in rms) / len(rms), 4),
        "rm_accuracies": [r["accuracy"] for r in rms],
        "length_heuristic_accuracy": round(length_heuristic_accuracy(held_out), 4),
        "rule": cfg.rlhf.rule, "noise": cfg.rlhf.noise, "ensemble": cfg.rlhf.ensemble, "algo": cfg.algo.name,
        "steps": cfg.train.steps, "final_kl": _last(Path(rl.train.output_dir) / "metrics.jsonl", "kl"),
        "rm_s": round(t_rm - t0, 1), "wall_s": round(time.time() - t0, 1), "output_dir": str(out),
    }  # fmt: skip
    write_json_atomic(out / "result.json", summary)
    return summary


def _last(path: Path, key: str):
    from reasoner.metrics import read_metrics

    vals = [r[key] for r in read_metrics(path) if key in r]
    return round(vals[-1], 5) if vals else None
