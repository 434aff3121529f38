"""TRL's side of benchmarks/vs_trl.py: GRPOTrainer on the run's prompt stream, timed per step.

Runs in the TRL virtual environment that vs_trl.py builds (it imports nothing from reasoner, which is not
installed there): ``VENV/bin/python benchmarks/vs_trl_trl.py SPEC.json``. SPEC holds the model directory, the
prompts of every step in order, their gold answers and the batch shape; the result (per-step seconds, generated
tokens and generation seconds) goes to ``SPEC["trl_out"]``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(spec["threads"])

    tok = AutoTokenizer.from_pretrained(spec["model"])
    probe = "12 + 7 = 19\n#### 19 <think>"
    if tok.decode(tok(probe, add_special_tokens=False)["input_ids"]) != probe:
        raise SystemExit(f"the tokenizer at {spec['model']} does not round-trip text: {type(tok).__name__}")
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    generation = {"seconds": [], "tokens": []}  # one entry per generate() call
    model.generate = timed_generate(model.generate, generation, tok.eos_token_id)

    prompts = [p for step in spec["prompts"] for p in step]
    golds = [g for step in spec["golds"] for g in step]
    data = Dataset.from_dict({"prompt": prompts, "gold": golds})
    n, per_step = spec["n"], len(spec["prompts"][0])
    config = GRPOConfig(
        output_dir=spec["trl_dir"], max_steps=len(spec["prompts"]), per_device_train_batch_size=per_step * n,
        num_generations=n, max_completion_length=spec["max_new_tokens"], temperature=1.0, top_p=1.0,
        beta=spec["beta"], loss_type="dapo", learning_rate=spec["lr"], lr_scheduler_type="constant",
        warmup_steps=0, max_grad_norm=1.0, num_iterations=1, scale_rewards="group", use_cpu=True, bf16=False,
        fp16=False, gradient_checkpointing=False, shuffle_dataset=False, logging_steps=1, save_strategy="no",
        report_to="none", seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    steps: list[float] = []
    trainer = GRPOTrainer(model=model, reward_funcs=exact_answer, args=config, train_dataset=data,
                          processing_class=tok, callbacks=[StepTimer(steps)])  # fmt: skip
    trainer.train()
    Path(spec["trl_out"]).write_text(json.dumps({
        "step_seconds": steps, "generate_seconds": generation["seconds"], "generated_tokens": generation["tokens"],
        "trl": __import__("trl").__version__, "transformers": __import__("transformers").__version__,
        "torch": torch.__version__, "tokenizer": type(tok).__name__,
    }))  # fmt: skip


def exact_answer(completions, gold, **_) -> list[float]:
    """1.0 when the completion's last number equals the gold answer (the arithmetic task's check, simplified)."""
    scores = []
    for text, want in zip(completions, gold, strict=True):
        numbers = re.findall(r"-?\d+(?:\.\d+)?", text)
        scores.append(float(bool(numbers) and numbers[-1] == want))
    return scores


def timed_generate(generate, record: dict, eos: int):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = generate(*args, **kwargs)
        record["seconds"].append(time.perf_counter() - start)
        completion = out[:, kwargs["input_ids"].shape[1] :]
        is_eos = completion == eos
        ends = is_eos.int().argmax(1) + 1  # tokens up to and including the first EOS
        lengths = ends.where(is_eos.any(1), completion.shape[1])
        record["tokens"].append(int(lengths.sum()))
        return out

    return wrapper


class StepTimer(TrainerCallback):
    """Wall-clock seconds of each optimizer step: generation, rewards, loss, backward and update."""

    def __init__(self, steps: list[float]):
        self.steps, self.start = steps, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(time.perf_counter() - self.start)


if __name__ == "__main__":
    main()
