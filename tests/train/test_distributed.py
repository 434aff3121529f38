"""Two real processes on CPU (gloo): per-rank generation on a shard of the prompts, then one DDP update with the
trainer's own ``update``; both ranks must end with identical parameters that differ from where they started.
The same update then runs on an FSDP2-sharded copy. PPO: two updates (critic warm-up, then policy and critic) on
2 ranks with half the batch each must give the parameters one process gets with the whole batch, policy and
critic, under DDP and with the critic sharded by FSDP2."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from reasoner.train.distributed import (
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
REPO = Path(__file__).resolve().parents[2]


def _rank_main(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    """One rank of the run (module level so that torch.multiprocessing.spawn can pickle it)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from reasoner.config import load_config
    from reasoner.models import load_policy, load_tokenizer
    from reasoner.rollout import SamplingParams
    from reasoner.rollout.hf import HFEngine
    from reasoner.train.estimators import make_estimator
    from reasoner.train.optim import make_optimizer
    from reasoner.train.update import Learner, Scored, update

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
            Learner(
                cfg=cfg,
                model=model,
                reference=None,
                estimator=estimator,
                optimizer=optimizer,
                pad_id=tokenizer.pad_token_id,
                device=cpu,
            ),
            Scored(rollouts=rollouts, rewards=rewards, scored=scored),
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
            Learner(
                cfg=cfg,
                model=sharded,
                reference=None,
                estimator=estimator,
                optimizer=fsdp_optimizer,
                pad_id=tokenizer.pad_token_id,
                device=cpu,
            ),
            Scored(rollouts=rollouts, rewards=rewards, scored=scored),
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


# PPO on 2 ranks vs 1: KL in the reward (a reference model), 2 inner epochs (old log-probs, 2 optimizer steps per
# update), micro-batches of 3 over 8 rows per rank (no_sync on the first two), whitened advantages, 1 warm-up step,
# and the token-mean loss (the mode that must count every rank's tokens; per-sequence modes hold by DDP alone).
PPO_ARGS = ["algo.name=ppo", "rollout.n=4", "rollout.max_new_tokens=8", "algo.beta=0.05", "algo.kl_in_reward=true",
            "algo.inner_epochs=2", "algo.loss_agg=token-mean", "algo.critic_warmup_steps=1", "algo.critic_lr=1e-3", "optim.lr=1e-3",
            "train.micro_batch_size=3"]  # fmt: skip
PPO_STEPS = 2


def _ppo_steps(info, model_dir: str, rollouts, rewards, fsdp: bool = False, algo: str = "ppo") -> dict:
    """``PPO_STEPS`` trainer updates of a fresh policy (and critic) on ``rollouts``; their weights afterwards."""
    from reasoner.config import load_config
    from reasoner.models import load_policy, load_tokenizer
    from reasoner.rollout.weights import named_weights
    from reasoner.train.estimators import make_estimator
    from reasoner.train.optim import make_optimizer
    from reasoner.train.update import Learner, Scored, update

    cpu = torch.device("cpu")
    cfg = load_config(None, PPO_ARGS + [f"algo.name={algo}"])
    tokenizer = load_tokenizer(model_dir)
    policy = load_policy(model_dir, "float32", cpu)
    model = wrap_fsdp(policy, info) if fsdp else wrap_ddp(policy, info)
    reference = load_policy(model_dir, "float32", cpu).eval().requires_grad_(False)
    estimator = make_estimator(cfg, model if fsdp else policy, model_dir, cpu, info)
    optimizer = make_optimizer(model.parameters(), cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas)
    scored = torch.ones(len(rollouts), dtype=torch.bool)
    learner = Learner(cfg=cfg, model=model, reference=reference, estimator=estimator, optimizer=optimizer,
                      pad_id=tokenizer.pad_token_id, device=cpu, world=info)  # fmt: skip
    batch = Scored(rollouts=rollouts, rewards=rewards, scored=scored)
    metrics = [update(learner, batch) for _ in range(PPO_STEPS)]
    out = {"policy": {n: t.clone() for n, t in named_weights(model)}, "metrics": metrics}
    if algo == "ppo":
        out |= {"critic": {n: t.clone() for n, t in named_weights(estimator.critic)}, "step": estimator.step,
                "critic_ckpt": set(estimator.extra_modules()["critic"].state_dict()),
                "critic_type": type(estimator.model).__name__}  # fmt: skip
    return out


