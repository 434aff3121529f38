"""Supervised warm start on (prompt, solution) pairs: the loss is on the solution tokens and EOS only.

Used by the offline defaults to turn the random tiny model into a weak but non-zero policy before RL,
and useful on its own (`reasoner sft`). The result is cached: a finished run whose settings match is reused.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from reasoner.config import Config, ConfigError
from reasoner.models import default_device, load_policy, load_tokenizer, set_cpu_threads
from reasoner.optim import make_optimizer, make_scheduler
from reasoner.tasks import get_task, load_examples
from reasoner.tasks.base import Example


def encode_pairs(tokenizer, examples: list[Example]) -> list[tuple[list[int], int]]:
    """Token ids of prompt + solution + EOS, and where the solution starts."""
    out = []
    for ex in examples:
        if ex.solution is None:
            raise ValueError(
                f"SFT needs reference solutions, but an example has none: {ex.prompt[:80]!r}; with "
                "task.name=dataset name the field that holds them (task.solution=FIELD), or set sft.steps=0"
            )
        p = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        s = tokenizer(ex.solution, add_special_tokens=False)["input_ids"]
        out.append((p + s + [tokenizer.eos_token_id], len(p)))
    return out


def collate(
    batch: list[tuple[list[int], int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids [B, L], attention mask [B, L], labels [B, L] (-100 outside the solution)."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    for i, (row, start) in enumerate(batch):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, start : len(row)] = ids[i, start : len(row)]
    lengths = torch.tensor([len(row) for row, _ in batch])
    return ids, (torch.arange(width) < lengths[:, None]).long(), labels


def run_sft(cfg: Config, model_path: str, out_dir: str | Path, progress: bool = True) -> Path:
    """Fine-tune ``model_path`` on the task's reference solutions; save to ``out_dir`` and return it."""
    out = Path(out_dir)
    if get_task(cfg.task.name).from_fields and cfg.task.solution is None:
        raise ConfigError(
            "SFT trains on reference completions: name the field of your data that holds them "
            "(task.solution=FIELD)"
        )
    examples = load_examples(cfg.task, "train", cfg.train.seed)
    key = _cache_key(cfg, model_path, examples)
    done = out / "sft_done.json"
    if done.is_file() and json.loads(done.read_text()).get("key") == key:
        print(f"[sft] reusing {out} (same settings already trained)")
        return out

    sc = cfg.sft
    torch.manual_seed(cfg.train.seed)
    rng = random.Random(cfg.train.seed)
    device = default_device()
    set_cpu_threads(cfg.train.cpu_threads)
    tokenizer = load_tokenizer(model_path)
    model = load_policy(model_path, dtype="float32", device=device)
    model.train()
    if cfg.task.chat_template or any(ex.messages is not None for ex in examples):
        from dataclasses import replace

        from reasoner.trainer import prompt_renderer

        render = prompt_renderer(tokenizer, cfg)  # train on the text RL and the server show the policy
        examples = [replace(ex, prompt=render(ex)) for ex in examples]
    data = encode_pairs(tokenizer, examples)
    optimizer = make_optimizer(model.parameters(), sc.lr, sc.weight_decay)
    scheduler = make_scheduler(optimizer, sc.warmup_steps, sc.steps, sc.schedule)

    start, bar = time.time(), tqdm(range(sc.steps), desc="sft", disable=not progress, dynamic_ncols=True)
    for step in bar:
        ids, mask, labels = (
            t.to(device) for t in collate(rng.sample(data, sc.batch_size), tokenizer.pad_token_id)
        )
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), sc.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "sft_done.json").write_text(
        json.dumps({"key": key, "steps": sc.steps, "final_loss": loss.item(), "wall_s": time.time() - start})
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"[sft] {sc.steps} steps in {time.time() - start:.0f}s, final loss {loss.item():.3f} -> {out}")
    return out


def _cache_key(cfg: Config, model_path: str, examples: list[Example]) -> str:
    config_file = Path(model_path) / "config.json"
    model_id = config_file.read_text() if config_file.is_file() else model_path
    data = hashlib.sha256()  # the data itself, so that a changed task generator is never served a stale model
    for ex in examples:
        data.update(f"{ex.prompt}\0{ex.solution}\0".encode())
    blob = json.dumps(
        {
            "sft": asdict(cfg.sft),
            "task": asdict(cfg.task),
            "seed": cfg.train.seed,
            "model": model_id,
            "data": data.hexdigest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
