"""The RL loop shared by GRPO and PPO: rollout -> score -> advantages -> clipped update -> push weights -> log.

Defaults follow the GRPO paper (Shao et al. 2024): group-normalised outcome rewards, the clipped surrogate
with eps = 0.2, and the k3 KL estimator in the loss with beta = 0.04. Departures are named settings:
- ``algo.loss_agg``: the paper averages per sequence then over the group (``seq-mean-token-mean``, default);
  ``token-mean`` (DAPO) and ``seq-mean-token-sum-norm`` (Dr. GRPO) remove its length bias.
- ``algo.scale_rewards=none`` drops the division by the group's std (Dr. GRPO); ``batch`` uses the batch std.
- ``algo.clip_high`` > ``clip_low`` is DAPO's clip-higher; ``algo.drop_zero_variance`` its dynamic sampling
  (without refilling); ``algo.mask_truncated`` its overlong filtering.
- Log-probs are taken at the sampling temperature, so the ratio and the KL compare like with like.
"""

from __future__ import annotations

import json
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from reasoner.algo import aggregate, clipped_surrogate, kl_penalty
from reasoner.batch import RolloutBatch, make_batch, sequence_logprobs
from reasoner.checkpoint import (
    latest_checkpoint,
    load_extra,
    load_trainer_state,
    save_checkpoint,
    write_json_atomic,
)
from reasoner.config import Config, to_dict
from reasoner.distributed import (
    NullLogger,
    all_reduce_mean,
    barrier,
    broadcast_object,
    destroy,
    init_from_env,
    shard,
    wrap_ddp,
)
from reasoner.estimators import make_estimator
from reasoner.evaluate import evaluate_model
from reasoner.metrics import MetricsLogger, plot_metrics
from reasoner.models import default_device, load_policy, load_tokenizer, set_cpu_threads
from reasoner.optim import make_optimizer, make_scheduler
from reasoner.rewards.combine import build_reward
from reasoner.rollout import SamplingParams, make_engine
from reasoner.rollout.mismatch import engine_logprob_tensor, mismatch_metrics, tis_weights
from reasoner.tasks import get_task
from reasoner.tasks.base import Example


