"""Atomic checkpoints: model (save_pretrained), optimizer, scheduler, RNG and trainer state.

A checkpoint is written to ``step-N.tmp`` and renamed into place, then ``latest`` is replaced atomically,
so a run killed at any moment (SIGKILL included) leaves the previous checkpoint intact.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

KEEP = 2


def save_checkpoint(
    run_dir: Path, step: int, model, tokenizer, state: dict[str, Any], extra_models: dict | None = None
) -> Path:
    """``state`` holds picklable objects (optimizer/scheduler state dicts, counters); RNG state is added here."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "policy")
    tokenizer.save_pretrained(tmp / "policy")
    for name, extra in (extra_models or {}).items():
        save_extra(tmp, name, extra)
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"step": step, "rng": rng, **state}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_atomic(root / "latest", final.name)
    for old in sorted(p for p in root.glob("step-*") if not p.name.endswith(".tmp"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state


def save_extra(ckpt: Path, name: str, module) -> None:
    """``module``'s state without its frozen parameters (a LoRA critic's base weights: they never change and
    load again from the model they came from); a fully trained module is saved whole."""
    frozen = _frozen(module)
    torch.save({k: v for k, v in module.state_dict().items() if k not in frozen}, Path(ckpt) / f"{name}.pt")


def load_extra(ckpt: Path, name: str, module) -> None:
    state = torch.load(Path(ckpt) / f"{name}.pt", weights_only=False)
    missing, unexpected = module.load_state_dict(state, strict=False)
    lost = set(missing) - _frozen(module)
    if lost or unexpected:
        raise ValueError(f"{ckpt / name}.pt does not fit the {name} built for this run (missing: "
                         f"{sorted(lost)[:5]}, unexpected: {sorted(unexpected)[:5]}): were model.lora settings "
                         "changed since it was saved?")  # fmt: skip


def _frozen(module) -> set[str]:
    return {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    with open(tmp) as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    _write_atomic(Path(path), json.dumps(data, indent=2))


@contextmanager
def cache_lock(target: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock while building the cache ``target`` (a warm start, a converted model).

    A second run that wants the same cache waits here instead of wiping the first one's half-written files,
    and says who holds the lock; once it gets the lock it finds the finished cache and reuses it. The lock is
    ``flock`` on ``<target>.lock`` (released by the kernel if the holder dies, even by SIGKILL).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.with_name(target.name + ".lock")
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            print(
                f"[cache] waiting for {what} at {target}: {path} is held by {holder}; it is reused when done"
            )
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