def _ppo_rank_main(rank: int, world: int, port: int, model_dir: str, data: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    info = init_from_env(backend="gloo", timeout_s=60)
    try:
        batch = torch.load(data, weights_only=False)
        half = slice(rank * len(batch["rollouts"]) // world, (rank + 1) * len(batch["rollouts"]) // world)
        rollouts, rewards = batch["rollouts"][half], batch["rewards"][half]
        out = {"ddp": _ppo_steps(info, model_dir, rollouts, rewards)}
        out["fsdp"] = _ppo_steps(info, model_dir, rollouts, rewards, fsdp=True)
        out["reinforce_plus_plus"] = _ppo_steps(
            info, model_dir, rollouts, rewards, algo="reinforce_plus_plus"
        )
        torch.save(out, os.path.join(out_dir, f"ppo-rank{rank}.pt"))
    finally:
        destroy(info)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ppo_on_two_ranks_with_half_the_batch_each_equals_one_process_with_the_whole_batch(
    tmp_path, monkeypatch
):
    from reasoner.models import build_tiny_model, load_policy, load_tokenizer
    from reasoner.rollout import SamplingParams
    from reasoner.rollout.hf import HFEngine
    from reasoner.rollout.weights import named_weights

    monkeypatch.syspath_prepend(str(REPO))
    model_dir = str(build_tiny_model(tmp_path / "tiny", seed=0, **TINY))
    engine = HFEngine(load_policy(model_dir, "float32", torch.device("cpu")), load_tokenizer(model_dir))
    rollouts = engine.generate(PROMPTS, SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=7))
    rewards = torch.tensor([len(set(r.text)) / 8 for r in rollouts])
    assert len({len(r.completion_ids) for r in rollouts}) > 1 and rewards.std() > 0  # padding and signal
    torch.save({"rollouts": rollouts, "rewards": rewards}, tmp_path / "batch.pt")
    torch.multiprocessing.spawn(
        _ppo_rank_main, args=(WORLD, _free_port(), model_dir, str(tmp_path / "batch.pt"), str(tmp_path)),
        nprocs=WORLD,
    )  # fmt: skip
    r0, r1 = (torch.load(tmp_path / f"ppo-rank{r}.pt", weights_only=False) for r in range(WORLD))
    single = _ppo_steps(DistInfo(), model_dir, rollouts, rewards)

    assert (r0["ddp"]["critic_type"], r0["fsdp"]["critic_type"]) == ("DistributedDataParallel", "FSDPCritic")
    start = dict(named_weights(load_policy(model_dir, "float32", torch.device("cpu"))))
    for mode in ("ddp", "fsdp"):
        a, b = r0[mode], r1[mode]
        assert a["step"] == b["step"] == single["step"] == PPO_STEPS
        warmup = [m["critic_warmup"] for m in a["metrics"]]
        assert warmup == [1.0, 0.0], "both ranks leave the warm-up together"
        for part in ("policy", "critic"):
            assert a[part].keys() == single[part].keys()
            for name, want in single[part].items():
                assert torch.equal(a[part][name], b[part][name]), f"{mode}: ranks disagree on {part} {name}"
                diff = (a[part][name] - want).abs().max().item()
                assert diff < 2e-5, f"{mode}: {part} {name} is {diff:.2e} from the one-process update"
        # gradients are all-reduced before clipping: every rank sees the one-process norm
        for step, want in enumerate(single["metrics"]):
            got = (a["metrics"][step], b["metrics"][step])
            for key in ("grad_norm", "value/grad_norm"):
                assert got[0][key] == got[1][key] == pytest.approx(want[key], rel=1e-4), (mode, step, key)
            mean_loss = (got[0]["value/loss"] + got[1]["value/loss"]) / 2  # as log_step averages them
            assert mean_loss == pytest.approx(want["value/loss"], rel=1e-4), (mode, step)
        assert a["critic_ckpt"] == single["critic_ckpt"], "checkpoints hold the plain critic, not the wrapper"
        moved = [n for n, t in a["policy"].items() if not torch.equal(t, start[n])]
        assert moved, "the policy did not move after the warm-up"
    # REINFORCE++ whitens over the whole batch too: every rank's tokens, not its own
    single = _ppo_steps(DistInfo(), model_dir, rollouts, rewards, algo="reinforce_plus_plus")
    a, b = r0["reinforce_plus_plus"]["policy"], r1["reinforce_plus_plus"]["policy"]
    for name, want in single["policy"].items():
        assert torch.equal(a[name], b[name]), f"reinforce_plus_plus: ranks disagree on {name}"
        assert (a[name] - want).abs().max().item() < 2e-5, (
            f"reinforce_plus_plus: {name} differs from one process"
        )


def _distinct_chars(completions, examples, **kwargs):
    """A reward that varies between any two samples of the random tiny model, so every step has a signal."""
    from reasoner.rewards import RewardOutput

    return RewardOutput([len(set(c)) / 8 for c in completions])


def _register_distinct_chars_task() -> None:
    from reasoner.rewards import REWARDS
    from reasoner.tasks import TASKS
    from reasoner.tasks.base import Example, Task

    if "distinct-chars" not in TASKS:  # module level: the spawned ranks import this module and get it too
        REWARDS.register("distinct-chars")(_distinct_chars)
        load = lambda source, split, size, seed: [Example(f"{i}: 3+4 is\n", "7") for i in range(size or 64)]  # noqa: E731
        TASKS.register("distinct-chars")(Task(name="distinct-chars", reward="distinct-chars", load=load))


_register_distinct_chars_task()


def _train_rank_main(rank: int, world: int, port: int, args: list[str], out: str) -> None:
    """One rank of ``reasoner train`` (the real loop); its policy and critic are saved just before it finishes."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    import reasoner.train.trainer as trainer
    from reasoner.config import load_config

    finish = trainer.finish

    def save_then_finish(run):
        state = {"policy": run.policy.state_dict(), "critic": run.estimator.critic.state_dict()}
        torch.save(
            {k: {n: t.clone() for n, t in v.items()} for k, v in state.items()}, f"{out}-rank{rank}.pt"
        )
        finish(run)
        # Everything is saved and the process group destroyed. About 1 run in 10, freeing what train() held (as it
        # returned, or at interpreter exit) blocked one rank for good after the other had left (py-spy: idle in
        # the frame that called train()). Leave before train() returns.
        os._exit(0)

    trainer.finish = save_then_finish  # a probe on the real loop: train() calls finish() last
    trainer.train(load_config(None, args), progress=False)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ppo_training_on_two_ranks_keeps_policy_and_critic_in_step_and_resumes(tmp_path, monkeypatch):
    """`reasoner train` with PPO on 2 gloo ranks: the warm-up ends on both ranks at once, both end with the same
    policy and critic, and a run resumed from its step-2 checkpoint ends where the uninterrupted one did."""
    import json
    import shutil

    from reasoner.models import build_tiny_model

    monkeypatch.syspath_prepend(str(REPO))
    model_dir = build_tiny_model(tmp_path / "tiny", seed=0, **TINY)
    run = tmp_path / "run"
    args = [f"model.path={model_dir}", f"train.output_dir={run}", "task.name=distinct-chars", "task.eval_size=4",
            "algo.name=ppo", "algo.critic_warmup_steps=1", "algo.critic_lr=1e-3", "rollout.n=4",
            "rollout.max_new_tokens=6", "train.prompts_per_step=4", "train.micro_batch_size=8", "train.steps=3",
            "train.save_every=2", "train.eval_every=0", "optim.lr=3e-3", "sft.steps=0", "train.tensorboard=false",
            "train.cpu_threads=1"]  # fmt: skip

    def launch(extra: list[str], out: str) -> tuple[dict, dict]:
        torch.multiprocessing.spawn(
            _train_rank_main, args=(WORLD, _free_port(), args + extra, str(tmp_path / out)), nprocs=WORLD
        )
        return tuple(torch.load(tmp_path / f"{out}-rank{r}.pt") for r in range(WORLD))

    full = launch([], "full")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # all_reduce_mean would log 0.5 for a step that one rank still spent in the warm-up
    assert [r["critic_warmup"] for r in rows if "critic_warmup" in r] == [1.0, 0.0, 0.0]
    ckpts = run / "checkpoints"
    assert (ckpts / "step-0000003" / "critic.pt").is_file()
    shutil.rmtree(ckpts / "step-0000003")
    (ckpts / "latest").write_text("step-0000002")
    resumed = launch(["train.resume=true"], "resumed")
    start = dict(torch.load(ckpts / "step-0000002" / "critic.pt"))
    for part in ("policy", "critic"):
        for name, want in full[0][part].items():
            assert torch.equal(full[1][part][name], want), f"ranks disagree on {part} {name}"
            assert torch.equal(resumed[1][part][name], resumed[0][part][name]), f"resumed: {part} {name}"
            assert torch.allclose(resumed[0][part][name], want, atol=1e-6), f"resume changed {part} {name}"
    assert any(not torch.equal(full[0]["critic"][n], t) for n, t in start.items()), "step 3 left the critic"


def _batch_std_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    from reasoner.config import load_config
    from reasoner.train.estimators import make_estimator

    info = init_from_env(backend="gloo", timeout_s=60)
    try:
        cfg = load_config(None, ["rollout.n=4", "algo.scale_rewards=batch"])
        rewards = BATCH_STD_REWARDS[rank * 8 : (rank + 1) * 8]  # this rank's 2 prompts x 4 samples
        advantages = make_estimator(cfg, None, None, torch.device("cpu"), info).sequence_advantages(rewards)
        torch.save(advantages, os.path.join(out_dir, f"adv{rank}.pt"))
    finally:
        destroy(info)


BATCH_STD_REWARDS = torch.tensor(
    [0.0, 1, 1, 0, 0, 0, 0, 1, 5, 5, 6, 6, 9, 9, 9, 9]
)  # rank 1's share is wider


@pytest.mark.timeout(120)
def test_scale_rewards_batch_divides_by_the_std_of_every_ranks_rewards(tmp_path, monkeypatch):
    """``algo.scale_rewards=batch`` on 2 ranks with half the batch each gives the advantages one process gets with
    the whole batch (each rank's own std would differ: rank 0's rewards are 0/1, rank 1's 5-9)."""
    from reasoner.algo import group_advantages

    monkeypatch.syspath_prepend(str(REPO))
    torch.multiprocessing.spawn(_batch_std_rank, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD)
    got = torch.cat([torch.load(tmp_path / f"adv{r}.pt") for r in range(WORLD)])
    whole = group_advantages(BATCH_STD_REWARDS, 4, "batch")
    assert torch.allclose(got, whole, atol=1e-6), (got, whole)
    per_rank = torch.cat([group_advantages(BATCH_STD_REWARDS[i : i + 8], 4, "batch") for i in (0, 8)])
    assert not torch.allclose(got, per_rank, atol=1e-3)  # what each rank alone would have computed