def train(cfg: Config, progress: bool = True) -> dict:
    t_start = time.time()
    world = (
        init_from_env()
    )  # under torchrun: join the process group (nccl on CUDA, gloo on CPU); else one process
    run = Path(cfg.train.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        (run / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    device = world.device if world.enabled else default_device()
    set_cpu_threads(cfg.train.cpu_threads)

    model_path = cfg.model.path
    if cfg.sft.steps > 0:  # offline default: a supervised warm start before RL (cached between runs)
        from reasoner.sft import run_sft

        if world.is_main:
            model_path = str(run_sft(cfg, model_path, Path(cfg.sft.output_dir), progress=progress))
        model_path = broadcast_object(model_path, world)
    ckpt = latest_checkpoint(run) if cfg.train.resume else None
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    policy = load_policy(
        str(ckpt / "policy") if ckpt else model_path, "float32", device, cfg.model.attn_implementation
    )
    if cfg.model.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    model = wrap_ddp(policy, world)  # the update goes through DDP; generation and checkpoints use `policy`
    reference, reference_path = None, cfg.model.reference or model_path
    if cfg.algo.beta > 0:
        reference = (
            load_policy(reference_path, cfg.model.dtype, device, cfg.model.attn_implementation)
            .eval()
            .requires_grad_(False)
        )
    estimator = make_estimator(cfg, policy, model_path, device)

    task = get_task(cfg.task.name)
    train_set = task.load(cfg.task.train, cfg.task.train_split, cfg.task.train_size, cfg.train.seed)
    eval_set = task.load(cfg.task.test, cfg.task.test_split, cfg.task.eval_size, cfg.train.seed)
    eval_shard = shard(eval_set, world.rank, world.world_size, even=False)
    reward_fn = build_reward(cfg, task.reward, device)  # the task's reward, or task.rewards weighted
    format_fn = None  # task.format_reward is one of build_reward's terms
    render = prompt_renderer(tokenizer, cfg)
    engine = make_engine(cfg.rollout, policy, tokenizer, model_path)

    optimizer = make_optimizer(policy.parameters(), cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas)
    scheduler = make_scheduler(optimizer, cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.schedule)
    start_step, history = 0, {}
    if ckpt:
        state = load_trainer_state(ckpt)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        estimator.load_state_dict(state["estimator"])
        for name, module in estimator.extra_modules().items():
            load_extra(ckpt, name, module)
        start_step, history = state["step"], state["history"]
        engine.sync_weights(policy)  # the engine loaded model_path; the policy resumed from the checkpoint
        print(f"[train] resumed from {ckpt} at step {start_step}")
    log = NullLogger()  # rank 0 alone writes metrics
    if world.is_main:
        log = MetricsLogger(run, cfg.train.tensorboard, resume_step=start_step if ckpt else None)

    def evaluate(step: int) -> float:
        engine.wake_up()
        report = evaluate_model(
            engine, task, eval_shard, temperature=cfg.train.eval_temperature, max_new_tokens=cfg.rollout.max_new_tokens,
            seed=cfg.train.seed, render=render, progress=False, batch_prompts=max(1, cfg.rollout.batch_size),
        )  # fmt: skip
        counts = ("examples", "samples", "correct", "unscored")
        metrics = all_reduce_mean(report.metrics, world, weight=len(eval_shard), sums=counts)
        score = metrics["accuracy" if task.kind == "math" else "pass@1"]
        log.log(step, {"eval/score": score, **{f"eval/{k}": v for k, v in metrics.items()}})
        return score

    def checkpoint(step: int) -> None:
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history,
                 "estimator": estimator.state_dict()}  # fmt: skip
        if world.is_main:  # DDP keeps every rank's policy and optimizer identical
            save_checkpoint(run, step, policy, tokenizer, state, estimator.extra_modules())
        barrier(world)

    if "eval_before" not in history:
        history["eval_before"] = evaluate(0)
    if world.is_main:
        print(
            f"[train] {task.name}: held-out score before RL {history['eval_before']:.3f} on {len(eval_set)} prompts"
        )

    progress = progress and world.is_main
    bar = tqdm(range(start_step, cfg.train.steps), desc=cfg.algo.name, disable=not progress, dynamic_ncols=True,
               initial=start_step, total=cfg.train.steps)  # fmt: skip
    step = start_step
    stop = _GracefulStop()
    try:
        for step in bar:
            examples = batch_for_step(train_set, step, cfg.train.prompts_per_step, cfg.train.seed)
            examples = shard(examples, world.rank, world.world_size)  # this rank's prompts
            t0 = time.time()
            engine.wake_up()
            params = SamplingParams(n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                    max_new_tokens=cfg.rollout.max_new_tokens,
                                    seed=(cfg.train.seed * 100_003 + step) * world.world_size + world.rank)  # fmt: skip
            rollouts = engine.generate([render(ex) for ex in examples], params)
            engine.sleep()
            t1 = time.time()
            aligned = [examples[r.prompt_index] for r in rollouts]
            rewards, scored, reward_metrics = score(
                reward_fn, format_fn, cfg.task.format_reward, rollouts, aligned
            )
            t2 = time.time()
            frozen = estimator.policy_frozen  # PPO's critic warm-up: the policy's schedule waits too
            metrics = update(
                cfg,
                model,
                reference,
                estimator,
                optimizer,
                rollouts,
                rewards,
                scored,
                tokenizer.pad_token_id,
                device,
            )
            if not frozen:
                scheduler.step()
            engine.sync_weights(policy)
            t3 = time.time()
            tokens = sum(len(r.completion_ids) for r in rollouts)
            metrics |= reward_metrics | {
                "lr": scheduler.get_last_lr()[0], "time/generate": t1 - t0, "time/score": t2 - t1, "time/update": t3 - t2,
                "tokens_per_s": tokens / (t3 - t0), "samples": (step + 1) * len(rollouts),
            }  # fmt: skip
            metrics = all_reduce_mean(metrics, world, sums=("tokens_per_s", "samples"))  # the mean over ranks
            log.log(step + 1, metrics)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.2f}", kl=f"{metrics.get('kl', 0):.3f}")
            if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.steps:
                evaluate(step + 1)
            if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0:
                checkpoint(step + 1)
            stop.raise_if_requested()
        step = cfg.train.steps
    except KeyboardInterrupt:
        bar.close()
        checkpoint(step)
        log.close()
        print(
            f"\n[train] interrupted: saved step {step} to {run}/checkpoints; continue with train.resume=true"
        )
        raise
    finally:
        stop.restore()
    bar.close()

    history["eval_after"] = evaluate(cfg.train.steps)
    checkpoint(cfg.train.steps)
    log.close()
    if world.is_main:
        policy.save_pretrained(run / "final")
        tokenizer.save_pretrained(run / "final")
        plot_metrics(run / "metrics.jsonl", run / "curves.png", title=f"{cfg.algo.name} on {task.name}")
    result = {
        "task": task.name, "algo": cfg.algo.name, "eval_before": round(history["eval_before"], 4),
        "eval_after": round(history["eval_after"], 4), "gain": round(history["eval_after"] - history["eval_before"], 4),
        "steps": cfg.train.steps, "samples": cfg.train.steps * cfg.train.prompts_per_step * cfg.rollout.n,
        "eval_prompts": len(eval_set), "wall_s": round(time.time() - t_start, 1), "model": cfg.model.path,
        "output_dir": str(run),
    }  # fmt: skip
    if world.is_main:
        write_json_atomic(run / "result.json", result)
    destroy(world)
    return result


