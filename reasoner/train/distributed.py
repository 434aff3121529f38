"""Multi-process training under ``torchrun``: process group from the environment, DDP, prompt shards, metrics.

One process per GPU (or, on CPU, per core group with the gloo backend). Every rank runs the same loop:

- generation is per rank: each rank renders its own ``shard`` of the step's prompts and generates with its
  own engine (HF: the local policy module; vLLM: one engine per rank, see ``reasoner/rollout/vllm.py``);
- the update is data-parallel: the policy is wrapped in DDP (``wrap_ddp``), whose backward averages the
  gradients over ranks, so identical optimizers keep identical parameters on every rank; PPO's critic is
  wrapped the same way (``reasoner/train/estimators/ppo.py``), and batch-wide statistics such as its advantage whitening are
  summed over ranks (``all_reduce_sum``), so 2 ranks with B samples each take the step 1 rank takes with 2B;
- metrics are averaged over ranks (``all_reduce_mean``); rank 0 alone writes logs, checkpoints and results.

Two rules keep DDP from hanging: every rank gets the same number of prompts (``shard`` checks it), and every
rank runs the same number of backward passes (never skip ``backward()`` on a rank whose micro-batch happens to
be fully masked; a zero loss is fine).

FSDP instead of DDP (models whose optimizer state does not fit one GPU): ``wrap_fsdp`` shards the policy with
FSDP2 (``torch.distributed.fsdp.fully_shard`` on each decoder layer, then the root) before the optimizer is
built. Parameters become DTensor shards; ``reasoner.rollout.weights.named_weights`` gathers each with
``full_tensor()`` (a collective: every rank pushes weights together) before they go into the rollout engine.
Every FSDP forward is a collective too, so per-rank generation must not run the sharded module: use the vLLM
engine (its own full copy of the weights). Both wrappers are tested with 2 processes on CPU (gloo):
``tests/train/test_distributed.py``.

Launch: ``torchrun --nproc_per_node 8 -m reasoner train --config ...``. Without torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) every helper is a no-op for a
single process.

>>> single = DistInfo()
>>> single.enabled, single.is_main, shard(["a", "b", "c"], single.rank, single.world_size)
(False, True, ['a', 'b', 'c'])
>>> all_reduce_mean({"reward": 0.5}, single)
{'reward': 0.5}
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

T = TypeVar("T")

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``; ``backend`` is None for a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.backend is not None and self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment; a single process without it.

    ``backend`` defaults to ``nccl`` when CUDA is available and ``gloo`` otherwise. On CUDA the rank's
    device is made current (``cuda:LOCAL_RANK``) before the group is created. Idempotent: an existing
    default group is reused.
    """
    env = os.environ
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return DistInfo()
    missing = [k for k in _ENV if k not in env and k != "LOCAL_RANK"]
    if missing:
        raise RuntimeError(
            f"partial torchrun environment: {', '.join(missing)} not set (have {', '.join(k for k in _ENV if k in env)}); "
            "launch with `torchrun --nproc_per_node N ...` or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"
        )
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", rank))
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} is outside WORLD_SIZE={world}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def destroy(info: DistInfo) -> None:
    if info.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP / DataParallel / ``torch.compile`` wrappers (itself when unwrapped)."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(
            getattr(model, "_orig_mod", None), torch.nn.Module
        ):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def wrap_ddp(model: torch.nn.Module, info: DistInfo, **ddp_kwargs: Any) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when running on several ranks; ``model`` itself otherwise.

    DDP broadcasts rank 0's parameters at construction, so ranks start identical even if they loaded
    different weights. Give the optimizer ``model.parameters()`` of either object: they are the same tensors.
    """
    if not info.enabled:
        return model
    device_ids = [info.local_rank] if info.backend == "nccl" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


def wrap_fsdp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``model`` sharded with FSDP2 (each decoder layer, then the root) on several ranks; unchanged otherwise.

    Parameters become DTensor shards, in place: build the optimizer afterwards. Every forward all-gathers, so
    every rank must run the same forwards: fine for ``reasoner.train.update.update`` on even shards, not for
    HF ``generate`` on different prompts (use the vLLM engine, which gets full weights via
    ``reasoner.rollout.weights.named_weights``).
    """
    if not info.enabled:
        return model
    from torch.distributed.fsdp import fully_shard

    for layer in _decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    return model


