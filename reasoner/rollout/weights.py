"""Weight-sync bookkeeping between the trainer's policy and a rollout engine: names, buckets, versions.

Pure and CPU-testable. The vLLM engine (``vllm.py``) and its worker extension (``vllm_worker.py``) only move
the bytes laid out here, so the layout is tested without a GPU.

A push sends the policy's parameters in *buckets*: one flat ``uint8`` buffer holds several tensors at
256-byte-aligned offsets (aligned so every dtype can be viewed in place), described by ``Slot`` records. The
sender packs tensors into the buffer, the receiver views the same bytes back as tensors. The staging memory is
one bucket (``bucket_bytes``, or the largest tensor if that is bigger) whatever the model size.

>>> buckets = plan_buckets([("a", "float32", (3,)), ("b", "bfloat16", (2, 2))], bucket_bytes=1024)
>>> [(s.name, s.offset, s.nbytes) for s in buckets[0]]
[('a', 0, 12), ('b', 256, 8)]
>>> buffer = torch.empty(bucket_nbytes(buckets[0]), dtype=torch.uint8)
>>> pack_bucket(buckets[0], [torch.tensor([1.0, 2.0, 3.0]), torch.ones(2, 2)], buffer)
>>> [(name, t.tolist()) for name, t in unpack_bucket(buffer, buckets[0])]
[('a', [1.0, 2.0, 3.0]), ('b', [[1.0, 1.0], [1.0, 1.0]])]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from reasoner.train.distributed import unwrap

ALIGN = 256  # bytes; a multiple of every dtype's size, and what CUDA kernels expect of a tensor's start
# Module-path components that wrappers insert into parameter names (FSDP1, activation checkpointing,
# torch.compile). A Hugging Face checkpoint, and so vLLM's ``load_weights``, has none of them.
_WRAPPER_PARTS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})


def checkpoint_name(name: str) -> str:
    """A parameter name as a Hugging Face checkpoint spells it, which is what vLLM's ``load_weights`` maps.

    >>> checkpoint_name("model._fsdp_wrapped_module.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight")
    'model.layers.0.mlp.up_proj.weight'
    """
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def named_weights(model: torch.nn.Module, only_trainable: bool = False) -> list[tuple[str, torch.Tensor]]:
    """``(checkpoint name, tensor)`` for the parameters of ``model``, ready to push into an engine.

    DDP / compile wrappers are removed; tied parameters (embedding = LM head) appear once, under their first
    name, as ``named_parameters`` lists them; FSDP2 DTensor shards are gathered with ``full_tensor()`` (a
    collective: all ranks must call this together). ``only_trainable`` keeps parameters with
    ``requires_grad``: the only ones an optimizer step can change.

    A LoRA policy (``peft``) is listed as its merged model: each adapted layer's weight is a
    ``reasoner.train.lora.MergedWeight``, merged out of place when ``materialize`` is called on it (one push bucket
    at a time), and ``only_trainable`` keeps the adapted layers' weights. See reasoner/train/lora.py.
    """
    from reasoner.train.lora import is_lora, named_merged_weights

    if is_lora(unwrap(model)):
        return named_merged_weights(unwrap(model), only_trainable)
    out = []
    for name, param in unwrap(model).named_parameters():
        if only_trainable and not param.requires_grad:
            continue
        tensor = param.detach()
        if hasattr(tensor, "full_tensor"):  # torch.distributed.tensor.DTensor (FSDP2)
            tensor = tensor.full_tensor()
        out.append((checkpoint_name(name), tensor))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"two parameters map to the same checkpoint name: {dup[:5]}")
    return out


@dataclass(frozen=True)
class Slot:
    """Where one tensor lives in a bucket buffer. Plain fields only, so it crosses process boundaries as data."""

    name: str
    dtype: str  # torch dtype name, e.g. "bfloat16"
    shape: tuple[int, ...]
    offset: int  # bytes from the start of the buffer; a multiple of ALIGN
    nbytes: int

    def to_dict(self) -> dict:
        return asdict(self) | {"shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> Slot:
        return cls(d["name"], d["dtype"], tuple(d["shape"]), d["offset"], d["nbytes"])


def plan_buckets(
    specs: Sequence[tuple[str, str | torch.dtype, Sequence[int]]], bucket_bytes: int, align: int = ALIGN
) -> list[list[Slot]]:
    """Lay ``(name, dtype, shape)`` tensors out, in order, into buckets of at most ``bucket_bytes`` bytes.

    A tensor bigger than ``bucket_bytes`` gets a bucket of its own (never split, so the receiver can load it
    in one piece). Offsets are multiples of ``align`` (a power of two).
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    if align <= 0 or align & (align - 1):
        raise ValueError(f"align must be a power of two, got {align}")
    buckets: list[list[Slot]] = []
    current: list[Slot] = []
    end = 0  # bytes used by `current`
    for name, dtype, shape in specs:
        dt = _dtype(dtype)
        shape = tuple(int(d) for d in shape)
        nbytes = math.prod(shape) * dt.itemsize
        offset = -(-end // align) * align  # round up
        if current and offset + nbytes > bucket_bytes:
            buckets.append(current)
            current, offset = [], 0
        current.append(Slot(name, _dtype_name(dt), shape, offset, nbytes))
        end = offset + nbytes
    if current:
        buckets.append(current)
    return buckets


def bucket_nbytes(bucket: Sequence[Slot]) -> int:
    """Bytes of buffer a bucket needs (its last tensor's end)."""
    return max((s.offset + s.nbytes for s in bucket), default=0)


def pack_bucket(bucket: Sequence[Slot], tensors: Sequence[torch.Tensor], buffer: torch.Tensor) -> None:
    """Copy ``tensors`` (cast to each slot's dtype) into the ``uint8`` ``buffer`` at their slots' offsets."""
    if buffer.dtype != torch.uint8 or buffer.dim() != 1:
        raise ValueError(
            f"buffer must be a 1-D uint8 tensor, got {buffer.dtype} of shape {tuple(buffer.shape)}"
        )
    if len(tensors) != len(bucket):
        raise ValueError(f"{len(tensors)} tensors for a bucket of {len(bucket)} slots")
    if buffer.numel() < bucket_nbytes(bucket):
        raise ValueError(
            f"buffer of {buffer.numel()} bytes is too small for a bucket of {bucket_nbytes(bucket)}"
        )
    for slot, tensor in zip(bucket, tensors, strict=True):
        if tuple(tensor.shape) != slot.shape:
            raise ValueError(
                f"{slot.name}: tensor of shape {tuple(tensor.shape)} for a slot of shape {slot.shape}"
            )
        raw = (
            tensor.detach()
            .to(device=buffer.device, dtype=_dtype(slot.dtype))
            .contiguous()
            .reshape(-1)
            .view(torch.uint8)
        )
        buffer[slot.offset : slot.offset + slot.nbytes].copy_(raw)


def unpack_bucket(buffer: torch.Tensor, bucket: Sequence[Slot]) -> list[tuple[str, torch.Tensor]]:
    """Views (no copy) of the tensors a bucket holds in ``buffer``: ``[(name, tensor)]`` in slot order."""
    return [
        (s.name, buffer[s.offset : s.offset + s.nbytes].view(_dtype(s.dtype)).view(s.shape)) for s in bucket
    ]


@dataclass
class SyncLedger:
    """What the engine holds, so a push sends no more than it must.

    The first push is full: the engine loaded its weights from disk, and the policy may differ (a resumed
    run, an SFT warm start). So is any push after the engine discarded its weights (vLLM sleep level 2).
    Otherwise only trainable parameters are sent: frozen ones cannot have changed.
    """

    version: int = 0  # pushes completed
    engine_weights_valid: bool = True  # False after a sleep that discarded them
    last: dict[str, float] = field(default_factory=dict)

    def needs_full_push(self) -> bool:
        return self.version == 0 or not self.engine_weights_valid

    def weights_discarded(self) -> None:
        self.engine_weights_valid = False

    def record(self, tensors: int, nbytes: int, seconds: float, full: bool) -> dict[str, float]:
        """Note a finished push; returns its metrics (``sync/...``)."""
        self.version += 1
        self.engine_weights_valid = True
        self.last = {
            "sync/version": float(self.version),
            "sync/tensors": float(tensors),
            "sync/gb": nbytes / 1e9,
            "sync/seconds": seconds,
            "sync/full": float(full),
        }
        return dict(self.last)


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    dt = getattr(torch, dtype, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown torch dtype {dtype!r}")
    return dt


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