def update(cfg, policy, reference, estimator, optimizer, rollouts, rewards, scored, pad_id, device) -> dict:
    """Compute advantages and take ``algo.inner_epochs`` clipped policy-gradient steps on one batch of rollouts."""
    ac = cfg.algo
    batch = make_batch(rollouts, pad_id, device)
    n, mb = len(batch), cfg.train.micro_batch_size
    keep = scored.clone()  # [N] samples that take part in the loss
    if ac.mask_truncated:
        keep &= torch.tensor([r.finish_reason == "stop" for r in rollouts], device=device)
    # On-policy with one pass, the old log-probs equal the current ones: take them from the update's own
    # forward (ratio exactly 1) instead of a separate pass. PPO's KL-in-reward needs them up front.
    on_policy = ac.inner_epochs == 1 and not estimator.kl_in_reward
    with torch.no_grad():
        old_logp = None
        if not on_policy:
            old_logp = torch.cat([sequence_logprobs(policy, batch.select(slice(i, i + mb)), cfg.rollout.temperature)[0]
                                  for i in range(0, n, mb)])  # fmt: skip
        ref_logp = None
        if reference is not None:
            ref_logp = torch.cat([sequence_logprobs(reference, batch.select(slice(i, i + mb)), cfg.rollout.temperature)[0]
                                  for i in range(0, n, mb)])  # fmt: skip
    engine_logp = None
    if rollouts[0].logprobs is not None:  # the engine reported its own log-probs (vLLM)
        engine_logp = engine_logprob_tensor(rollouts, batch.completion_mask.shape[1], device)  # [N, T]
    elif cfg.rollout.use_engine_logprobs:
        raise ValueError(
            "rollout.use_engine_logprobs=true needs an engine that reports log-probs (rollout.engine=vllm)"
        )
    trainer_logp = torch.zeros_like(batch.completion_mask)  # [N, T] the old log-probs the loss used
    advantages, est_metrics, keep = estimator.advantages(
        batch, rewards, scored, keep, old_logp, ref_logp
    )  # [N, T]
    mask = batch.completion_mask * keep[:, None].float()  # [N, T]
    kl_in_loss = reference is not None and not estimator.kl_in_reward
    norm = cfg.rollout.max_new_tokens
    stats = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0, "grad_norm": 0.0}
    weight_of = _micro_weights(mask, mb, ac.loss_agg)
    # PPO's critic warm-up: no forward, backward or optimizer step (AdamW would move the weights anyway).
    policy_epochs = 0 if estimator.policy_frozen else ac.inner_epochs
    for _ in range(policy_epochs):
        for i in range(0, n, mb):
            sl = slice(i, i + mb)
            micro, m = batch.select(sl), mask[sl]
            logp, entropy = sequence_logprobs(policy, micro, cfg.rollout.temperature, with_entropy=True)
            old = logp.detach() if on_policy else old_logp[sl]
            pg, clipped = clipped_surrogate(logp, old, advantages[sl], ac.clip_low, ac.clip_high)
            if engine_logp is not None:
                trainer_logp[sl] = old
                if (
                    cfg.rollout.use_engine_logprobs
                ):  # truncated importance sampling: sampled by the engine, not by us
                    pg = pg * tis_weights(old, engine_logp[sl], cfg.rollout.tis_cap)
            loss = pg
            if kl_in_loss:
                kl = kl_penalty(logp, ref_logp[sl], ac.kl_estimator)
                loss = loss + ac.beta * kl
                stats["kl"] += _masked_mean(kl.detach(), m) / ac.inner_epochs * _frac(m, mask)
            w = weight_of(sl)
            total = aggregate(loss, m, ac.loss_agg, norm_length=norm) * w
            last = i + mb >= n  # under DDP, all-reduce the gradients once per optimizer step
            with nullcontext() if last or not isinstance(policy, DDP) else policy.no_sync():
                total.backward()  # on every rank even when m is empty: DDP ranks must run the same backwards
            stats["loss"] += total.item() / ac.inner_epochs
            stats["clip_frac"] += _masked_mean(clipped.float(), m) / ac.inner_epochs * _frac(m, mask)
            stats["entropy"] += _masked_mean(entropy, m) / ac.inner_epochs * _frac(m, mask)
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.optim.max_grad_norm)
        stats["grad_norm"] += grad_norm.item() / ac.inner_epochs
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if ref_logp is not None and not kl_in_loss and old_logp is not None:
        stats["kl"] = _masked_mean(kl_penalty(old_logp, ref_logp, ac.kl_estimator), mask)
    if engine_logp is not None:
        stats |= mismatch_metrics(trainer_logp, engine_logp, batch.completion_mask, cfg.rollout.tis_cap)
    stats |= estimator.update(batch, mask)
    lengths = batch.completion_mask.sum(1)
    return (
        stats
        | est_metrics
        | {
            "completion_len": lengths.mean().item(),
            "truncated_frac": sum(r.finish_reason == "length" for r in rollouts) / n,
            "masked_frac": 1.0 - keep.float().mean().item(),
        }
    )


