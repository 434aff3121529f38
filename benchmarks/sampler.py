"""Rollout tokens/s of the fast sampler against transformers' ``generate``, on CPU or GPU, as ratios.

One GRPO-shaped batch (8 prompts x 8 samples at temperature 1) with short prompts (the arithmetic task's, ~55
tokens, 16 new) and long ones (~400 tokens, 32 new) goes through the hf engine's four decode paths, alternating
for ``--repeats`` rounds after a warm-up each: ``generate`` (the reference), ``fast`` through the model's forward
with each prompt's cache copied n-fold (``fast-copied``) or read once for its n samples (``fast-shared``), and
``fast`` with reasoner.rollout.lean's decode step (``fast-lean``, the default for the families it knows). On a GPU (``--gpu``)
the model is a randomly initialised one of Qwen2.5-0.5B's shape in bf16 and the batch is 32 prompts x 8.

    python benchmarks/sampler.py [--gpu] [--repeats 3]

Writes benchmarks/results/sampler_{cpu,gpu}.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from functools import partial
from pathlib import Path

import torch

from reasoner.models import build_tiny_model, load_policy, load_tokenizer
from reasoner.rollout import SamplingParams
from reasoner.rollout.hf import HFEngine
from reasoner.rollout.sampler import prefill_once_sample
from reasoner.tasks import get_task

RESULTS = Path(__file__).parent / "results"
QWEN_05B = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096)  # fmt: skip


def decode_path(engine: HFEngine, path: str):
    """A function (enc, params, generator) -> completions that runs one of the four paths."""
    if path == "generate":
        return partial(HFEngine._decode, HFEngine(engine.model, engine.tokenizer, sampler="generate"))
    tok = engine.tokenizer

    def run(enc, params, generator):
        return prefill_once_sample(
            engine.model, enc["input_ids"], enc["attention_mask"], n=params.n, max_new_tokens=params.max_new_tokens,
            temperature=params.temperature, top_p=params.top_p, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, generator=generator, share_prefix=path != "fast-copied",
            lean=path == "fast-lean",
        )  # fmt: skip

    return run


def timed(run, enc, params, seed: int, device: torch.device, eos_id: int) -> tuple[float, int]:
    """Seconds and generated tokens (up to and including each row's EOS) of one batch."""
    generator = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    ids = run(enc, params, generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    eos = ids == eos_id
    return seconds, int(torch.where(eos.any(1), eos.int().argmax(1) + 1, ids.shape[1]).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="runs/tiny-model")
    ap.add_argument("--out", default=None, help="results name (default sampler_cpu / sampler_gpu)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.gpu else "cpu")
    model_dir = Path(args.model)
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir)
    tok = load_tokenizer(str(model_dir))
    if args.gpu:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(0)
        config = Qwen2Config(**{**QWEN_05B, "vocab_size": len(tok)}, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, tie_word_embeddings=True)  # fmt: skip
        model = Qwen2ForCausalLM(config).to(device, torch.bfloat16).eval()
    else:
        model = load_policy(str(model_dir), "float32", device).eval()
    engine = HFEngine(model, tok)
    prompts_n = 32 if args.gpu else 8
    short = [e.prompt for e in get_task("arithmetic").load(None, "train", prompts_n, 0)]
    shapes = {"short": (short, 16), "long": ([(p * 20)[-400:] for p in short], 32)}
    paths = ["generate", "fast-copied", "fast-shared", "fast-lean"]
    result = {"device": torch.cuda.get_device_name() if args.gpu else f"cpu, {args.threads} threads",
              "model_parameters": sum(p.numel() for p in model.parameters()), "shapes": {},
              "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}  # fmt: skip
    for name, (prompts, new) in shapes.items():
        params = SamplingParams(n=8, temperature=1.0, max_new_tokens=new)
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        runs = {p: decode_path(engine, p) for p in paths}
        times: dict[str, list[tuple[float, int]]] = {p: [] for p in paths}
        with torch.no_grad():
            for p in paths:
                timed(runs[p], enc, params, 0, device, tok.eos_token_id)  # warm-up
            for rep in range(args.repeats):
                for p in paths:
                    times[p].append(timed(runs[p], enc, params, rep + 1, device, tok.eos_token_id))
        tps = {p: statistics.median(t / s for s, t in v) for p, v in times.items()}
        result["shapes"][name] = {
            "prompts": len(prompts), "n": 8, "prompt_tokens": enc["input_ids"].shape[1], "max_new_tokens": new,
            "tokens_per_s": tps, "fast_over_generate": tps["fast-lean"] / tps["generate"],
            "shared_over_generate": tps["fast-shared"] / tps["generate"],
            "copied_over_generate": tps["fast-copied"] / tps["generate"],
        }  # fmt: skip
        print(f"{name}: " + ", ".join(f"{p} {v:.0f} tok/s" for p, v in tps.items())
              + f"; fast (lean) / generate x{tps['fast-lean'] / tps['generate']:.2f}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out or f'sampler_{device.type}'}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
