"""GRPO against TRL's GRPOTrainer, back to back: median step time, generation tokens/s and peak RSS, as ratios.

Both trainers get the same work: the tiny character-level Llama (``reasoner tiny-model``), 8 prompts x 8
completions a step from one prompt stream (the arithmetic task's, in our trainer's order), completions of at
most 16 tokens, k3 KL with beta 0.04, token-mean loss (TRL's ``dapo``), lr 3e-5, fp32, the same CPU threads.
The ``long`` variant puts a 402-character system prompt in front of every prompt (~480 tokens with the chat
template) and allows 32 completion tokens: there, what a trainer does once per prompt instead of once per completion matters most.
Each trainer runs in its own process under ``/usr/bin/time -v`` (peak RSS); TRL runs in its own virtual
environment under the work directory, built on first use (never a dependency of this project), with the CPU
torch wheel installed first so pip never resolves a CUDA one. The first ``--skip`` steps are warm-up.

    python benchmarks/vs_trl.py [--steps 12] [--skip 2] [--threads 2] [--variants short long]

Writes benchmarks/results/vs_trl.json and vs_trl.png; the machine's load (``uptime``) goes in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from reasoner.config import load_config
from reasoner.models import build_tiny_model, count_parameters, load_policy, load_tokenizer
from reasoner.tasks import get_task
from reasoner.train.stream import prompt_renderer, stream_slice

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {"step_time": 0.5, "step_time_long": 0.35, "peak_rss": 0.8, "generation_tokens_per_s": 2.0}
LONG_SYSTEM = (
    "You are a careful calculator. Read the expression, work it out step by step from left to right while "
    "respecting the usual order of operations: parentheses first, then multiplication and division, then "
    "addition and subtraction. Keep every intermediate number exact, check the arithmetic once more before "
    "you answer, and finish with a line of the form #### N where N is the final value. Do not add words."
)
VARIANTS = {
    "short": {"max_new_tokens": 16, "system": None},
    "long": {"max_new_tokens": 32, "system": LONG_SYSTEM},
}


def our_overrides(args, variant: str, model: Path, out: Path) -> list[str]:
    v = VARIANTS[variant]
    shape = [f"model.path={model}", "sft.steps=0", f"train.steps={args.steps}", "train.prompts_per_step=8",
             "rollout.n=8", f"rollout.max_new_tokens={v['max_new_tokens']}", "rollout.temperature=1.0",
             "rollout.top_p=1.0", "algo.name=grpo", "algo.beta=0.04", "algo.kl_estimator=k3",
             "algo.loss_agg=token-mean", "optim.lr=3e-5", "optim.schedule=constant", "model.dtype=float32",
             f"train.cpu_threads={args.threads}", "train.micro_batch_size=64", "train.eval_every=0",
             "train.save_every=0", "train.tensorboard=false", "task.eval_size=8", f"train.output_dir={out}"]  # fmt: skip
    if v["system"]:
        shape += ["task.chat_template=true", f"task.system_prompt={json.dumps(v['system'])}"]
    return shape


def prompt_stream(overrides: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """The prompts (rendered as our trainer renders them) and gold answers of every step, in our trainer's order."""
    cfg = load_config(None, overrides)
    tok = load_tokenizer(cfg.model.path)
    render = prompt_renderer(tok, cfg)
    task = get_task(cfg.task.name)
    data = task.load(cfg.task.train, cfg.task.train_split, cfg.task.train_size, cfg.train.seed)
    size = cfg.train.prompts_per_step
    steps = [stream_slice(data, step * size, size, cfg.train.seed) for step in range(cfg.train.steps)]
    return [[render(e) for e in s] for s in steps], [[e.gold for e in s] for s in steps]


def trl_python(work: Path, version: str) -> Path:
    """The TRL virtual environment's python, built on first use: CPU torch (this project's version) first, then
    TRL and this project's transformers version, so both sides run the same model code."""
    venv = work / "venv"
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import trl, sys; sys.exit(trl.__version__ != {version!r})"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    import transformers

    print(
        f"[vs_trl] building TRL {version}'s virtual environment in {venv} (a few minutes, once)", flush=True
    )
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}"], check=True)
    subprocess.run([*pip, f"trl=={version}", f"transformers=={transformers.__version__}"], check=True)
    return python


