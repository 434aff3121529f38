"""Every algorithm variant on the offline math task: held-out accuracy against samples and wall time, 3 seeds.

    python benchmarks/variants.py [--seeds 0 1 2] [--steps 10] [--prompts 16] [--eval-every 5] [--eval-size 100]
        [--variants grpo gspo ...] [--summarize-only] [--out benchmarks/results/variants.json]
        [--plot benchmarks/results/variants.png]

Each variant is ``configs/math-grpo.yaml`` plus the overrides in ``VARIANTS``, from the same supervised warm start
(its SFT cache in ``runs/math-sft``, trained here if missing) with the same steps, prompts per step, completions
per prompt and seeds. A seed sets the training order, the sampling and the held-out prompts, the same for every
variant. Dynamic sampling generates more samples per step than the others (it refills); the x axis counts the
samples each run actually generated. On-policy with one inner epoch every importance ratio is 1, so GSPO and
CISPO would be GRPO exactly: they run with ``algo.inner_epochs=2``, against ``grpo-2-epochs`` as their control.
Runs are sequential, one process each, interleaved by seed so a slowdown of the machine hits all variants alike.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from grpo_vs_ppo import _child, curves  # noqa: E402

from reasoner.config import load_config  # noqa: E402

CONFIG = ROOT / "configs" / "math-grpo.yaml"
VARIANTS = {
    "grpo": [],
    "grpo-2-epochs": ["algo.inner_epochs=2"],
    "gspo": ["algo.loss=gspo", "algo.inner_epochs=2", "algo.clip_low=0.0003", "algo.clip_high=0.0004"],
    "cispo": ["algo.loss=cispo", "algo.inner_epochs=2", "algo.loss_agg=token-mean", "algo.clip_low=1.0",
              "algo.clip_high=0.28"],
    "rloo": ["algo.name=rloo"],
    "reinforce++": ["algo.name=reinforce_plus_plus", "algo.kl_estimator=k1"],
    "reinforce++-baseline": ["algo.name=reinforce_plus_plus_baseline"],
    "dapo-refill": ["algo.refill_rounds=2"],
    "overlong-shaping": ["algo.overlong_buffer=8"],
}  # fmt: skip


def budget_overrides(args) -> list[str]:
    return [f"train.steps={args.steps}", f"train.prompts_per_step={args.prompts}", f"train.eval_every={args.eval_every}",
            f"task.eval_size={args.eval_size}", "train.save_every=0", "train.tensorboard=false",
            f"train.cpu_threads={args.threads}"]  # fmt: skip


def warm_start(args) -> str:
    from reasoner.train.sft import run_sft

    cfg = load_config(CONFIG, [f"model.path={args.model}", f"train.cpu_threads={args.threads}"])
    return str(run_sft(cfg, cfg.model.path, Path(cfg.sft.output_dir), progress=False))


def run_one(variant: str, seed: int, sft: str, args) -> dict:
    out = args.workdir / f"{variant}-seed{seed}"
    overrides = budget_overrides(args) + VARIANTS[variant] + [
        f"model.path={sft}", "sft.steps=0", f"train.seed={seed}", f"train.output_dir={out}"
    ]  # fmt: skip
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(str(CONFIG), overrides, queue))
    start = time.time()
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{variant} seed {seed} failed with exit code {proc.exitcode}; see {out}")
    return collect_run(variant, seed, out, result, time.time() - start)


def collect_run(variant: str, seed: int, out: Path, result: dict, wall_s: float) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/score" in r]
    return {"variant": variant, "seed": seed, "overrides": VARIANTS[variant], "process_wall_s": round(wall_s, 1),
            **result, **curves(rows), "eval_samples": [_samples_at(rows, r["step"]) for r in evals]}  # fmt: skip


def _samples_at(rows: list[dict], step: int) -> int:
    """Samples generated up to ``step`` (refill rounds included): the run's own cumulative count."""
    return max([r["samples"] for r in rows if "samples" in r and r["step"] <= step], default=0)


