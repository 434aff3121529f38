"""GRPO vs PPO on the offline math task: held-out accuracy against samples and wall time, memory, step time.

    python benchmarks/grpo_vs_ppo.py [--seeds 0 1 2] [--steps 60] [--eval-every 15] [--eval-size 200]
        [--out benchmarks/results/grpo_vs_ppo.json] [--plot benchmarks/results/grpo_vs_ppo.png]

Both algorithms start from the same supervised warm start (``configs/math-grpo.yaml``'s SFT, reused from its
cache when ``make train-math`` already built it) and run their offline default configs
(``configs/math-grpo.yaml``, ``configs/math-ppo.yaml``) with the same budget: the same steps, prompts per
step and completions per prompt, hence the same number of generated samples, and the same seeds. A seed
sets the training order, the sampling and the held-out prompts (the same for both algorithms).

Runs are sequential, each in its own process, so peak memory is per run: peak resident set size on CPU,
peak allocated CUDA memory on a GPU. Wall time on the x axis is training time only (generate + score +
update, summed over steps), so the periodic evaluations do not count against either algorithm.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reasoner.config import load_config  # noqa: E402

ALGOS = {"grpo": ROOT / "configs" / "math-grpo.yaml", "ppo": ROOT / "configs" / "math-ppo.yaml"}
COLORS = {"grpo": "tab:blue", "ppo": "tab:orange"}


def budget_overrides(args) -> list[str]:
    return [f"train.steps={args.steps}", f"train.eval_every={args.eval_every}", f"task.eval_size={args.eval_size}",
            "train.save_every=0", "train.tensorboard=false"]  # fmt: skip


def warm_start(args) -> str:
    """The shared SFT model: make train-math's cache (same settings), trained here if missing."""
    from reasoner.train.sft import run_sft

    cfg = load_config(ALGOS["grpo"], [f"model.path={args.model}"])
    return str(run_sft(cfg, cfg.model.path, Path(cfg.sft.output_dir), progress=False))


def _child(config: str, overrides: list[str], queue) -> None:
    import torch

    from reasoner.train.trainer import train

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = train(load_config(config, overrides), progress=False)
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if torch.cuda.is_available():
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    queue.put({**result, **peak})


def run_one(algo: str, seed: int, sft: str, args) -> dict:
    out = args.workdir / f"{algo}-seed{seed}"
    overrides = budget_overrides(args) + [
        f"model.path={sft}",
        "sft.steps=0",
        f"train.seed={seed}",
        f"train.output_dir={out}",
    ]
    ctx = mp.get_context("spawn")  # a fresh interpreter per run: its peak memory is its own
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(str(ALGOS[algo]), overrides, queue))
    start = time.time()
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{algo} seed {seed} failed with exit code {proc.exitcode}; see {out}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "algo": algo,
        "seed": seed,
        "process_wall_s": round(time.time() - start, 1),
        **result,
        **curves(rows),
    }


def curves(rows: list[dict]) -> dict:
    """Held-out accuracy at each evaluation, against samples and cumulative training seconds; step times."""
    steps = [r for r in rows if "time/update" in r]
    train_s, elapsed = {0: 0.0}, 0.0
    for r in steps:
        elapsed += r["time/generate"] + r["time/score"] + r["time/update"]
        train_s[r["step"]] = elapsed
    per_step = steps[0]["samples"] // steps[0]["step"]
    evals = [r for r in rows if "eval/score" in r]
    step_s = [
        r["time/generate"] + r["time/score"] + r["time/update"] for r in steps[1:]
    ]  # first step warms up
    return {
        "eval_steps": [r["step"] for r in evals],
        "eval_samples": [r["step"] * per_step for r in evals],
        "eval_train_s": [round(train_s[r["step"]], 2) for r in evals],
        "eval_accuracy": [r["eval/score"] for r in evals],
        "train_reward": [round(r["reward/mean"], 4) for r in steps],
        "step_s_median": round(statistics.median(step_s), 3),
        "generate_s_median": round(statistics.median(r["time/generate"] for r in steps[1:]), 3),
        "score_s_median": round(statistics.median(r["time/score"] for r in steps[1:]), 3),
        "update_s_median": round(statistics.median(r["time/update"] for r in steps[1:]), 3),
    }