def measured(cmd: list[str], env: dict) -> float:
    """Run ``cmd`` under ``/usr/bin/time -v``; its peak RSS in MB. A failure shows the process's own output."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"[vs_trl] {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}"
                         f"\n{proc.stderr[-6000:]}")  # fmt: skip
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024


def ours(spec_path: str) -> None:
    """Our side, in its own process: train on the spec's config, then write per-step times from metrics.jsonl."""
    from reasoner.train.trainer import train

    spec = json.loads(Path(spec_path).read_text())
    cfg = load_config(None, spec["overrides"])
    train(cfg, progress=False)
    rows = [
        json.loads(line) for line in (Path(cfg.train.output_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    rows = [r for r in rows if "time/generate" in r]
    step = [r["time/generate"] + r["time/score"] + r["time/update"] for r in rows]
    Path(spec["ours_out"]).write_text(json.dumps({
        "step_seconds": step, "generate_seconds": [r["time/generate"] for r in rows],
        "generated_tokens": [round(r["tokens_per_s"] * s) for r, s in zip(rows, step, strict=True)],
    }))  # fmt: skip


def summarise(side: dict, skip: int, peak_mb: float) -> dict:
    gen_s, tokens = sum(side["generate_seconds"][skip:]), sum(side["generated_tokens"][skip:])
    return {"median_step_s": statistics.median(side["step_seconds"][skip:]), "generation_tokens_per_s": tokens / gen_s,
            "peak_rss_mb": peak_mb, "steps": side["step_seconds"]}  # fmt: skip


def run_variant(args, variant: str, model: Path, python: Path, work: Path) -> dict:
    out = work / variant
    out.mkdir(parents=True, exist_ok=True)
    overrides = our_overrides(args, variant, model, out / "ours")
    prompts, golds = prompt_stream(overrides)
    spec = {"model": str(model), "prompts": prompts, "golds": golds, "n": 8, "threads": args.threads,
            "max_new_tokens": VARIANTS[variant]["max_new_tokens"], "beta": 0.04, "lr": 3e-5,
            "trl_dir": str(out / "trl"), "trl_out": str(out / "trl.json"), "ours_out": str(out / "ours.json"),
            "overrides": overrides}  # fmt: skip
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec))
    threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    trl_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | threads
    ours_env = os.environ | threads | {"PYTHONPATH": str(ROOT)}
    print(f"[vs_trl] {variant}: TRL GRPOTrainer, {args.steps} steps", flush=True)
    trl_peak = measured([str(python), str(ROOT / "benchmarks" / "vs_trl_trl.py"), str(spec_path)], trl_env)
    print(f"[vs_trl] {variant}: reasoner, {args.steps} steps", flush=True)
    ours_peak = measured(
        [sys.executable, str(Path(__file__).resolve()), "--side-ours", str(spec_path)], ours_env
    )
    trl = summarise(json.loads((out / "trl.json").read_text()), args.skip, trl_peak)
    mine = summarise(json.loads((out / "ours.json").read_text()), args.skip, ours_peak)
    lengths = [len(load_tokenizer(str(model))(p, add_special_tokens=False)["input_ids"]) for p in prompts[0]]
    return {
        "prompt_tokens_mean": statistics.mean(lengths), "max_new_tokens": VARIANTS[variant]["max_new_tokens"],
        "trl": trl, "reasoner": mine,
        "ratios": {"step_time": mine["median_step_s"] / trl["median_step_s"],
                   "peak_rss": mine["peak_rss_mb"] / trl["peak_rss_mb"],
                   "generation_tokens_per_s": mine["generation_tokens_per_s"] / trl["generation_tokens_per_s"]},
    }  # fmt: skip


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["step_time", "peak_rss", "generation_tokens_per_s"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(result["variants"])
    for i, (variant, r) in enumerate(result["variants"].items()):
        xs = [j + i * width for j in range(len(names))]
        bars = ax.bar(xs, [r["ratios"][k] for k in names], width, label=f"{variant} ({r['prompt_tokens_mean']:.0f}"
                      f"-token prompts, {r['max_new_tokens']} new)")  # fmt: skip
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks([j + width * (len(result["variants"]) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(["median step time", "peak RSS", "generation tokens/s"])
    ax.set_ylabel("reasoner / TRL")
    ax.set_title(f"reasoner vs TRL {result['trl_version']} GRPOTrainer (CPU, {result['threads']} threads)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the medians")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--work", default="runs/vs_trl", help="TRL's venv, the model and both runs' outputs")
    ap.add_argument("--trl-version", default="1.16.0")
    ap.add_argument("--out", default="vs_trl", help="results name: benchmarks/results/OUT.json and OUT.png")
    ap.add_argument("--side-ours", metavar="SPEC", help=argparse.SUPPRESS)  # the child process of our side
    args = ap.parse_args()
    if args.side_ours:
        return ours(args.side_ours)
    if args.steps <= args.skip:
        raise SystemExit(f"--steps ({args.steps}) must be larger than --skip ({args.skip})")
    work = Path(args.work).resolve()
    python = trl_python(work, args.trl_version)
    model = work / "tiny-model"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    variants = {v: run_variant(args, v, model, python, work) for v in args.variants}
    result = {
        "trl_version": args.trl_version, "threads": args.threads, "steps": args.steps, "skip": args.skip,
        "model_parameters": count_parameters(load_policy(str(model), "float32", torch.device("cpu"))),
        "batch": "8 prompts x 8 completions, k3 KL beta 0.04, token-mean loss, lr 3e-5, fp32",
        "uptime_before": load_before,
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "cpu_count": os.cpu_count(), "targets": TARGETS, "variants": variants,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / f"{args.out}.png")
    print("| variant | step s (ours / TRL) | step ratio | peak RSS MB (ours / TRL) | RSS ratio "
          "| gen tokens/s (ours / TRL) | gen ratio |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for name, r in variants.items():
        a, b, q = r["reasoner"], r["trl"], r["ratios"]
        print(f"| {name} | {a['median_step_s']:.3f} / {b['median_step_s']:.3f} | {q['step_time']:.2f} | "
              f"{a['peak_rss_mb']:.0f} / {b['peak_rss_mb']:.0f} | {q['peak_rss']:.2f} | "
              f"{a['generation_tokens_per_s']:.0f} / {b['generation_tokens_per_s']:.0f} | "
              f"{q['generation_tokens_per_s']:.2f} |")  # fmt: skip
    print(f"load: before {load_before!r}; after {result['uptime_after']!r}")


if __name__ == "__main__":
    main()
