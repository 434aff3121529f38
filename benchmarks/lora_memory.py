"""Memory of full fine-tuning vs LoRA: measured on CPU for a mid-size model, computed from shapes for a 7B model.

    python benchmarks/lora_memory.py [--hidden 1024 --layers 8] [--r 16] [--out benchmarks/results/lora_memory.json]

Measured: one GRPO step of `reasoner train` (beta = 0.04, so a KL reference is needed) on a randomly initialised
Llama-shaped model built here, once with full fine-tuning (fp32 policy + grads + AdamW states + a second copy as
the reference) and once with ``model.lora.r`` (the frozen base + adapters; the reference is the base with the
adapters switched off), and once with LoRA but the reference loaded as a second model (``model.reference``
set): the difference to the plain LoRA run is what the adapters-off reference saves. Each run is its own
process; the figure is its peak resident set size. On CPU all keep the base in fp32 (``model.dtype=auto`` means
bf16 only on CUDA).

Computed: the same bookkeeping for Qwen2.5-7B-Instruct's shapes (``QWEN25_7B``), in bf16 on a GPU, with the
activations of the update at ``--micro-batch`` sequences of ``--seq-len`` tokens (gradient checkpointing on).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e9
# Qwen/Qwen2.5-7B-Instruct config.json
QWEN25_7B = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
             "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}  # fmt: skip


def shapes(c: dict) -> dict[str, int]:
    """Parameter counts of a Llama/Qwen2 decoder (Qwen2 has q/k/v biases) and of LoRA adapters per rank unit."""
    h, i, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    linear = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip
    per_layer = sum(a * b for a, b in linear.values()) + h + 2 * kv + 2 * h  # weights, q/k/v biases, 2 norms
    embed = c["vocab_size"] * h
    total = layers * per_layer + embed * (1 if c["tie_word_embeddings"] else 2) + h
    lora_per_rank = layers * sum(a + b for a, b in linear.values())  # A [r, in] + B [out, r], all-linear
    return {
        "params": total,
        "lora_params_per_rank": lora_per_rank,
        "kv_bytes_per_token_bf16": layers * 2 * kv * 2,
    }


def computed(c: dict, r: int, micro_batch: int, seq_len: int, completion: int) -> dict:
    s = shapes(c)
    n, a = s["params"], s["lora_params_per_rank"] * r
    h, i, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    tokens = micro_batch * seq_len
    # gradient checkpointing: every layer's input kept (bf16) + one layer recomputed (~10 h + 3 i per token)
    acts = layers * tokens * h * 2 + tokens * (10 * h + 3 * i) * 2
    # logits of the completion (bf16) and the fp32 copies the log-softmax / entropy make (~3)
    logits = micro_batch * (completion + 1) * vocab * (2 + 3 * 4)
    full = {"policy_fp32": 4 * n, "grads_fp32": 4 * n, "adamw_fp32": 8 * n, "reference_bf16": 2 * n}
    lora = {
        "base_bf16": 2 * n,
        "adapters_fp32": 4 * a,
        "grads_fp32": 4 * a,
        "adamw_fp32": 8 * a,
        "reference": 0,
    }
    out = {"params": n, "lora_params": a, "r": r, "activations_gb": round((acts + logits) / GB, 1),
           "kv_cache_kb_per_token": s["kv_bytes_per_token_bf16"] / 1e3}  # fmt: skip
    for name, parts in (("full", full), ("lora", lora)):
        out[name] = {k: round(v / GB, 2) for k, v in parts.items()} | {
            "total_gb": round(sum(parts.values()) / GB, 1)
        }
    return out


def _child(overrides: list[str], queue) -> None:
    from reasoner.config import load_config
    from reasoner.train.trainer import train

    train(load_config(None, overrides), progress=False)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB -> MiB


def measure(model_dir: str, out_dir: str, lora_r: int, extra: tuple[str, ...] = ()) -> float:
    overrides = [f"model.path={model_dir}", "task.name=arithmetic", "task.eval_size=2", "sft.steps=0",
                 "train.steps=1", "train.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=8",
                 "train.eval_every=0", "train.save_every=0", "train.tensorboard=false", "train.cpu_threads=1",
                 "algo.beta=0.04", f"model.lora.r={lora_r}", f"train.output_dir={out_dir}", *extra]  # fmt: skip
    ctx = mp.get_context("spawn")  # a fresh interpreter per run: its peak memory is its own
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(overrides, queue))
    proc.start()
    peak = queue.get()
    proc.join()
    return peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=700)  # GSM8K: ~190 prompt tokens (chat template) + 512
    p.add_argument("--completion", type=int, default=512)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lora_memory.json"))
    args = p.parse_args()

    from reasoner.models import build_tiny_model, count_parameters, load_policy

    result = {
        "computed_qwen2.5-7b": computed(QWEN25_7B, args.r, args.micro_batch, args.seq_len, args.completion)
    }
    with tempfile.TemporaryDirectory() as tmp:
        shape = {"hidden_size": args.hidden, "intermediate_size": args.hidden * 11 // 4,
                 "num_hidden_layers": args.layers, "num_attention_heads": 8}  # fmt: skip
        model_dir = build_tiny_model(Path(tmp) / "model", **shape)
        params = count_parameters(load_policy(str(model_dir), "float32"))
        measured = {"shape": shape, "params": params, "fp32_copy_mb": round(params * 4 / 2**20, 1)}
        # lora_loaded_reference: LoRA, but the reference loaded as a second model (model.reference set), which
        # is what the adapters-off reference avoids
        runs = (("full", 0, ()), ("lora_loaded_reference", args.r, (f"model.reference={model_dir}",)),
                ("lora", args.r, ()))  # fmt: skip
        for name, r, extra in runs:
            measured[f"{name}_peak_rss_mb"] = round(measure(str(model_dir), f"{tmp}/{name}", r, extra), 1)
            print(f"[lora_memory] {name}: peak RSS {measured[f'{name}_peak_rss_mb']} MiB", flush=True)
        measured["saved_mb"] = round(measured["full_peak_rss_mb"] - measured["lora_peak_rss_mb"], 1)
        measured["saved_by_adapters_off_reference_mb"] = round(
            measured["lora_loaded_reference_peak_rss_mb"] - measured["lora_peak_rss_mb"], 1
        )
        result["measured_cpu"] = measured
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
