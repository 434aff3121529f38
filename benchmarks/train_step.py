"""Seconds and peak memory per GRPO step, split into generate / score / update.

CPU (default): the tiny offline model on the arithmetic task. With ``--gpu`` (a CUDA machine): a randomly
initialised model of Qwen2.5-0.5B's shape in bf16, reporting tokens/s and the update's model FLOPs utilisation.
Baseline in the same run: the update plus the separate old-log-prob forward pass that other trainers take
before every update, so the on-policy fast path is measured as a ratio, not as an absolute time.

``--layouts`` times the update phase alone (policy forward/backward, reference forward, optimizer step) in each
forward layout of reasoner/train/layout.py, back to back in one process on the same synthetic rollouts: padded (the
plain path), packed, shared-prefix, and both. Shapes: ``issue`` (8 prompts x 8 completions, prompts ~60 tokens,
completions <= 16, some EOS-ended, some truncated, some one token long), ``long`` (prompts ~400, completions
<= 32) and ``mixed`` (prompts 20-200, completions <= 64: lengths that vary, where packing has padding to remove).
Results of the shapes run are merged into benchmarks/results/update_layouts_{cpu,gpu}.json.

    python benchmarks/train_step.py [--steps 5] [--gpu]
    python benchmarks/train_step.py --layouts [--steps 7] [--shape issue long mixed] [--memory] [--gpu]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from reasoner.config import load_config
from reasoner.models import build_tiny_model, default_device, load_policy, load_tokenizer
from reasoner.rewards import get_reward
from reasoner.rollout import Rollout, SamplingParams, make_engine
from reasoner.tasks import get_task
from reasoner.train.batch import make_batch, sequence_logprobs
from reasoner.train.estimators import make_estimator
from reasoner.train.layout import pack_batch
from reasoner.train.optim import make_optimizer
from reasoner.train.stream import batch_for_step
from reasoner.train.trainer import score
from reasoner.train.update import Learner, Scored, update

RESULTS = Path(__file__).parent / "results"
QWEN_05B = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096)  # fmt: skip
H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s (H100/H200 SXM)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status")
    if status.exists():  # VmHWM starts afresh at exec; ru_maxrss keeps the parent's peak across fork + exec
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--model", default="runs/tiny-model")
    ap.add_argument("--layouts", action="store_true", help="time the update in each forward layout")
    ap.add_argument("--shape", nargs="+", default=["issue", "long", "mixed"], choices=sorted(SHAPES))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs)")
    ap.add_argument(
        "--memory", action="store_true", help="--layouts on CPU: peak RSS of each layout on its own"
    )
    ap.add_argument("--only", choices=sorted(LAYOUTS), help=argparse.SUPPRESS)  # one layout, for --memory
    args = ap.parse_args()
    if args.layouts:
        return layouts_main(args)
    device = default_device()
    if args.gpu:
        model_dir = _qwen_shape_model(args.model)
        overrides = ["rollout.max_new_tokens=256", "train.prompts_per_step=16", "train.micro_batch_size=16"]
    else:
        model_dir = Path(args.model)
        if not (model_dir / "config.json").exists():
            build_tiny_model(model_dir)
        overrides = ["rollout.max_new_tokens=32", "train.prompts_per_step=16", "train.micro_batch_size=128"]
    cfg = load_config(None, [f"model.path={model_dir}", *overrides])
    tok = load_tokenizer(str(model_dir))
    policy = load_policy(str(model_dir), "float32", device)
    reference = load_policy(str(model_dir), "auto", device).eval().requires_grad_(False)
    engine = make_engine(cfg.rollout, policy, tok, str(model_dir))
    task = get_task("arithmetic")
    data = task.load(None, "train", 2000, 0)
    reward = get_reward(task.reward)
    optimizer = make_optimizer(policy.parameters(), 1e-5)
    n_params = sum(p.numel() for p in policy.parameters())

    rows = []
    for step in range(args.steps + 1):  # step 0 warms up
        examples = batch_for_step(data, step, cfg.train.prompts_per_step, 0)
        sp = SamplingParams(
            n=cfg.rollout.n, temperature=1.0, max_new_tokens=cfg.rollout.max_new_tokens, seed=step
        )
        t0 = time.perf_counter()
        rollouts = engine.generate([e.prompt for e in examples], sp)
        t1 = time.perf_counter()
        rewards, scored, _ = score(reward, None, 0.0, rollouts, [examples[r.prompt_index] for r in rollouts])
        t2 = time.perf_counter()
        est = make_estimator(cfg, policy, str(model_dir), device)
        s = time.perf_counter()
        update(
            Learner(
                cfg=cfg,
                model=policy,
                reference=reference,
                estimator=est,
                optimizer=optimizer,
                pad_id=tok.pad_token_id,
                device=device,
            ),
            Scored(rollouts=rollouts, rewards=rewards, scored=scored),
        )
        _sync(device)
        t3 = time.perf_counter()
        with torch.no_grad():  # the pass the on-policy path saves: old log-probs before the update
            batch = make_batch(rollouts, tok.pad_token_id, device, cfg.train.shared_prefix, cfg.train.pack)
            for i in range(0, len(batch), cfg.train.micro_batch_size):
                sequence_logprobs(policy, batch.select(slice(i, i + cfg.train.micro_batch_size)), 1.0)
        _sync(device)
        timings = {"update": t3 - s, "update_with_old_logp_pass": time.perf_counter() - s}
        tokens = sum(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
        if step:
            rows.append({"generate_s": t1 - t0, "score_s": t2 - t1, **{f"{k}_s": v for k, v in timings.items()},
                         "tokens": tokens, "gen_tokens": sum(len(r.completion_ids) for r in rollouts)})  # fmt: skip

    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    result = {
        "device": _device_name(device),
        "model_parameters": n_params, "samples_per_step": cfg.train.prompts_per_step * cfg.rollout.n,
        "median": med, "peak_memory_mb": peak_mb(device),
        "generate_tokens_per_s": med["gen_tokens"] / med["generate_s"],
        "update_tokens_per_s": med["tokens"] / med["update_s"],
        "update_speedup_vs_old_logp_pass": med["update_with_old_logp_pass_s"] / med["update_s"],
    }  # fmt: skip
    if (
        device.type == "cuda"
    ):  # forward + backward = 6 FLOPs per parameter per token (plus the reference forward: 2)
        result["update_mfu"] = 8 * n_params * med["tokens"] / med["update_s"] / H200_BF16_PEAK
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"train_step_{'gpu' if device.type == 'cuda' else 'cpu'}.json"
    out.write_text(json.dumps(result, indent=2))
    print("| phase | median s/step |\n|---|---|")
    for k in ("generate_s", "score_s", "update_s", "update_with_old_logp_pass_s"):
        print(f"| {k[:-2]} | {med[k]:.3f} |")
    print(
        f"peak memory {result['peak_memory_mb']:.0f} MB; on-policy update speed-up x{result['update_speedup_vs_old_logp_pass']:.2f}"
    )
    print(json.dumps(result))


# (prompts, completions per prompt, prompt length range, max completion tokens)
SHAPES = {"issue": (8, 8, (50, 70), 16), "long": (8, 8, (380, 420), 32), "mixed": (8, 8, (20, 200), 64)}
GPU_SHAPES = {
    "issue": (16, 8, (50, 70), 256),
    "long": (16, 8, (380, 420), 256),
    "mixed": (16, 8, (20, 400), 256),
}
LAYOUTS = {
    "padded": (False, False),
    "packed": (False, True),
    "shared": (True, False),
    "shared+packed": (True, True),
}


def synthetic_rollouts(prompts, n, prompt_range, max_new, vocab, eos, rng) -> list[Rollout]:
    """Prompt-major groups with mixed prompt lengths; completions EOS-ended, truncated at ``max_new`` or empty."""
    out = []
    for i in range(prompts):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(*prompt_range))]
        for _ in range(n):
            kind = rng.random()
            if kind < 0.3:  # truncated
                out.append(
                    Rollout(i, prompt, [rng.randrange(3, vocab) for _ in range(max_new)], "", "length")
                )
            elif kind < 0.35:  # EOS at once: one token
                out.append(Rollout(i, prompt, [eos], "", "stop"))
            else:
                body = [rng.randrange(3, vocab) for _ in range(rng.randint(1, max_new - 1))]
                out.append(Rollout(i, prompt, body + [eos], "", "stop"))
    return out


def layouts_main(args) -> None:
    device = default_device()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    model_dir = _qwen_shape_model(args.model) if args.gpu else Path(args.model)
    if not args.gpu and not (model_dir / "config.json").exists():
        build_tiny_model(model_dir)
    shapes = GPU_SHAPES if args.gpu else SHAPES
    attn = "sdpa"
    policy = load_policy(str(model_dir), "float32", device, attn)
    reference = load_policy(str(model_dir), "bfloat16" if args.gpu else "float32", device, attn)
    reference.eval().requires_grad_(False)
    optimizer = make_optimizer(policy.parameters(), 3e-5)
    tok = load_tokenizer(str(model_dir))
    vocab = policy.config.vocab_size
    n_params = sum(p.numel() for p in policy.parameters())
    result = {"device": _device_name(device), "model_parameters": n_params, "steps": args.steps, "shapes": {}}
    for shape in args.shape:
        prompts, n, prompt_range, max_new = shapes[shape]
        micro = 4 * n if args.gpu else prompts * n  # GPU: 4 groups per micro-batch (padded activations)
        cfgs = {name: load_config(None, [f"model.path={model_dir}", f"rollout.n={n}", f"rollout.max_new_tokens={max_new}",
                                         "algo.beta=0.04", "algo.loss_agg=token-mean", "optim.lr=3e-5",
                                         f"train.micro_batch_size={micro}", f"train.shared_prefix={sp}",
                                         f"train.pack={pk}"]) for name, (sp, pk) in LAYOUTS.items()
                if args.only in (None, name)}  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in cfgs}
        tokens, peak = {}, {}
        rng = random.Random(0)
        for step in range(args.steps + 1):  # step 0 warms up
            rollouts = synthetic_rollouts(prompts, n, prompt_range, max_new, vocab, tok.eos_token_id, rng)
            rewards = torch.tensor([rng.random() for _ in rollouts])
            scored = torch.ones(len(rollouts), dtype=torch.bool)
            for name, cfg in cfgs.items():  # back to back on the same rollouts
                est = make_estimator(cfg, policy, str(model_dir), device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                _sync(device)
                t0 = time.perf_counter()
                update(
                    Learner(
                        cfg=cfg,
                        model=policy,
                        reference=reference,
                        estimator=est,
                        optimizer=optimizer,
                        pad_id=tok.pad_token_id,
                        device=device,
                    ),
                    Scored(rollouts=rollouts, rewards=rewards, scored=scored),
                )
                _sync(device)
                if step:
                    times[name].append(time.perf_counter() - t0)
                tokens[name] = _forward_tokens(rollouts, tok.pad_token_id, device, *LAYOUTS[name])
                peak[name] = peak_mb(device) if device.type == "cuda" else None
        med = {name: statistics.median(t) for name, t in times.items()}
        if args.only:  # a child of --memory: its peak RSS is the figure
            print(json.dumps({"update_s": med[args.only], "peak_rss_mb": peak_mb(device)}))
            continue
        real = sum(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
        row = {name: {"update_s": med[name], "speedup_vs_padded": med["padded"] / med[name],
                      "positions_in_forward": tokens[name][0], "tokens_in_forward": tokens[name][1],
                      "all_update_s": times[name]} for name in LAYOUTS}  # fmt: skip
        if args.memory and device.type == "cpu":  # RSS never goes down: one process per layout
            for name in LAYOUTS:
                row[name]["peak_rss_mb"] = _peak_rss_alone(args, shape, name)
        if device.type == "cuda":  # forward + backward 6, reference forward 2 FLOPs per parameter per token
            for name in LAYOUTS:
                # mfu: the tokens this layout computes (a shared prompt once); effective: the plain path's tokens
                row[name]["mfu"] = 8 * n_params * tokens[name][1] / med[name] / H200_BF16_PEAK
                row[name]["effective_mfu"] = 8 * n_params * real / med[name] / H200_BF16_PEAK
                row[name]["peak_memory_mb"] = peak[name]
        result["shapes"][shape] = {"prompts": prompts, "n": n, "prompt_len": prompt_range, "max_new_tokens": max_new,
                                   "real_tokens_last_step": real, "layouts": row}  # fmt: skip
        print(f"\n{shape}: {prompts} prompts x {n}, prompts {prompt_range[0]}-{prompt_range[1]} tokens, "
              f"completions <= {max_new}\n| layout | median update s | x padded | positions (tokens) in forward"
              f" | peak memory MB | MFU |\n|---|---|---|---|---|---|")  # fmt: skip
        for name in LAYOUTS:
            r = row[name]
            mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
            mem = r.get("peak_rss_mb", r.get("peak_memory_mb"))
            print(f"| {name} | {r['update_s']:.3f} | {r['speedup_vs_padded']:.2f} | {r['positions_in_forward']} "
                  f"({r['tokens_in_forward']}) | {'-' if mem is None else round(mem)} | {mfu} |")  # fmt: skip
    if args.only:
        return
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"update_layouts_{'gpu' if device.type == 'cuda' else 'cpu'}.json"
    if out.exists():  # keep the shapes this run did not measure
        result["shapes"] = json.loads(out.read_text()).get("shapes", {}) | result["shapes"]
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def _forward_tokens(rollouts, pad_id, device, shared_prefix, pack) -> tuple[int, int]:
    """(positions with padding, real tokens) that one forward over the whole batch computes in this layout."""
    batch = make_batch(rollouts, pad_id, device, shared_prefix, pack)
    if not (shared_prefix or pack):
        return batch.input_ids.numel(), int(batch.attention_mask.sum())
    layout = pack_batch(batch, shared_prefix, pack)
    return layout.input_ids.numel(), layout.tokens


def _peak_rss_alone(args, shape: str, name: str) -> float:
    """Peak RSS (MB) of a fresh process that loads the models and runs 2 updates in one layout."""
    cmd = [sys.executable, __file__, "--layouts", "--only", name, "--shape", shape, "--steps", "2",
           "--model", args.model, "--threads", str(args.threads)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu x{torch.get_num_threads()} threads"


def _qwen_shape_model(tokenizer_from: str) -> Path:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    model_dir = Path("runs/qwen-0.5b-shape")
    if not (model_dir / "config.json").exists():
        Qwen2ForCausalLM(Qwen2Config(**QWEN_05B, tie_word_embeddings=True)).save_pretrained(model_dir)
        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(
            model_dir
        )  # any tokenizer: ids are random
    return model_dir


if __name__ == "__main__":
    main()
