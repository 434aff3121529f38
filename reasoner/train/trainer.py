"""The RL loop shared by GRPO, PPO and their variants: rollout -> score -> advantages -> update -> push -> log.

Defaults follow the GRPO paper (Shao et al. 2024): group-normalised outcome rewards, the clipped surrogate
with eps = 0.2, and the k3 KL estimator in the loss with beta = 0.04. Departures are named settings:
- ``algo.loss_agg``: the paper averages per sequence then over the group (``seq-mean-token-mean``, default);
  ``token-mean`` (DAPO) and ``seq-mean-token-sum-norm`` (Dr. GRPO) remove its length bias.
- ``algo.scale_rewards=none`` drops the division by the group's std (Dr. GRPO); ``batch`` uses the batch std.
- ``algo.clip_high`` > ``clip_low`` is DAPO's clip-higher; ``algo.drop_zero_variance`` its dynamic sampling
  without refilling; ``algo.mask_truncated`` its overlong filtering.
- ``algo.refill_rounds`` (DAPO dynamic sampling): groups whose rewards are all equal are dropped and replaced
  from further prompts of the stream, up to that many extra rounds; the paper trains on every group it sampled.
- ``algo.overlong_buffer`` (DAPO): the reward pays a penalty ramping to ``-algo.overlong_penalty`` over the last
  tokens before ``max_new_tokens``; the paper's reward is the outcome alone.
- ``algo.loss=gspo`` (GSPO): one importance ratio per sequence (the geometric mean of its token ratios), clipped
  per sequence; the paper clips each token's ratio.
- ``algo.loss=cispo`` (MiniMax-M1): the clipped importance ratio is a detached weight on log pi, so clipped
  tokens still get a gradient; the paper's min(...) gives them none.
- ``algo.name=rloo``: the baseline is the mean of the other G - 1 rewards and nothing is divided by a std; the
  paper subtracts the group mean and divides by the group std.
- ``algo.name=reinforce_plus_plus``: the KL is paid per token in the reward (not in the loss) and the returns are
  whitened over the whole batch, with no group baseline at all.
- ``algo.name=reinforce_plus_plus_baseline``: the group mean is subtracted, then advantages are whitened over the
  batch instead of divided by each group's std.
- ``algo.name=ppo``: a learned critic and GAE instead of the group baseline (reasoner/train/estimators/ppo.py).
- Log-probs are taken at the sampling temperature, so the ratio and the KL compare like with like.

Interrupts: the first SIGINT (Ctrl-C) or SIGTERM lets the current step finish, saves it and exits (130);
during an evaluation or the SFT warm start, which change no training state, it stops at once and saves the
last step boundary. ``train.resume=true`` then continues exactly. A second signal aborts without saving.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from reasoner.algo import POLICY_LOSSES, overlong_penalty, varying_groups
from reasoner.config import Config, ConfigError
from reasoner.evaluate import SCORE_METRIC, evaluate_model
from reasoner.models import (
    load_policy,
    load_tokenizer,
    load_trainable_policy,
    resolve_model_path,
)
from reasoner.rewards.combine import build_eval_reward, build_reward, check_reward_specs
from reasoner.rollout import Rollout, SamplingParams, make_engine
from reasoner.rollout.base import reward_text
from reasoner.rollout.tools import check_tools, tool_metrics
from reasoner.tasks import get_task, load_examples
from reasoner.tasks.base import Example
from reasoner.train.checkpoint import (
    load_extra,
    load_trainer_state,
    save_checkpoint,
    write_json_atomic,
)
from reasoner.train.distributed import (
    NullLogger,
    all_reduce_mean,
    barrier,
    broadcast_object,
    destroy,
    init_from_env,
    shard,
    wrap_ddp,
)
from reasoner.train.estimators import make_estimator
from reasoner.train.lora import ADAPTER_DIR, AdaptersOff, check_lora, enabled, is_lora, save_merged
from reasoner.train.metrics import MetricsLogger, plot_metrics
from reasoner.train.optim import make_optimizer, make_scheduler
from reasoner.train.run import start_run
from reasoner.train.stop import GracefulStop, Interrupted
from reasoner.train.stream import prompt_renderer, stream_slice
from reasoner.train.update import Learner, Scored, update


def train(cfg: Config, progress: bool = True) -> dict:
    stop = GracefulStop()
    run = None
    try:
        # SFT warm start, models, data, engine; resume from the latest checkpoint
        run = setup(cfg, progress, stop)
        boundary(run, run.start_step, stop)  # the first evaluation (or one a resumed run still owes)
        for step in range(run.start_step, cfg.train.steps):
            batch = collect(run, step)  # rollout -> score, refilled from further prompts (algo.refill_rounds)
            metrics = optimize(run, batch)  # advantages -> loss -> optimizer step -> weights to the engine
            log_step(run, step + 1, batch, metrics)
            boundary(run, step + 1, stop)  # evaluate and checkpoint when due; stop here if a signal came
        return finish(run)
    except Interrupted:
        if run is None:
            print("\n[train] interrupted during the warm start: nothing to save; rerun to start over")
        else:
            run.bar.close()
            run.log.close()
            print(f"\n[train] interrupted: saved step {run.saved_step} to {run.dir}/checkpoints; "
                  "continue with train.resume=true")  # fmt: skip
        raise
    finally:
        stop.restore()


@dataclass
class Run:
    """What a run holds between steps: built by ``setup``, used by the named steps of ``train``."""

    cfg: Config
    world: Any  # reasoner.train.distributed.DistInfo
    dir: Path
    device: torch.device
    tokenizer: Any
    policy: torch.nn.Module  # generation and checkpoints
    model: torch.nn.Module  # the update: ``policy``, DDP-wrapped under torchrun
    reference: (
        Any  # a model, reasoner.train.lora.AdaptersOff (LoRA: the policy with its adapters off), or None
    )
    estimator: Any  # reasoner.train.estimators.Estimator
    task: Any
    train_set: list[Example]
    eval_shard: list[Example]
    eval_size: int
    reward_fn: Callable
    eval_reward: Callable  # the task's reward (task.reward): what the held-out score is measured with
    format_fn: Callable | None
    render: Callable[[Example], str]
    engine: Any  # reasoner.rollout.Engine
    optimizer: torch.optim.Optimizer
    scheduler: Any
    log: Any
    bar: Any
    start_step: int
    saved_step: int | None  # the step of the checkpoint on disk that this process wrote or resumed from
    history: dict = field(default_factory=dict)  # in every checkpoint: evals, stream cursor, samples
    t_start: float = 0.0

    @property
    def learner(self) -> Learner:
        """What the update needs of this run."""
        return Learner(
            cfg=self.cfg, model=self.model, reference=self.reference, estimator=self.estimator,
            optimizer=self.optimizer, pad_id=self.tokenizer.pad_token_id, device=self.device, world=self.world,
        )  # fmt: skip


@dataclass
class Collected(Scored):
    """One step's scored groups (``Scored``) and what collecting them cost."""

    metrics: dict = field(default_factory=dict)
    generated: int = 0  # samples generated this step, refill rounds included
    tokens: int = 0  # completion tokens generated this step
    t_generate: float = 0.0
    t_score: float = 0.0