def summarize(runs: list[dict]) -> dict:
    out = {}
    for algo in ALGOS:
        mine = [r for r in runs if r["algo"] == algo]
        acc = [r["eval_accuracy"] for r in mine]

        def ms(values):
            values = list(values)
            return {
                "mean": round(statistics.mean(values), 4),
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            }

        out[algo] = {
            "seeds": [r["seed"] for r in mine],
            "eval_samples": mine[0]["eval_samples"],
            "eval_accuracy_mean": [round(statistics.mean(col), 4) for col in zip(*acc, strict=True)],
            "eval_accuracy_std": [
                round(statistics.stdev(col), 4) if len(col) > 1 else 0.0 for col in zip(*acc, strict=True)
            ],
            "eval_train_s_mean": [
                round(statistics.mean(col), 1) for col in zip(*(r["eval_train_s"] for r in mine), strict=True)
            ],
            "eval_before": ms(r["eval_before"] for r in mine),
            "eval_after": ms(r["eval_after"] for r in mine),
            "gain": ms(r["gain"] for r in mine),
            "step_s": ms(r["step_s_median"] for r in mine),
            "generate_s": ms(r["generate_s_median"] for r in mine),
            "score_s": ms(r["score_s_median"] for r in mine),
            "update_s": ms(r["update_s_median"] for r in mine),
            "peak_rss_mb": ms(r["peak_rss_mb"] for r in mine),
            **({"peak_cuda_mb": ms(r["peak_cuda_mb"] for r in mine)} if "peak_cuda_mb" in mine[0] else {}),
        }
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8), gridspec_kw={"width_ratios": [3, 3, 2, 2]})
    for algo in ALGOS:
        s = report["summary"][algo]
        mean, std = s["eval_accuracy_mean"], s["eval_accuracy_std"]
        lo, hi = (
            [m - d for m, d in zip(mean, std, strict=True)],
            [m + d for m, d in zip(mean, std, strict=True)],
        )
        label = f"{algo} (n={len(s['seeds'])} seeds)"
        for ax, x in ((axes[0], s["eval_samples"]), (axes[1], s["eval_train_s_mean"])):
            ax.plot(x, mean, marker="o", ms=3, color=COLORS[algo], label=label)
            ax.fill_between(x, lo, hi, color=COLORS[algo], alpha=0.2)
        for run in (r for r in report["runs"] if r["algo"] == algo):
            axes[0].plot(run["eval_samples"], run["eval_accuracy"], color=COLORS[algo], alpha=0.3, lw=0.8)
    axes[0].set(xlabel="generated samples", ylabel="held-out accuracy", title="accuracy vs samples")
    axes[1].set(
        xlabel="training wall time (s, evals excluded)",
        ylabel="held-out accuracy",
        title="accuracy vs wall time",
    )
    names, xs = list(ALGOS), [0, 1]
    summary = report["summary"]
    ax, bottom = axes[2], [0.0, 0.0]
    for part, hatch in (("generate_s", ""), ("score_s", ".."), ("update_s", "//")):
        heights = [summary[a][part]["mean"] for a in names]
        ax.bar(xs, heights, bottom=bottom, color=[COLORS[a] for a in names], hatch=hatch, width=0.6,
               edgecolor="white", label=part[:-2])  # fmt: skip
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    for x, a in zip(xs, names, strict=True):
        ax.text(x, bottom[x], f"{summary[a]['step_s']['mean']:.2f} s", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, names)
    ax.set(ylabel="median seconds per step", title="step time (generate / score / update)")
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[3]
    key = "peak_cuda_mb" if "peak_cuda_mb" in summary[names[0]] else "peak_rss_mb"
    mem = [summary[a][key]["mean"] for a in names]
    bars = ax.bar(xs, mem, color=[COLORS[a] for a in names], width=0.6)
    ax.bar_label(bars, fmt="%.0f MB", fontsize=8)
    ax.set_xticks(xs, names)
    ax.set(ylabel="MB", title="peak CUDA memory" if key == "peak_cuda_mb" else "peak resident memory (RSS)")
    for a in axes[:2]:
        a.grid(alpha=0.3)
        a.legend(fontsize=8, loc="lower right")
    b = report["budget"]
    fig.suptitle(f"GRPO vs PPO, offline arithmetic, tiny model: {b['steps']} steps x {b['samples_per_step']} samples, "
                 f"{b['eval_size']} held-out prompts, {report['device']}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=15)
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument(
        "--model", default="runs/tiny-model", help="the model SFT starts from (make builds it)"
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "grpo-vs-ppo")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "grpo_vs_ppo.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "grpo_vs_ppo.png")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the configs' relative paths (runs/...) are relative to the repo root

    start = time.time()
    sft = warm_start(args)
    runs = []
    for seed in args.seeds:
        for algo in ALGOS:  # interleaved, so a slowdown of the machine hits both algorithms alike
            run = run_one(algo, seed, sft, args)
            runs.append(run)
            print(f"[bench] {algo} seed {seed}: {run['eval_before']:.3f} -> {run['eval_after']:.3f} "
                  f"in {run['process_wall_s']:.0f}s, step {run['step_s_median']:.2f}s", flush=True)  # fmt: skip
    cfg = load_config(ALGOS["grpo"], budget_overrides(args))
    import torch

    report = {
        "budget": {
            "steps": args.steps, "prompts_per_step": cfg.train.prompts_per_step, "n": cfg.rollout.n,
            "samples_per_step": cfg.train.prompts_per_step * cfg.rollout.n,
            "samples_per_run": args.steps * cfg.train.prompts_per_step * cfg.rollout.n,
            "eval_every": args.eval_every, "eval_size": args.eval_size, "seeds": args.seeds,
            "configs": {a: str(p.relative_to(ROOT)) for a, p in ALGOS.items()}, "warm_start": sft,
        },
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "total_wall_s": round(time.time() - start, 1),
        "summary": summarize(runs),
        "runs": runs,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.plot)
    for algo, s in report["summary"].items():
        print(f"[bench] {algo}: accuracy {s['eval_before']['mean']:.3f} -> {s['eval_after']['mean']:.3f} "
              f"± {s['eval_after']['std']:.3f}, step {s['step_s']['mean']:.2f}s, peak RSS {s['peak_rss_mb']['mean']:.0f} MB")  # fmt: skip
    print(f"[bench] wrote {args.out} and {args.plot} in {report['total_wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
