"""Supervised warm start on (prompt, solution) pairs: the loss is on the solution tokens and EOS only.

Used by the offline defaults to turn the random tiny model into a weak but non-zero policy before RL,
and useful on its own (`reasoner sft`). The result is cached: a finished run whose settings match is reused.
The cache key holds what changes the trained model: the starting model, the training examples themselves, the
task fields that choose and render them, the seed and the optimisation settings; not the evaluation settings
(``task.test``, ``task.eval_size``, ``sft.eval_every``, ...), so changing those reuses the warm start.

``sft.eval_every`` > 0: every N steps and after the last, the loss on the reference solutions of the first
``sft.eval_size`` test examples (held out from training), on the progress bar and in ``metrics.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from reasoner.config import Config, ConfigError
from reasoner.models import load_policy, load_tokenizer
from reasoner.tasks import get_task, load_examples
from reasoner.tasks.base import Example
from reasoner.train.checkpoint import cache_lock
from reasoner.train.metrics import MetricsLogger
from reasoner.train.optim import make_optimizer, make_scheduler
from reasoner.train.run import start_run


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
    with cache_lock(out, "the SFT warm start"):
        done = out / "sft_done.json"
        if done.is_file() and json.loads(done.read_text()).get("key") == key:
            print(f"[sft] reusing {out} (same settings already trained)")
            return out
        return _train(cfg, model_path, examples, key, out, progress)


def _train(
    cfg: Config, model_path: str, examples: list[Example], key: str, out: Path, progress: bool
) -> Path:
    sc = cfg.sft
    device = start_run(cfg, None).device  # no run directory: the cache is written beside and renamed
    rng = random.Random(cfg.train.seed)
    tokenizer = load_tokenizer(model_path)
    model = load_policy(model_path, dtype="float32", device=device)
    model.train()
    render = _renderer(cfg, tokenizer, examples)
    data = encode_pairs(tokenizer, [render(ex) for ex in examples])
    held_out = encode_pairs(tokenizer, [render(ex) for ex in _held_out(cfg)]) if sc.eval_every else []
    optimizer = make_optimizer(model.parameters(), sc.lr, sc.weight_decay)
    scheduler = make_scheduler(optimizer, sc.warmup_steps, sc.steps, sc.schedule)

    tmp = out.with_name(out.name + ".tmp")  # everything is written here and renamed into place at the end
    shutil.rmtree(tmp, ignore_errors=True)
    log, evaluation = MetricsLogger(tmp, tensorboard=False), {}
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
        done, last = step + 1, step + 1 == sc.steps
        metrics = {}
        if sc.eval_every and (done % sc.eval_every == 0 or last):
            evaluation = {"eval/loss": held_out_loss(model, held_out, tokenizer.pad_token_id, sc.batch_size)}
            metrics |= evaluation
        if done % 20 == 0 or done == 1 or last or metrics:
            metrics = {"loss": loss.item(), "lr": scheduler.get_last_lr()[0]} | metrics
            log.log(done, metrics)
            bar.set_postfix({k.replace("/", "_"): f"{v:.3f}" for k, v in metrics.items() if k != "lr"})
    log.close()

    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    summary = {"key": key, "steps": sc.steps, "final_loss": loss.item(), "wall_s": time.time() - start}
    if evaluation:
        summary["eval_loss"] = evaluation["eval/loss"]
    (tmp / "sft_done.json").write_text(json.dumps(summary))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    held = f", held-out loss {evaluation['eval/loss']:.3f}" if evaluation else ""
    print(
        f"[sft] {sc.steps} steps in {time.time() - start:.0f}s, final loss {loss.item():.3f}{held} -> {out}"
    )
    return out


@torch.no_grad()
def held_out_loss(model, data: list[tuple[list[int], int]], pad_id: int, batch_size: int) -> float:
    """The training loss over ``data`` (``encode_pairs``): the mean over every solution token, not per batch."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    total, tokens = 0.0, 0
    try:
        for i in range(0, len(data), batch_size):
            ids, mask, labels = (t.to(device) for t in collate(data[i : i + batch_size], pad_id))
            count = int((labels[:, 1:] != -100).sum())  # the tokens the shifted loss averages over
            total += model(input_ids=ids, attention_mask=mask, labels=labels).loss.item() * count
            tokens += count
    finally:
        model.train(was_training)
    return total / max(tokens, 1)


def _renderer(cfg: Config, tokenizer, examples: list[Example]):
    """Examples as the policy sees them in RL and in the server (the chat template when ``task.chat_template``
    or when the rows' prompts are chat messages)."""
    if not (cfg.task.chat_template or any(ex.messages is not None for ex in examples)):
        return lambda ex: ex
    from reasoner.train.stream import prompt_renderer

    render = prompt_renderer(tokenizer, cfg)
    return lambda ex: replace(ex, prompt=render(ex))


def _held_out(cfg: Config) -> list[Example]:
    """The first ``sft.eval_size`` test examples that have a reference solution (the loss needs one)."""
    examples = load_examples(replace(cfg.task, eval_size=cfg.sft.eval_size), "test", cfg.train.seed)
    with_solution = [ex for ex in examples if ex.solution is not None]
    if not with_solution:
        raise ConfigError(
            f"sft.eval_every={cfg.sft.eval_every} needs test examples with reference solutions, but the "
            f"{cfg.task.name} test split ({cfg.task.test or 'default'}, {cfg.task.test_split}) has none; "
            "point task.test at data with solutions or set sft.eval_every=0"
        )
    return with_solution


# Settings that cannot change the trained model: where it is written, the evaluation (held-out data, its size,
# how often; evaluation draws no random numbers) and RL-only rewards. Everything else is in the key, so a new
# setting is assumed to matter until it is listed here.
_NOT_IN_KEY = {
    "sft": ("output_dir", "eval_every", "eval_size"),
    "task": ("test", "test_split", "eval_size", "format_reward", "rewards", "reward", "reward_workers"),
}


def _cache_key(cfg: Config, model_path: str, examples: list[Example]) -> str:
    config_file = Path(model_path) / "config.json"
    model_id = config_file.read_text() if config_file.is_file() else model_path
    data = hashlib.sha256()  # the data itself, so that a changed task generator is never served a stale model
    for ex in examples:
        data.update(f"{ex.prompt}\0{ex.solution}\0".encode())
    blob = json.dumps(
        {
            "sft": {k: v for k, v in asdict(cfg.sft).items() if k not in _NOT_IN_KEY["sft"]},
            "task": {k: v for k, v in asdict(cfg.task).items() if k not in _NOT_IN_KEY["task"]},
            "seed": cfg.train.seed,
            "model": model_id,
            "data": data.hexdigest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
