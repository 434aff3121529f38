"""Gold score against KL from the warm start (Gao et al. 2022) for GRPO against one reward model and an ensemble.

    python benchmarks/rlhf_overoptimisation.py [--members 3] [--steps 30] [--beta 0.01] [--eval-every 5]
        [--out benchmarks/results/rlhf_overoptimisation.json] [--plot benchmarks/results/rlhf_overoptimisation.png]

The setup is `make train-rlhf`'s (``configs/rlhf-grpo.yaml``: the same cached warm start, pairs and reward
model 0), with a smaller KL coefficient and more steps so the policy travels far enough from the warm start
for over-optimisation to show. Two runs from the same warm start and seed: GRPO against reward model 0 alone,
and against the ensemble of ``--members`` reward models (seeds 0, 1, ...) aggregated as mean − λ·std
(``reward_model.ensemble=mean-std``, Coste et al. 2023). At each evaluation the held-out gold score (sampled at
the config's ``train.eval_temperature``) is paired with the mean KL of the policy's samples to the warm start over
the steps since the previous evaluation (``curve``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reasoner.config import RewardTerm, load_config, with_values  # noqa: E402
from reasoner.train.metrics import read_metrics  # noqa: E402

CONFIG = ROOT / "configs" / "rlhf-grpo.yaml"


def curve(run: Path) -> list[dict]:
    """(step, kl, gold) at each evaluation. ``kl`` is the mean of the trainer's ``kl`` metric (the KL of each step's
    samples to the warm start, k3 estimator) over the steps since the previous evaluation: one step's batch is too
    noisy an x (0 before the first step)."""
    rows = read_metrics(run / "metrics.jsonl")
    kl = {r["step"]: r["kl"] for r in rows if "kl" in r}
    points, last = [], 0
    for r in rows:
        if "eval/score" not in r:
            continue
        window = [v for s, v in kl.items() if last < s <= r["step"]]
        points.append({"step": r["step"], "kl": sum(window) / len(window) if window else 0.0,
                       "gold": r["eval/score"]})  # fmt: skip
        last = r["step"]
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--beta", type=float, default=0.01)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rlhf_overoptimisation.json"))
    ap.add_argument("--plot", default=str(ROOT / "benchmarks" / "results" / "rlhf_overoptimisation.png"))
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. train.cpu_threads=2")
    args = ap.parse_args()

    from reasoner.rlhf.demo import make_preference_data, train_reward_models
    from reasoner.train.sft import run_sft
    from reasoner.train.trainer import train

    t0 = time.time()
    cfg = load_config(CONFIG, args.overrides)
    cfg = with_values(cfg, {"rlhf.ensemble": args.members})
    out = Path(cfg.rlhf.output_dir)
    init = str(run_sft(cfg, cfg.model.path, cfg.sft.output_dir, progress=False))
    train_path, eval_path, _ = make_preference_data(cfg, out / "data")
    rms = train_reward_models(cfg, init, train_path, eval_path, out, progress=False)
    runs = {}
    for name, paths in (
        ("one RM", [rms[0]["model"]]),
        (f"ensemble of {args.members}", [r["model"] for r in rms]),
    ):
        rl = with_values(cfg, {
            "task.rewards": [RewardTerm(name="model")], "reward_model.paths": paths,
            "model.path": init, "sft.steps": 0, "algo.beta": args.beta,
            "train.steps": args.steps, "train.eval_every": args.eval_every, "train.save_every": 0,
            "train.tensorboard": False, "train.output_dir": str(out / f"overopt-{len(paths)}"),
        })  # fmt: skip
        result = train(rl, progress=False)
        runs[name] = {"curve": curve(Path(rl.train.output_dir)), "result": result}
        print(f"[overopt] {name}: gold {result['eval_before']} -> {result['eval_after']}")
    report = {
        "members": args.members, "steps": args.steps, "beta": args.beta, "rm_accuracy": [r["accuracy"] for r in rms],
        "runs": runs, "wall_s": round(time.time() - t0, 1), "machine": platform.platform(),
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2))
    plot(runs, Path(args.plot))
    print(json.dumps({name: r["curve"][-1] for name, r in runs.items()} | {"wall_s": report["wall_s"]}))


def plot(runs: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, r in runs.items():
        pts = r["curve"]
        ax.plot([p["kl"] for p in pts], [p["gold"] for p in pts], marker="o", ms=4, label=name)
    ax.set_xlabel("KL(policy || warm start), per token")
    ax.set_ylabel("held-out gold score")
    ax.set_title("GRPO against a learned reward: gold vs KL", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