def setup(cfg: Config, progress: bool, stop: GracefulStop) -> Run:
    t_start = time.time()
    world = (
        init_from_env()
    )  # under torchrun: join the process group (nccl on CUDA, gloo on CPU); else one process
    stop.immediate_ok = (
        not world.enabled
    )  # under DDP a rank must not leave a collective alone: step boundaries only
    run_dir = Path(cfg.train.output_dir)
    started = start_run(cfg, run_dir, resume=cfg.train.resume, write_config=world.is_main,
                        device=world.device if world.enabled else None)  # fmt: skip
    device = started.device
    _check_algo(cfg)  # before anything slow runs

    model_path = resolve_model_path(cfg.model.path)  # a .gguf file: converted once, then a directory
    task = get_task(cfg.task.name)
    # The data first: a missing field or a bad template fails before any model loads.
    train_set = load_examples(cfg.task, "train", cfg.train.seed)  # task.prompt/answer/... applied
    eval_set = load_examples(cfg.task, "test", cfg.train.seed)
    check_reward_specs(cfg, task.reward)  # and a reward function of yours loads
    if cfg.sft.steps > 0 and task.from_fields and cfg.task.solution is None:
        if world.is_main:
            print("[train] no task.solution (reference completions) in the data: skipping the SFT warm start")
    elif cfg.sft.steps > 0:  # offline default: a supervised warm start before RL (cached between runs)
        from reasoner.train.sft import run_sft

        if world.is_main:
            with stop.immediate():  # SFT writes its result atomically: stopping midway leaves no trace
                model_path = str(run_sft(cfg, model_path, Path(cfg.sft.output_dir), progress=progress))
        model_path = broadcast_object(model_path, world)
    ckpt = started.checkpoint
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    policy = load_trainable_policy(cfg, model_path, device, str(ckpt / "policy") if ckpt else None)
    lora = enabled(cfg.model.lora)
    model = wrap_ddp(policy, world)  # the update goes through DDP; generation and checkpoints use `policy`
    reference, reference_path = None, cfg.model.reference or model_path
    if cfg.algo.beta > 0 and lora and cfg.model.reference is None:
        reference = AdaptersOff(policy)  # the base model itself: no second copy of the weights
    elif cfg.algo.beta > 0:
        reference = (
            load_policy(reference_path, cfg.model.dtype, device, cfg.model.attn_implementation)
            .eval()
            .requires_grad_(False)
        )
    estimator = make_estimator(cfg, policy, model_path, device, world)  # PPO: its critic under DDP too

    eval_shard = shard(eval_set, world.rank, world.world_size, even=False)
    reward_fn = build_reward(cfg, task.reward, device)  # the task's reward, or task.rewards weighted
    eval_reward = build_eval_reward(cfg, task, reward_fn, device)
    format_fn = None  # task.format_reward is one of build_reward's terms
    render = prompt_renderer(tokenizer, cfg)
    engine = make_engine(cfg.rollout, policy, tokenizer, model_path)

    optimizer = make_optimizer(policy.parameters(), cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas)
    scheduler = make_scheduler(optimizer, cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.schedule)
    start_step, history = 0, {"evaluated": None}  # the step of the last finished evaluation
    if ckpt:
        state = load_trainer_state(ckpt)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        estimator.load_state_dict(state["estimator"])
        for name, module in estimator.extra_modules().items():
            load_extra(ckpt, name, module)
        start_step, history = state["step"], state["history"]
        history.setdefault("evaluated", start_step)  # older versions saved checkpoints after their evaluation
        engine.sync_weights(policy)  # the engine loaded model_path; the policy resumed from the checkpoint
        print(f"[train] resumed from {ckpt} at step {start_step}")
    log = NullLogger()  # rank 0 alone writes metrics
    if world.is_main:
        log = MetricsLogger(run_dir, cfg.train.tensorboard, resume_step=start_step if ckpt else None)
    bar = tqdm(total=cfg.train.steps, initial=start_step, desc=cfg.algo.name, dynamic_ncols=True,
               disable=not (progress and world.is_main))  # fmt: skip
    return Run(
        cfg=cfg, world=world, dir=run_dir, device=device, tokenizer=tokenizer, policy=policy, model=model,
        reference=reference, estimator=estimator, task=task, train_set=train_set, eval_shard=eval_shard,
        eval_size=len(eval_set), reward_fn=reward_fn, eval_reward=eval_reward, format_fn=format_fn, render=render,
        engine=engine, optimizer=optimizer, scheduler=scheduler, log=log, bar=bar, start_step=start_step,
        saved_step=start_step if ckpt else None, history=history, t_start=t_start,
    )  # fmt: skip