def _decoder_layers(model: torch.nn.Module) -> Sequence[torch.nn.Module]:
    """The decoder layers of a Hugging Face ``*ForCausalLM`` (``model.layers``), of a bare ``AutoModel``
    (``layers``) or of a module holding one as ``backbone`` (PPO's critic); empty when there are none."""
    for inner in (getattr(model, "model", None), getattr(model, "backbone", None), model):
        layers = getattr(inner, "layers", None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    return []


def shard(items: Sequence[T], rank: int, world_size: int, *, even: bool = True) -> list[T]:
    """Rank ``rank``'s contiguous block of ``items``.

    ``even=True`` (training prompts) requires ``len(items) % world_size == 0``: under DDP every rank must run
    the same number of micro-batches. ``even=False`` (evaluation) spreads a remainder over the first ranks.

    >>> shard(list(range(6)), 1, 3)
    [2, 3]
    >>> shard(list(range(5)), 0, 2, even=False), shard(list(range(5)), 1, 2, even=False)
    ([0, 1, 2], [3, 4])
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    n = len(items)
    if even and n % world_size:
        raise ValueError(
            f"{n} items do not split evenly over {world_size} ranks; make train.prompts_per_step a multiple of "
            f"the number of processes ({world_size}) so every rank runs the same number of backward passes"
        )
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (rank < extra)])


def all_reduce_mean(
    metrics: dict[str, float], info: DistInfo, weight: float = 1.0, sums: Collection[str] = ()
) -> dict[str, float]:
    """Each metric averaged over ranks, weighted by ``weight`` (e.g. the rank's number of examples); the keys
    in ``sums`` (counts: examples, samples, tokens per second) are added up instead. One collective.

    Every rank must call it with the same keys; a mismatch raises instead of hanging the collective.
    """
    if not info.enabled:
        return dict(metrics)
    keys = sorted(metrics)
    gathered: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, keys)
    if any(k != keys for k in gathered):
        sets = [set(k) for k in gathered]
        differ = sorted(set.union(*sets) - set.intersection(*sets))
        raise ValueError(
            f"ranks logged different metric keys: {differ}; every rank must report the same metrics"
        )
    device = info.device if info.backend == "nccl" else torch.device("cpu")
    local = [float(metrics[k]) * (1.0 if k in sums else weight) for k in keys] + [float(weight)]
    values = torch.tensor(local, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(values)  # SUM
    total = values[-1].item()
    if total == 0 and any(k not in sums for k in keys):
        raise ValueError("all_reduce_mean: the weights sum to 0 over all ranks")
    return {k: values[i].item() / (1.0 if k in sums else total) for i, k in enumerate(keys)}


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``tensor`` summed over ranks (a new tensor; ``tensor`` itself is left alone). One collective; every
    rank must call it with the same shape. A single process gets a copy back.

    >>> all_reduce_sum(torch.tensor([1.0, 2.0]), DistInfo()).tolist()
    [1.0, 2.0]
    """
    out = tensor.detach().clone()
    if info.enabled:
        torch.distributed.all_reduce(out)  # SUM
    return out


def broadcast_object(obj: T, info: DistInfo, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (e.g. a path that rank 0 alone computed)."""
    if not info.enabled:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        torch.distributed.barrier()


def print0(info: DistInfo, *args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only."""
    if info.is_main:
        print(*args, **kwargs)


class NullLogger:
    """Stands in for ``reasoner.train.metrics.MetricsLogger`` on ranks other than 0: logs nothing."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass
