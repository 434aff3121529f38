"""Two real processes on CPU (gloo): per-rank generation on a shard of the prompts, then one DDP update with the
trainer's own ``update``; both ranks must end with identical parameters that differ from where they started.
The same update then runs on an FSDP2-sharded copy."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from reasoner.distributed import (
    DistInfo,
    all_reduce_mean,
    destroy,
    init_from_env,
    shard,
    unwrap,
    wrap_ddp,
    wrap_fsdp,
)

PROMPTS = ["1+1=", "2+3=", "7*8=", "9-4="]
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
WORLD = 2
REPO = Path(__file__).resolve().parents[1]


def _rank_main(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    """One rank of the run (module level so that torch.multiprocessing.spawn can pickle it)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from reasoner.config import load_config
    from reasoner.estimators import make_estimator
    from reasoner.models import load_policy, load_tokenizer
    from reasoner.optim import make_optimizer
    from reasoner.rollout import SamplingParams
    from reasoner.rollout.hf import HFEngine
    from reasoner.trainer import update

    info = init_from_env(backend="gloo", timeout_s=60)
    try:
        cpu = torch.device("cpu")
        cfg = load_config(None, ["rollout.n=4", "rollout.max_new_tokens=8", "algo.beta=0.0", "optim.lr=0.01",
                                 "train.micro_batch_size=4"])  # fmt: skip
        tokenizer = load_tokenizer(model_dir)
        policy = load_policy(model_dir, "float32", cpu)
        if rank == 1:  # start the ranks apart: DDP must broadcast rank 0's weights
            with torch.no_grad():
                for p in policy.parameters():
                    p.add_(1.0)
        model = wrap_ddp(policy, info)
        start = {k: v.clone() for k, v in unwrap(model).state_dict().items()}
        engine = HFEngine(unwrap(model), tokenizer)  # generation uses the plain module, DDP the update
        prompts = shard(PROMPTS, info.rank, info.world_size)
        params = SamplingParams(n=cfg.rollout.n, temperature=1.0, max_new_tokens=8, seed=1000 + rank)
        rollouts = engine.generate(prompts, params)
        rewards = torch.tensor(
            [len(set(r.text)) / 8 for r in rollouts]
        )  # varies within groups: a real gradient
        scored = torch.ones(len(rollouts), dtype=torch.bool)
        estimator = make_estimator(cfg, policy, model_dir, cpu)
        optimizer = make_optimizer(model.parameters(), cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas)
        metrics = update(
            cfg, model, None, estimator, optimizer, rollouts, rewards, scored, tokenizer.pad_token_id, cpu
        )
        local = {"reward": rewards.mean().item(), "grad_norm": metrics["grad_norm"]}

        # The same update on an FSDP2-sharded copy: parameters are shards, named_weights gathers them whole.
        from reasoner.rollout.weights import named_weights

        sharded = wrap_fsdp(load_policy(model_dir, "float32", cpu), info)
        fsdp_start = {n: t.clone() for n, t in named_weights(sharded)}
        fsdp_optimizer = make_optimizer(
            sharded.parameters(), cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas
        )
        update(
            cfg,
            sharded,
            None,
            estimator,
            fsdp_optimizer,
            rollouts,
            rewards,
            scored,
            tokenizer.pad_token_id,
            cpu,
        )
        fsdp_final = dict(named_weights(sharded))
        torch.save(
            {
                "prompts": prompts,
                "completions": [r.completion_ids for r in rollouts],
                "start": start,
                "final": {k: v.clone() for k, v in unwrap(model).state_dict().items()},
                "fsdp_start": fsdp_start,
                "fsdp_final": fsdp_final,
                "local": local,
                "mean": all_reduce_mean(local, info),
                # x: (0 * 1 + 1 * 3) / (1 + 3); n: 10 + 11, added up
                "weighted": all_reduce_mean(
                    {"x": float(rank), "n": 10.0 + rank}, info, weight=1.0 + 2 * rank, sums={"n"}
                ),
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        destroy(info)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_two_ranks_generate_their_own_prompts_and_end_with_the_same_updated_weights(tmp_path, monkeypatch):
    from reasoner.models import build_tiny_model

    # Spawned ranks start from this process's sys.path and import this module by name to find _rank_main.
    monkeypatch.syspath_prepend(str(REPO))

    model_dir = build_tiny_model(tmp_path / "tiny", seed=0, **TINY)
    torch.multiprocessing.spawn(
        _rank_main, args=(WORLD, _free_port(), str(model_dir), str(tmp_path)), nprocs=WORLD
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))

    assert r0["prompts"] + r1["prompts"] == PROMPTS, "each rank generates for its own half of the prompts"
    assert len(r0["completions"]) == len(r1["completions"]) == 2 * 4
    for name in r0["start"]:
        assert torch.equal(r0["start"][name], r1["start"][name]), f"DDP did not broadcast rank 0's {name}"
        assert torch.equal(r0["final"][name], r1["final"][name]), f"ranks disagree on {name} after the update"
    moved = [n for n in r0["start"] if not torch.equal(r0["start"][n], r0["final"][n])]
    assert len(moved) == len(r0["start"]), f"parameters that did not move: {set(r0['start']) - set(moved)}"
    assert r0["local"]["grad_norm"] == r1["local"]["grad_norm"] > 0, (
        "gradients are all-reduced before clipping"
    )
    assert r0["mean"] == r1["mean"]
    assert r0["mean"]["reward"] == pytest.approx((r0["local"]["reward"] + r1["local"]["reward"]) / 2)
    assert r0["weighted"] == r1["weighted"] == {"x": pytest.approx(0.75), "n": 21.0}
    for name in r0["fsdp_start"]:  # FSDP2: whole tensors gathered from the shards, equal on both ranks, moved
        assert torch.equal(r0["fsdp_final"][name], r1["fsdp_final"][name]), name
        assert not torch.equal(r0["fsdp_start"][name], r0["fsdp_final"][name]), name
    assert r0["fsdp_final"].keys() == {
        n for n in r0["final"] if n != "lm_head.weight"
    }  # tied head pushed once


def test_without_torchrun_everything_is_a_single_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    info = init_from_env()
    assert info == DistInfo() and not info.enabled and info.is_main
    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model, info) is model
    assert all_reduce_mean({"a": 1.5}, info) == {"a": 1.5}


def test_a_partial_torchrun_environment_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        init_from_env()


def test_uneven_training_shards_are_refused_and_eval_shards_cover_everything():
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        shard(list(range(5)), 0, 2)
    parts = [shard(list(range(7)), r, 3, even=False) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError, match="not in a world"):
        shard([1, 2], 2, 2)