def _ms(values) -> dict:
    values = list(values)
    return {"mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}  # fmt: skip


def summarize(runs: list[dict]) -> dict:
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        acc = list(zip(*(r["eval_accuracy"] for r in mine), strict=True))
        out[variant] = {
            "seeds": [r["seed"] for r in mine],
            "eval_steps": mine[0]["eval_steps"],
            "eval_samples_mean": [
                round(statistics.mean(c)) for c in zip(*(r["eval_samples"] for r in mine), strict=True)
            ],
            "eval_train_s_mean": [
                round(statistics.mean(c), 1) for c in zip(*(r["eval_train_s"] for r in mine), strict=True)
            ],
            "eval_accuracy_mean": [round(statistics.mean(c), 4) for c in acc],
            "eval_accuracy_std": [round(statistics.stdev(c), 4) if len(c) > 1 else 0.0 for c in acc],
            "eval_before": _ms(r["eval_before"] for r in mine),
            "eval_after": _ms(r["eval_after"] for r in mine),
            "gain": _ms(r["gain"] for r in mine),
            "samples": _ms(r["samples"] for r in mine),
            "train_reward_first": _ms(r["train_reward"][0] for r in mine),
            "train_reward_last": _ms(r["train_reward"][-1] for r in mine),
            "step_s": _ms(r["step_s_median"] for r in mine),
        }
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    cmap = plt.get_cmap("tab10")
    for k, (variant, s) in enumerate(report["summary"].items()):
        mean, std = s["eval_accuracy_mean"], s["eval_accuracy_std"]
        for ax, x in ((axes[0], s["eval_samples_mean"]), (axes[1], s["eval_train_s_mean"])):
            ax.errorbar(x, mean, yerr=std, marker="o", ms=3, capsize=2, color=cmap(k % 10), label=variant,
                        ls="--" if k >= 10 else "-")  # fmt: skip
    axes[0].set(xlabel="generated samples", ylabel="held-out accuracy (mean ± std over seeds)",
                title="accuracy vs samples")  # fmt: skip
    axes[1].set(xlabel="training wall time (s, evals excluded)", ylabel="held-out accuracy",
                title="accuracy vs wall time")  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    b = report["budget"]
    fig.suptitle(f"Variants on the offline arithmetic task, tiny model: {b['steps']} steps x {b['samples_per_step']} "
                 f"samples, {b['eval_size']} held-out prompts, seeds {b['seeds']}, {report['device']}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=16, help="train.prompts_per_step")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--eval-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="train.cpu_threads of each run")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--summarize-only", action="store_true", help="report on the runs already in --workdir"
    )
    parser.add_argument(
        "--model", default="runs/tiny-model", help="the model SFT starts from (make builds it)"
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "variants")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "variants.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "variants.png")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the config's relative paths (runs/...) are relative to the repo root

    start = time.time()
    sft = warm_start(args)
    runs = []
    for seed in args.seeds:
        for variant in args.variants:
            if args.summarize_only:  # rebuild the report from the run directories a previous call left
                out = args.workdir / f"{variant}-seed{seed}"
                if (out / "result.json").is_file():
                    runs.append(
                        collect_run(variant, seed, out, json.loads((out / "result.json").read_text()), 0.0)
                    )
                continue
            run = run_one(variant, seed, sft, args)
            runs.append(run)
            print(f"[bench] {variant} seed {seed}: {run['eval_before']:.3f} -> {run['eval_after']:.3f}, "
                  f"{run['samples']} samples in {run['process_wall_s']:.0f}s", flush=True)  # fmt: skip
    cfg = load_config(CONFIG, budget_overrides(args))
    import torch

    report = {
        "budget": {"steps": args.steps, "prompts_per_step": args.prompts, "n": cfg.rollout.n,
                   "samples_per_step": args.prompts * cfg.rollout.n, "eval_every": args.eval_every,
                   "eval_size": args.eval_size, "seeds": args.seeds, "config": str(CONFIG.relative_to(ROOT)),
                   "warm_start": sft, "variants": {v: VARIANTS[v] for v in args.variants}},
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores",
        "torch_threads": args.threads, "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(), "torch": torch.__version__,
        "total_wall_s": None if args.summarize_only else round(time.time() - start, 1),
        "summarized_from": str(args.workdir) if args.summarize_only else None,
        "summary": summarize(runs), "runs": runs,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.plot)
    for variant, s in report["summary"].items():
        print(f"[bench] {variant}: {s['eval_before']['mean']:.3f} -> {s['eval_after']['mean']:.3f} "
              f"± {s['eval_after']['std']:.3f} with {s['samples']['mean']:.0f} samples, "
              f"step {s['step_s']['mean']:.2f}s")  # fmt: skip
    print(f"[bench] wrote {args.out} and {args.plot} in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