def score(
    reward_fn, format_fn, format_weight, rollouts, examples: list[Example]
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Rewards [N] (0 where unscored) and a mask [N] of samples that could be scored."""
    texts = [r.text for r in rollouts]
    out = reward_fn(texts, examples)
    scored = torch.tensor([s is not None for s in out.scores])
    rewards = torch.tensor([s if s is not None else 0.0 for s in out.scores], dtype=torch.float32)
    correct = (rewards >= 1.0).float()
    metrics = {f"reward/{k}": v for k, v in out.metrics.items()}
    if format_fn is not None:
        fmt = format_fn(texts, examples)
        rewards = rewards + format_weight * torch.tensor([s or 0.0 for s in fmt.scores])
        metrics["reward/format"] = sum(s or 0.0 for s in fmt.scores) / len(texts)
    metrics |= {
        "reward/mean": rewards[scored].mean().item() if scored.any() else 0.0,
        "reward/std": rewards[scored].std().item() if scored.sum() > 1 else 0.0,
        "accuracy": correct[scored].mean().item() if scored.any() else 0.0,
        "unscored_frac": 1.0 - scored.float().mean().item(),
    }
    return rewards, scored, metrics


def batch_for_step(examples: list[Example], step: int, size: int, seed: int) -> list[Example]:
    """The prompts of ``step``: a stateless function of (seed, step), so a resumed run sees the same data.

    >>> data = [Example(str(i), str(i)) for i in range(5)]
    >>> [e.prompt for e in batch_for_step(data, 2, 3, seed=0)] == [e.prompt for e in batch_for_step(data, 2, 3, seed=0)]
    True
    """
    out = []
    for i in range(step * size, (step + 1) * size):
        epoch, j = divmod(i, len(examples))
        out.append(examples[_permutation(len(examples), seed, epoch)[j]])
    return out


_PERMS: dict[tuple[int, int, int], list[int]] = {}


def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    key = (n, seed, epoch)
    if key not in _PERMS:
        perm = list(range(n))
        random.Random(f"{seed}-{epoch}").shuffle(perm)
        _PERMS.clear()  # keep only the current epoch's order
        _PERMS[key] = perm
    return _PERMS[key]


def prompt_renderer(tokenizer, cfg: Config):
    if not cfg.task.chat_template:
        return lambda ex: ex.prompt
    system = cfg.task.system_prompt

    def render(ex: Example) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": ex.prompt}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return render


def _micro_weights(mask: torch.Tensor, mb: int, mode: str):
    """Weights that make the sum of per-micro-batch aggregates equal the aggregate over the whole batch."""
    n = mask.shape[0]
    total_tokens = mask.sum().clamp(min=1)

    def weight(sl: slice) -> float:
        if mode == "token-mean":
            return (mask[sl].sum() / total_tokens).item()
        return len(range(n)[sl]) / n

    return weight


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return ((x * mask).sum() / mask.sum().clamp(min=1)).item()


def _frac(part: torch.Tensor, whole: torch.Tensor) -> float:
    return (part.sum() / whole.sum().clamp(min=1)).item()


class _GracefulStop:
    """Turn SIGTERM into KeyboardInterrupt at a step boundary, so `kill` saves a checkpoint like Ctrl-C."""

    def __init__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGTERM, self._handler) if _main_thread() else None

    def _handler(self, signum, frame):
        self.requested = True

    def raise_if_requested(self):
        if self.requested:
            raise KeyboardInterrupt

    def restore(self):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def result_line(result: dict) -> str:
    return json.dumps(result)


__all__ = ["train", "update", "score", "batch_for_step", "prompt_renderer", "RolloutBatch", "asdict"]
