"""Weight-sync bookkeeping: names, bucket layout, pack/unpack round trips, the push ledger."""

from __future__ import annotations

import pytest
import torch

from reasoner.models import load_policy
from reasoner.rollout.weights import (
    ALIGN,
    Slot,
    SyncLedger,
    bucket_nbytes,
    checkpoint_name,
    named_weights,
    pack_bucket,
    plan_buckets,
    unpack_bucket,
)

SPECS = [
    ("embed", "float32", (10, 7)),  # 280 bytes
    ("scalar", "float32", ()),  # 4
    ("empty", "float32", (0, 3)),  # 0
    ("half", "bfloat16", (5,)),  # 10
    ("ids", "int64", (3,)),  # 24
    ("big", "float32", (300,)),  # 1200: larger than the bucket below
    ("tail", "float16", (2, 2)),  # 8
]


def test_buckets_keep_order_align_offsets_and_respect_capacity():
    buckets = plan_buckets(SPECS, bucket_bytes=600)
    slots = [s for b in buckets for s in b]
    assert [s.name for s in slots] == [name for name, _, _ in SPECS]
    assert [s.nbytes for s in slots] == [280, 4, 0, 10, 24, 1200, 8]
    for bucket in buckets:
        assert bucket[0].offset == 0
        assert all(s.offset % ALIGN == 0 for s in bucket)
        ends = [s.offset + s.nbytes for s in bucket]
        assert all(e <= nxt.offset for e, nxt in zip(ends[:-1], bucket[1:], strict=True)), "slots overlap"
        assert bucket_nbytes(bucket) <= 600 or len(bucket) == 1, (
            "only a lone oversized tensor may exceed the cap"
        )
    big = next(b for b in buckets if any(s.name == "big" for s in b))
    assert [s.name for s in big] == ["big"] and bucket_nbytes(big) == 1200


def test_one_huge_bucket_holds_everything_and_tiny_buckets_hold_one_tensor_each():
    assert len(plan_buckets(SPECS, bucket_bytes=1 << 30)) == 1
    singles = plan_buckets(SPECS, bucket_bytes=1)
    assert [[s.name for s in b] for b in singles] == [[name] for name, _, _ in SPECS]
    assert plan_buckets([], bucket_bytes=10) == []


@pytest.mark.parametrize(
    "bad", [{"bucket_bytes": 0}, {"bucket_bytes": 10, "align": 3}, {"bucket_bytes": 10, "align": 0}]
)
def test_bad_bucket_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        plan_buckets(SPECS, **bad)


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="unknown torch dtype 'float99'"):
        plan_buckets([("x", "float99", (1,))], bucket_bytes=10)


def test_pack_then_unpack_returns_the_same_tensors_cast_to_the_slot_dtype():
    torch.manual_seed(0)
    tensors = {
        "embed": torch.randn(10, 7),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "half": torch.randn(5),  # float32 in, bfloat16 out
        "ids": torch.tensor([1, -2, 2**40]),
        "big": torch.randn(300),
        "tail": torch.randn(2, 2, dtype=torch.float64),  # float64 in, float16 out
    }
    for bucket in plan_buckets(SPECS, bucket_bytes=600):
        buffer = torch.full((bucket_nbytes(bucket),), 0xAB, dtype=torch.uint8)
        pack_bucket(bucket, [tensors[s.name] for s in bucket], buffer)
        for (name, out), slot in zip(unpack_bucket(buffer, bucket), bucket, strict=True):
            assert out.dtype == getattr(torch, slot.dtype) and tuple(out.shape) == slot.shape
            assert torch.equal(out, tensors[name].to(out.dtype)), name


def test_pack_checks_shapes_counts_and_buffer_size():
    (bucket,) = plan_buckets([("a", "float32", (2, 3))], bucket_bytes=1024)
    with pytest.raises(ValueError, match="shape"):
        pack_bucket(bucket, [torch.zeros(3, 2)], torch.empty(24, dtype=torch.uint8))
    with pytest.raises(ValueError, match="1 slots"):
        pack_bucket(bucket, [], torch.empty(24, dtype=torch.uint8))
    with pytest.raises(ValueError, match="too small"):
        pack_bucket(bucket, [torch.zeros(2, 3)], torch.empty(23, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        pack_bucket(bucket, [torch.zeros(2, 3)], torch.empty(24, dtype=torch.float32))


def test_slots_survive_a_round_trip_through_plain_data():
    slot = Slot("model.norm.weight", "bfloat16", (64,), 512, 128)
    as_data = slot.to_dict()
    assert as_data == {
        "name": "model.norm.weight",
        "dtype": "bfloat16",
        "shape": [64],
        "offset": 512,
        "nbytes": 128,
    }
    assert Slot.from_dict(as_data) == slot


def test_checkpoint_names_drop_wrapper_components():
    assert (
        checkpoint_name("_orig_mod.model.layers.3.self_attn.q_proj.weight")
        == "model.layers.3.self_attn.q_proj.weight"
    )
    assert checkpoint_name("lm_head.weight") == "lm_head.weight"


def test_a_model_pushed_bucket_by_bucket_into_another_becomes_equal(tiny_dir):
    """The whole path minus the transport: policy -> names -> buckets -> bytes -> tensors -> another model."""
    source = load_policy(str(tiny_dir), "float32", torch.device("cpu"))
    target = load_policy(str(tiny_dir), "float32", torch.device("cpu"))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    named = named_weights(source)
    names = [n for n, _ in named]
    assert "lm_head.weight" not in names, "the tied LM head is the embedding: it must be pushed once"
    tensors = dict(named)
    buckets = plan_buckets([(n, t.dtype, t.shape) for n, t in named], bucket_bytes=20_000)
    assert len(buckets) > 3
    target_params = dict(target.named_parameters())
    for bucket in buckets:
        buffer = torch.empty(bucket_nbytes(bucket), dtype=torch.uint8)
        pack_bucket(bucket, [tensors[s.name] for s in bucket], buffer)
        with torch.no_grad():
            for name, tensor in unpack_bucket(buffer, bucket):
                target_params[name].copy_(tensor)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_only_trainable_skips_frozen_parameters(tiny_dir):
    model = load_policy(str(tiny_dir), "float32", torch.device("cpu"))
    model.model.embed_tokens.weight.requires_grad_(False)
    every = [n for n, _ in named_weights(model)]
    trainable = [n for n, _ in named_weights(model, only_trainable=True)]
    assert "model.embed_tokens.weight" in every and "model.embed_tokens.weight" not in trainable
    assert len(trainable) == len(every) - 1


def test_named_weights_see_through_torch_compile(tiny_dir):
    model = load_policy(str(tiny_dir), "float32", torch.device("cpu"))
    compiled = torch.compile(model)  # wraps lazily: nothing is compiled until it is called
    assert [n for n, _ in named_weights(compiled)] == [n for n, _ in named_weights(model)]


def test_the_ledger_asks_for_a_full_push_first_and_after_weights_are_discarded():
    ledger = SyncLedger()
    assert ledger.needs_full_push()
    metrics = ledger.record(tensors=10, nbytes=2_000_000_000, seconds=0.5, full=True)
    assert metrics == {
        "sync/version": 1.0,
        "sync/tensors": 10.0,
        "sync/gb": 2.0,
        "sync/seconds": 0.5,
        "sync/full": 1.0,
    }
    assert not ledger.needs_full_push()
    ledger.weights_discarded()
    assert ledger.needs_full_push()
    ledger.record(tensors=10, nbytes=1, seconds=0.1, full=True)
    assert not ledger.needs_full_push() and ledger.version == 2