def collect(run: Run, step: int) -> Collected:
    """Generate and score this step's groups from the prompt stream.

    With ``algo.refill_rounds`` (DAPO dynamic sampling) groups whose rewards are all equal are set aside and
    further prompts of the stream are generated, up to that many extra rounds, until this rank has its share of
    ``train.prompts_per_step`` varying groups; a step that runs out of rounds fills up with the set-aside groups
    (the estimator masks them). The stream position is saved in checkpoints, so a resumed run sees the same
    prompts. ``reward/*`` metrics describe the first round, the policy's unfiltered samples.
    """
    cfg, world, n = run.cfg, run.world, run.cfg.rollout.n
    size = cfg.train.prompts_per_step
    want = size // world.world_size  # groups this rank trains on
    cursor = run.history.get("cursor", step * size)  # older checkpoints: one batch per step
    rounds, varying, spare = [], [], []  # varying, spare: (round, group index)
    for round_ in range(cfg.algo.refill_rounds + 1):
        examples = shard(
            stream_slice(run.train_set, cursor, size, cfg.train.seed), world.rank, world.world_size
        )
        cursor += size
        got = rollout_and_score(run, examples, step, round_)
        rounds.append(got)
        if cfg.algo.refill_rounds == 0:
            break
        for g, varies in enumerate(varying_groups(got.rewards, got.scored, n).tolist()):
            (varying if varies else spare).append((got, g))
        if not _any_rank(len(varying) < want, world):  # every rank runs the same rounds
            break
    run.history["cursor"] = cursor
    if cfg.algo.refill_rounds == 0:
        return rounds[0]
    chosen = [(r, slice(g * n, (g + 1) * n)) for r, g in (varying + spare)[:want]]
    rollouts = [x for r, sl in chosen for x in r.rollouts[sl]]
    metrics = rounds[0].metrics | {"dynamic/rounds": len(rounds), "dynamic/samples": sum(r.generated for r in rounds),
                                   "dynamic/varying_groups": min(len(varying), want) / want}  # fmt: skip
    return Collected(
        rollouts=[replace(x, prompt_index=i // n) for i, x in enumerate(rollouts)],
        rewards=torch.cat([r.rewards[sl] for r, sl in chosen]), scored=torch.cat([r.scored[sl] for r, sl in chosen]),
        metrics=metrics, generated=sum(r.generated for r in rounds), tokens=sum(r.tokens for r in rounds),
        t_generate=sum(r.t_generate for r in rounds), t_score=sum(r.t_score for r in rounds),
    )  # fmt: skip


def rollout_and_score(run: Run, examples: list[Example], step: int, round_: int = 0) -> Collected:
    t0 = time.time()
    rollouts = generate(run, examples, step, round_)
    t1 = time.time()
    aligned = [examples[r.prompt_index] for r in rollouts]
    rewards, scored, reward_metrics = score(
        run.reward_fn, run.format_fn, run.cfg.task.format_reward, rollouts, aligned
    )
    rewards = shape_rewards(run.cfg, rewards, rollouts)
    tokens = sum(len(r.completion_ids) for r in rollouts)
    return Collected(
        rollouts=rollouts, rewards=rewards, scored=scored, metrics=reward_metrics, generated=len(rollouts),
        tokens=tokens, t_generate=t1 - t0, t_score=time.time() - t1,
    )  # fmt: skip


# Rounds after the first draw their own seeds; the first keeps the seed a run without refill uses.
REFILL_SEED_STRIDE = 1_000_000_007


def generate(run: Run, examples: list[Example], step: int, round_: int = 0) -> list[Rollout]:
    cfg, world = run.cfg, run.world
    seed = (cfg.train.seed * 100_003 + step) * world.world_size + world.rank + round_ * REFILL_SEED_STRIDE
    params = SamplingParams(n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                            max_new_tokens=cfg.rollout.max_new_tokens, seed=seed)  # fmt: skip
    run.engine.wake_up()
    rollouts = run.engine.generate([run.render(ex) for ex in examples], params)
    run.engine.sleep()
    return rollouts


def shape_rewards(cfg: Config, rewards: torch.Tensor, rollouts: list[Rollout]) -> torch.Tensor:
    """Reward transforms any task can turn on: DAPO's soft overlong punishment (``algo.overlong_buffer``)."""
    if cfg.algo.overlong_buffer <= 0:
        return rewards
    lengths = torch.tensor([len(r.completion_ids) for r in rollouts])
    return rewards + overlong_penalty(
        lengths, cfg.rollout.max_new_tokens, cfg.algo.overlong_buffer, cfg.algo.overlong_penalty
    )


def optimize(run: Run, batch: Collected) -> dict:
    t0 = time.time()
    frozen = run.estimator.policy_frozen  # PPO's critic warm-up: the policy's schedule waits too
    metrics = update(run.learner, batch)
    if not frozen:
        run.scheduler.step()
    run.engine.sync_weights(run.policy)
    return metrics | {"time/update": time.time() - t0}


def log_step(run: Run, step: int, batch: Collected, metrics: dict) -> None:
    run.history["samples"] = run.history.get("samples", (step - 1) * len(batch.rollouts)) + batch.generated
    wall = batch.t_generate + batch.t_score + metrics["time/update"]
    metrics = metrics | batch.metrics | {
        "lr": run.scheduler.get_last_lr()[0], "time/generate": batch.t_generate, "time/score": batch.t_score,
        "tokens_per_s": batch.tokens / wall, "samples": run.history["samples"],
    }  # fmt: skip
    metrics = all_reduce_mean(metrics, run.world, sums=("tokens_per_s", "samples"))  # the mean over ranks
    run.log.log(step, metrics)
    run.bar.update(1)
    run.bar.set_postfix(reward=f"{metrics['reward/mean']:.2f}", kl=f"{metrics.get('kl', 0):.3f}")


def boundary(run: Run, step: int, stop: GracefulStop) -> None:
    """Between two steps: evaluate when due, checkpoint when due, and stop (after saving) if a signal came."""
    cfg, history = run.cfg, run.history
    last = step == cfg.train.steps
    due = step == 0 or last or (cfg.train.eval_every and step % cfg.train.eval_every == 0)
    if due and history.get("evaluated") != step:
        try:
            score = evaluate(run, step, stop)
        except Interrupted:  # stopped midway, nothing logged: the resumed run evaluates this step again
            score = None
        if score is not None:
            history["evaluated"] = step
            if step == 0:
                history["eval_before"] = score
                if run.world.is_main:
                    print(
                        f"[train] {run.task.name}: held-out score before RL {score:.3f} on {run.eval_size} prompts"
                    )
            if last:
                history["eval_after"] = score
    requested = _any_rank(stop.requested, run.world)
    save_due = cfg.train.save_every and step % cfg.train.save_every == 0 and step > 0
    if (last or save_due or requested) and run.saved_step != step:
        checkpoint(run, step)
    if requested:
        raise Interrupted


def evaluate(run: Run, step: int, stop: GracefulStop) -> float:
    cfg = run.cfg
    run.engine.wake_up()
    with stop.immediate():  # generation only: nothing of the training state changes
        report = evaluate_model(
            run.engine, run.task, run.eval_shard, temperature=cfg.train.eval_temperature,
            max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.train.seed, render=run.render, progress=False,
            batch_prompts=max(1, cfg.rollout.batch_size), reward=run.eval_reward,
        )  # fmt: skip
    counts = ("examples", "samples", "correct", "unscored")
    metrics = all_reduce_mean(report.metrics, run.world, weight=len(run.eval_shard), sums=counts)
    score = metrics[SCORE_METRIC[run.task.kind]]
    run.log.log(step, {"eval/score": score, **{f"eval/{k}": v for k, v in metrics.items()}})
    # for the result line: how the policy used its tool, before and after
    if "tool_calls_per_answer" in metrics:
        run.history.setdefault("tools", {})[str(step)] = {
            k: v for k, v in metrics.items() if k.startswith("tool")
        }
    return score


def checkpoint(run: Run, step: int) -> None:
    state = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
             "history": run.history, "estimator": run.estimator.state_dict()}  # fmt: skip
    if run.world.is_main:  # DDP keeps every rank's policy and optimizer identical
        save_checkpoint(run.dir, step, run.policy, run.tokenizer, state, run.estimator.extra_modules())
    barrier(run.world)
    run.saved_step = step


def finish(run: Run) -> dict:
    cfg, history, world = run.cfg, run.history, run.world
    run.bar.close()
    run.log.close()
    if world.is_main and is_lora(run.policy):  # final-adapter/ for peft, the merged model in final/
        run.policy = save_merged(run.policy, run.tokenizer, run.dir / "final", run.dir / ADAPTER_DIR)
    elif world.is_main:
        run.policy.save_pretrained(run.dir / "final")
        run.tokenizer.save_pretrained(run.dir / "final")
    if world.is_main:
        plot_metrics(
            run.dir / "metrics.jsonl", run.dir / "curves.png", title=f"{cfg.algo.name} on {run.task.name}"
        )
    samples = history.get("samples", 0)  # generated by this rank, refill rounds included
    result = {
        "task": run.task.name, "algo": cfg.algo.name, "eval_before": round(history["eval_before"], 4),
        "eval_after": round(history["eval_after"], 4), "gain": round(history["eval_after"] - history["eval_before"], 4),
        "steps": cfg.train.steps, "samples": samples * world.world_size, "eval_prompts": run.eval_size,
        "wall_s": round(time.time() - run.t_start, 1), "model": cfg.model.path, "output_dir": str(run.dir),
    }  # fmt: skip
    if enabled(cfg.model.lora):
        result["adapter"] = str(run.dir / ADAPTER_DIR)
    tools = history.get("tools", {})
    if "0" in tools and str(cfg.train.steps) in tools:
        before, after = tools["0"], tools[str(cfg.train.steps)]
        result |= {f"{k}_before": round(v, 4) for k, v in before.items()}
        result |= {f"{k}_after": round(v, 4) for k, v in after.items()}
        result["tool_success_rate"] = round(after["tool_success_rate"], 4)
    if world.is_main:
        write_json_atomic(run.dir / "result.json", result)
    # The DDP wrappers (their reducers hold the process group) go before the group does, not when train()'s
    # locals are freed after it: under gloo a rank now and then blocked for good at that point.
    run.model = run.policy
    if getattr(run.estimator, "critic", None) is not None:
        run.estimator.model = run.estimator.critic
    gc.collect()
    destroy(world)
    return result


def _check_algo(cfg: Config) -> None:

    try:
        POLICY_LOSSES.get(cfg.algo.loss)
    except KeyError as e:
        raise ConfigError(f"algo.loss: {e.args[0]}") from None
    check_lora(cfg.model.lora)
    check_tools(cfg.rollout)


def _any_rank(flag: bool, world) -> bool:
    """True on every rank when ``flag`` is True on any rank (one collective under torchrun)."""
    if not world.enabled:
        return flag
    return all_reduce_mean({"flag": float(flag)}, world)["flag"] > 0


def score(
    reward_fn, format_fn, format_weight, rollouts, examples: list[Example]
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Rewards [N] (0 where unscored) and a mask [N] of samples that could be scored.

    With tools the reward scores the policy's own text (tool outputs left out), and an answer whose tool call the
    sandbox itself failed to run is unscored, like a code reward's sandbox failure."""
    texts = [reward_text(r) for r in rollouts]
    out = reward_fn(texts, examples)
    scores = [
        None if r.tools is not None and r.tools.infra_error else s
        for r, s in zip(rollouts, out.scores, strict=True)
    ]
    scored = torch.tensor([s is not None for s in scores])
    rewards = torch.tensor([s if s is not None else 0.0 for s in scores], dtype=torch.float32)
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
    if any(r.tools is not None for r in rollouts):
        metrics |= tool_metrics(rollouts)
    return rewards, scored, metrics


def result_line(result: dict) -> str:
    return json.dumps(result)


__all__ = ["train", "score", "result_line"]
