"""Reward-model training (Bradley–Terry) on preference pairs, and its evaluation; scoring is in rewards/reward_model.py.

Data is TRL's preference format, read through ``datasets`` (local .jsonl/.json/.parquet or a hub id) or given
as a list of row dicts:

- explicit prompt: ``{prompt, chosen, rejected}`` (strings; the RM scores ``prompt + response``);
- implicit prompt: ``{chosen, rejected}``, each the whole text (e.g. Anthropic/hh-rlhf);
- conversational: the same with lists of ``{role, content}`` messages, rendered with the tokenizer's chat template;
- optional ``margin`` (per-pair margin in the loss) and ``weight`` (per-pair loss weight, e.g. recency);
- unpaired (TRL's KTO format): ``{prompt, completion, label}``, one response and whether it was liked (a single
  thumb, a "both bad" tie). These train a pointwise term beside the pairwise one: ``rm.pointwise_coef`` times
  ``pointwise_loss`` (-log σ(r) liked, -log σ(-r) disliked), and may be the only rows (thumbs-only feedback).

Field names are configurable (``rm.prompt_field`` ...); every other field is kept as metadata, and
`reasoner rm eval` reports accuracy per value of the categorical ones. A bad row fails naming the source, the
row (1-based) and the field.

The loop is `reasoner train`'s machinery on pairs: ``optim.make_optimizer``/``make_scheduler``, stateless
batches (``stream.batch_for_step``), atomic checkpoints and resume (``checkpoint.py``), JSON-lines metrics
and a PNG (``metrics.py``), a tqdm bar, Ctrl-C/SIGTERM saving a checkpoint. ``rm.lm_coef`` adds a language-modelling
term on the chosen responses through the backbone's LM head (hidden-state regularisation, Yang et al. 2024); the
head is used in training only, and the saved model is the plain sequence classifier either way.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from reasoner.algo.pairwise import (
    bradley_terry_loss,
    pairwise_accuracy,
    pointwise_accuracy,
    pointwise_loss,
    response_lm_loss,
)
from reasoner.config import Config, RMConfig
from reasoner.data import DataError, load_records
from reasoner.models import default_device, resolve_model_path
from reasoner.rewards.reward_model import STATS_FILE, encode_texts, load_rm, score_texts
from reasoner.train.checkpoint import (
    load_trainer_state,
    save_checkpoint,
    write_json_atomic,
)
from reasoner.train.lora import ADAPTER_DIR, add_lora, check_resume, enabled, load_adapter, save_merged
from reasoner.train.metrics import MetricsLogger, plot_metrics
from reasoner.train.optim import make_optimizer, make_scheduler

RM_PLOT_KEYS = [("loss", "BT loss"), ("accuracy", "train accuracy"), ("eval/accuracy", "held-out accuracy"),
                ("eval/margin", "held-out margin"), ("lr", "learning rate")]  # fmt: skip


@dataclass
class Pair:
    chosen: str  # the whole text the RM scores (prompt + response, or the rendered conversation)
    rejected: str
    margin: float = 0.0
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    chat: bool = False  # rendered with the chat template
    prompt: str = ""  # the start of both texts that is the prompt (skipped by the auxiliary LM loss)


@dataclass
class Point:
    text: str  # the whole text the RM scores (prompt + completion)
    label: bool  # liked
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)


# ---- data ------------------------------------------------------------------------------------------


def is_unpaired(row: Any, rc: RMConfig) -> bool:
    return isinstance(row, dict) and rc.label_field in row and rc.chosen_field not in row


def load_rows(data, tokenizer, rc: RMConfig, split: str = "train") -> tuple[list[Pair], list[Point]]:
    """Pairs and unpaired rows (``{prompt, completion, label}``) from one source, each checked and rendered."""
    if isinstance(data, (str, Path)):
        source, rows = str(data), load_records(str(data), split)
    else:
        source, rows = "<rows>", list(data)
    if not rows:
        raise DataError(f"{source}: no preference rows")
    pairs, points = [], []
    for i, row in enumerate(rows):
        if is_unpaired(row, rc):
            points.append(_point(row, i + 1, source, tokenizer, rc))
        else:
            pairs.append(_pair(row, i + 1, source, tokenizer, rc))
    return pairs, points


def _point(row: dict, n: int, source: str, tokenizer, rc: RMConfig) -> Point:
    where = f"{source}: row {n}"
    label = row[rc.label_field]
    if not isinstance(label, bool):
        raise DataError(f"{where}, field {rc.label_field!r}: must be true or false, got {label!r}")
    if row.get(rc.completion_field) is None:
        raise DataError(f"{where}: an unpaired row needs {rc.completion_field!r} beside {rc.label_field!r}")
    prompt = row.get(rc.prompt_field)
    text = _render(prompt, row[rc.completion_field], tokenizer, f"{where}, field {rc.completion_field!r}",
                   f"{where}, field {rc.prompt_field!r}")  # fmt: skip
    weight = row.get(rc.weight_field, 1.0)
    weight = 1.0 if weight is None else weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise DataError(f"{where}, field {rc.weight_field!r}: must be a number >= 0, got {weight!r}")
    skip = {rc.prompt_field, rc.completion_field, rc.label_field, rc.weight_field}
    return Point(text, label, float(weight), {k: v for k, v in row.items() if k not in skip})


def load_pairs(data: str | Sequence[dict], tokenizer, rc: RMConfig, split: str = "train") -> list[Pair]:
    """Preference rows from a path / hub id / list of dicts, checked and rendered to texts."""
    if isinstance(data, (str, Path)):
        source = str(data)
        rows = load_records(source, split)
    else:
        source, rows = "<rows>", list(data)
    if not rows:
        raise DataError(f"{source}: no preference rows")
    return [_pair(row, i + 1, source, tokenizer, rc) for i, row in enumerate(rows)]


def _pair(row: dict, n: int, source: str, tokenizer, rc: RMConfig) -> Pair:
    where = f"{source}: row {n}"
    if not isinstance(row, dict):
        raise DataError(
            f"{where} is {type(row).__name__}, not a mapping with {rc.chosen_field!r} and {rc.rejected_field!r}"
        )
    for key in (rc.chosen_field, rc.rejected_field):
        if row.get(key) is None:
            present = ", ".join(sorted(k for k, v in row.items() if v is not None))
            raise DataError(
                f"{where} has no field {key!r} (present: {present}); set rm.{'chosen' if key == rc.chosen_field else 'rejected'}_field to rename it"
            )
    prompt = row.get(rc.prompt_field)
    chosen = _render(
        prompt,
        row[rc.chosen_field],
        tokenizer,
        f"{where}, field {rc.chosen_field!r}",
        f"{where}, field {rc.prompt_field!r}",
    )
    rejected = _render(
        prompt,
        row[rc.rejected_field],
        tokenizer,
        f"{where}, field {rc.rejected_field!r}",
        f"{where}, field {rc.prompt_field!r}",
    )
    nums = {}
    for key, default in ((rc.margin_field, 0.0), (rc.weight_field, 1.0)):
        value = row.get(key, default)
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"{where}, field {key!r}: must be a number, got {value!r}")
        if key == rc.weight_field and value < 0:
            raise DataError(f"{where}, field {key!r}: a loss weight must be >= 0, got {value!r}")
        nums[key] = float(value)
    skip = {rc.prompt_field, rc.chosen_field, rc.rejected_field, rc.margin_field, rc.weight_field}
    meta = {k: v for k, v in row.items() if k not in skip}
    chat = isinstance(row[rc.chosen_field], list)
    # The prompt: given, or (implicit and conversational rows) the text both responses share.
    shared = prompt if isinstance(prompt, str) and not chat else chosen[: _shared_len(chosen, rejected)]
    return Pair(chosen, rejected, nums[rc.margin_field], nums[rc.weight_field], meta, chat, shared)


def _shared_len(a: Sequence, b: Sequence) -> int:
    """How many leading items ``a`` and ``b`` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _render(prompt: Any, response: Any, tokenizer, where: str, prompt_where: str) -> str:
    if isinstance(response, str):
        if prompt is not None and not isinstance(prompt, str):
            raise DataError(
                f"{prompt_where}: a string response needs a string prompt, got {type(prompt).__name__}"
            )
        # An empty answer with a prompt is a real outcome (the policy stopped at once and people rejected it);
        # the RM must learn to score it. Only a row with no text at all is broken.
        if not response.strip() and not (prompt or "").strip():
            raise DataError(f"{where}: empty response to an empty prompt (no text to score)")
        return (prompt or "") + response
    if isinstance(response, list):
        messages = ([] if prompt is None else _messages(prompt, prompt_where)) + _messages(response, where)
        if not messages or messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: a conversation must end with an assistant message")
        return tokenizer.apply_chat_template(messages, tokenize=False)
    raise DataError(
        f"{where}: must be a string or a list of {{role, content}} messages, got {type(response).__name__}"
    )


def _messages(value: Any, where: str) -> list[dict]:
    if not isinstance(value, list):
        raise DataError(
            f"{where}: a conversational row needs a list of {{role, content}} messages here, got {type(value).__name__}"
        )
    for j, m in enumerate(value):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise DataError(f"{where}, message {j + 1}: must be {{'role': str, 'content': str}}, got {m!r}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


# ---- training --------------------------------------------------------------------------------------


def pair_scores(
    model, tokenizer, pairs: list[Pair], max_length: int, device, lm_head=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(r_chosen [B], r_rejected [B], LM loss of the chosen responses or None) with gradients: one forward
    over the 2B texts. With ``lm_head`` (``rm_lm_head``) the backbone's final hidden states, the ones the score
    head reads, also go through the LM head: the loss is ``response_lm_loss`` on the chosen responses."""
    enc = encode_texts(tokenizer, [p.chosen for p in pairs] + [p.rejected for p in pairs], max_length, device)
    if lm_head is None:
        r = model(**enc).logits[:, 0].float()  # [2B]
        return r[: len(pairs)], r[len(pairs) :], None
    hidden = {}

    def keep(module, args, out) -> None:  # returns None: the forward's output is unchanged
        hidden["h"] = out[0]  # [2B, L, H] the final (normed) hidden states

    hook = _backbone(model).register_forward_hook(keep)
    try:
        r = model(**enc).logits[:, 0].float()  # [2B]
    finally:
        hook.remove()
    n = len(pairs)
    ids = enc["input_ids"][:n]  # [B, L] the chosen texts
    mask = enc["attention_mask"][:n].clone()
    for i, p in enumerate(pairs):  # mask out the prompt's tokens (those still in the kept window)
        full = tokenizer(p.chosen)["input_ids"]
        shared = _shared_len(full, tokenizer(p.prompt)["input_ids"]) if p.prompt else 0
        mask[i, : max(0, shared - (len(full) - min(len(full), max_length)))] = 0
    lm = response_lm_loss(lm_head(hidden["h"][:n]), ids, mask)
    return r[:n], r[n:], lm


def _backbone(model) -> torch.nn.Module:
    """The transformer under the score head (through a peft wrapper too): its output is the final hidden states."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model


def rm_lm_head(model, model_path: str):
    """The LM head of the auxiliary loss, as a function of hidden states [B, L, H] -> logits [B, L, V]: the RM's
    own input embeddings where the model ties them (the tiny model, many small LMs), so it trains with the RM;
    else the causal LM's head loaded from ``model_path``, frozen (it shapes the hidden states; it is not saved)."""
    emb = model.get_input_embeddings()
    text_config = model.config.get_text_config()
    if getattr(text_config, "tie_word_embeddings", False):
        return lambda h: torch.nn.functional.linear(h, emb.weight)
    from transformers import AutoModelForCausalLM

    causal, info = AutoModelForCausalLM.from_pretrained(model_path, output_loading_info=True)
    out = causal.get_output_embeddings()
    missing = [k for k in info["missing_keys"] if k.startswith("lm_head")]
    if out is None or missing:
        raise ValueError(
            f"rm.lm_coef > 0 needs the causal LM's head, but {model_path} has none (a reward-model directory of a "
            "model with untied embeddings?): start from the causal LM, or set rm.lm_coef=0"
        )
    out = out.requires_grad_(False).to(emb.weight.device)
    del causal
    return lambda h: out(h.to(out.weight.dtype))


TINY_PARAMS = 50_000_000
TINY_STEPS = 3000


def _tiny(model) -> bool:
    return sum(p.numel() for p in model.parameters()) < TINY_PARAMS


def default_lr(model, lora: bool) -> float:
    """``rm.lr`` when unset: 1e-3 for a model under ``TINY_PARAMS`` parameters (the tiny character model learns too
    little at 1e-4: ``benchmarks/rm_unseen.py`` ranks refusal pairs 0.72 against 0.995 at 1e-3), 1e-4 for LoRA
    adapters, 1e-5 for full fine-tuning of a larger model (the order of published reward-model recipes)."""
    return 1e-3 if _tiny(model) else 1e-4 if lora else 1e-5


def default_lm_coef(model) -> float:
    """``rm.lm_coef`` when unset: 1.0 for a model under ``TINY_PARAMS`` parameters, else 0. A model that small
    comes with no pretrained knowledge, and one bit per pair does not teach it what a response says: on
    ``benchmarks/rm_unseen.py``'s sum pairs alone, 3,000 steps ranked held-out pairs 0.55 without the LM term and
    0.87 with it. A pretrained model already has those features (published recipes use no LM term or a small one)."""
    return 1.0 if _tiny(model) else 0.0


def default_weight_decay(model) -> float:
    """``rm.weight_decay`` when unset: 0.1 for a model under ``TINY_PARAMS`` parameters, else 0 (TRL's and
    OpenRLHF's default). With the LM term the tiny model learns which stated sums are right late in training, and
    weight decay brings it sooner: ``benchmarks/rm_unseen.py``, 3,000 steps, sums 0.86 at 0.1 and 0.64 at 0."""
    return 0.1 if _tiny(model) else 0.0


def default_steps(model, pairs: int, pairs_per_step: int) -> int:
    """``rm.steps`` when unset: one epoch (the usual reward-model recipe: more overfits the pairs), and for a model
    under ``TINY_PARAMS`` parameters at least ``TINY_STEPS``. The tiny model learns sums last: on
    ``benchmarks/rm_unseen.py`` a 2,000-step run left them at chance (0.52) and a 3,000-step one reached 0.86."""
    epoch = -(-pairs // pairs_per_step)
    return max(epoch, TINY_STEPS) if _tiny(model) else epoch


def train_reward_model(
    cfg: Config, model_path: str, data, eval_data=None, out_dir=None, progress: bool = True
) -> dict:
    """Train a Bradley–Terry RM on ``data`` from ``model_path`` (a causal LM, or an RM directory = warm start);
    save it under ``out_dir/final`` with its tokenizer and reward stats; return the result dict."""
    from reasoner.train.run import start_run
    from reasoner.train.stop import GracefulStop, Interrupted
    from reasoner.train.stream import batch_for_step

    t_start, rc = time.time(), cfg.rm
    model_path = resolve_model_path(model_path)  # a .gguf file: converted once, then a directory
    run = Path(out_dir or rc.output_dir)
    started = start_run(cfg, run, resume=rc.resume)
    device, ckpt = started.device, started.checkpoint
    lora = enabled(cfg.model.lora)  # LoRA: a frozen base with adapters; the score head trains in full
    if ckpt:
        check_resume(cfg.model.lora, ckpt / "policy")
    model, tokenizer = load_rm(model_path if lora or not ckpt else str(ckpt / "policy"), device)
    if lora:  # a LoRA checkpoint holds the adapter (and the head): it goes back onto model_path
        model = load_adapter(model, ckpt / "policy") if ckpt else add_lora(model, cfg.model.lora, "SEQ_CLS")
    tokenizer.padding_side = "right"
    pairs, points = load_rows(data, tokenizer, rc, "train")
    eval_pairs, eval_points = (
        load_rows(eval_data, tokenizer, rc, "test") if eval_data is not None else ([], [])
    )
    if not pairs and not rc.pointwise_coef:
        raise DataError(
            "only unpaired rows {prompt, completion, label} and rm.pointwise_coef=0: nothing to train on"
        )
    chat = any(p.chat for p in pairs)  # conversational rows: RL-time scoring renders with the chat template

    lr = rc.lr if rc.lr is not None else default_lr(model, lora)
    lm_coef = rc.lm_coef if rc.lm_coef is not None else default_lm_coef(model)
    weight_decay = rc.weight_decay if rc.weight_decay is not None else default_weight_decay(model)
    steps = (
        rc.steps
        if rc.steps is not None
        else default_steps(model, max(len(pairs), len(points)), rc.batch_size * rc.grad_accum)
    )
    settings = {"lr": lr, "lm_coef": lm_coef, "weight_decay": weight_decay, "steps": steps}
    chosen = {k: v for k, v in settings.items() if getattr(rc, k) is None}
    if chosen:
        print(f"[rm] not set, chosen for this model's size and data (reasoner.rlhf.rm_training.default_*): "
              f"{' '.join(f'rm.{k}={v:g}' for k, v in chosen.items())}; set them to choose")  # fmt: skip
    lm_head = rm_lm_head(model, model_path) if lm_coef else None
    optimizer = make_optimizer(model.parameters(), lr, weight_decay)
    scheduler = make_scheduler(optimizer, rc.warmup_steps, steps, rc.schedule)
    start, history = 0, {}
    if ckpt:
        state = load_trainer_state(ckpt)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = state["step"], state["history"]
        print(f"[rm] resumed from {ckpt} at step {start}")
    log = MetricsLogger(run, cfg.train.tensorboard, resume_step=start if ckpt else None)

    def evaluate(step: int) -> dict:
        if not eval_pairs and not eval_points:
            return {}
        m = rows_metrics(
            model, tokenizer, eval_pairs, eval_points, rc.max_length, cfg.reward_model.batch_size
        )
        log.log(step, {f"eval/{k}": v for k, v in m.items()})
        history["eval"] = m
        return m

    def checkpoint(step: int) -> None:
        save_checkpoint(run, step, model, tokenizer, {"optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "history": history})  # fmt: skip

    model.train()
    bar = tqdm(
        range(start, steps),
        desc="rm",
        disable=not progress,
        dynamic_ncols=True,
        initial=start,
        total=steps,
    )
    # Ctrl-C / SIGTERM only set a flag: the step in flight finishes, then that step is saved (a second aborts).
    stop = GracefulStop()
    try:
        for step in bar:
            stats = defaultdict(float)
            for k in range(rc.grad_accum):  # micro-batches of one optimizer step
                loss = torch.zeros((), device=device)
                if pairs:
                    micro = batch_for_step(pairs, step * rc.grad_accum + k, rc.batch_size, cfg.train.seed)
                    r_c, r_r, lm = pair_scores(model, tokenizer, micro, rc.max_length, device, lm_head)
                    margin = torch.tensor([p.margin for p in micro], device=device)
                    weight = torch.tensor([p.weight for p in micro], device=device)
                    loss = bradley_terry_loss(r_c, r_r, margin, weight, rc.center_coef) / rc.grad_accum
                    if lm is not None:
                        stats["bt_loss"] += loss.item()
                        stats["lm_loss"] += lm.item() / rc.grad_accum
                        loss = loss + lm_coef * lm / rc.grad_accum
                    stats["accuracy"] += pairwise_accuracy(r_c, r_r).mean().item() / rc.grad_accum
                    stats["margin"] += (r_c - r_r).mean().item() / rc.grad_accum
                if points and rc.pointwise_coef:
                    mp = batch_for_step(points, step * rc.grad_accum + k, rc.batch_size, cfg.train.seed + 1)
                    r, label, w = point_scores(model, tokenizer, mp, rc.max_length, device)
                    point = pointwise_loss(r, label, w) / rc.grad_accum
                    stats["point_loss"] += point.item()
                    stats["point_accuracy"] += pointwise_accuracy(r, label).mean().item() / rc.grad_accum
                    loss = loss + rc.pointwise_coef * point
                loss.backward()
                stats["loss"] += loss.item()
            stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), rc.max_grad_norm).item()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            log.log(step + 1, dict(stats) | {"lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['accuracy']:.2f}")
            if rc.eval_every and (step + 1) % rc.eval_every == 0 and step + 1 < steps:
                evaluate(step + 1)
            if rc.save_every and (step + 1) % rc.save_every == 0:
                checkpoint(step + 1)
            if stop.requested:
                bar.close()
                checkpoint(step + 1)  # the step that just finished
                log.close()
                print(
                    f"\n[rm] interrupted: saved step {step + 1} to {run}/checkpoints; continue with rm.resume=true"
                )
                raise Interrupted
    finally:
        stop.restore()
    bar.close()

    final_eval = evaluate(steps)
    if rc.save_every:
        checkpoint(steps)
    log.close()
    # Reward mean/std over training responses, saved beside the model for normalisation at RL time.
    sample = random.Random(cfg.train.seed).sample(pairs, min(len(pairs), max(1, rc.stats_samples // 2)))
    texts = [p.chosen for p in sample] + [p.rejected for p in sample]
    texts += [
        p.text for p in random.Random(cfg.train.seed).sample(points, min(len(points), rc.stats_samples))
    ]
    train_scores = score_texts(model, tokenizer, texts, cfg.reward_model.batch_size, rc.max_length)
    stats = {"mean": train_scores.mean().item(), "std": train_scores.std(unbiased=False).item(), "chat": chat,
             "max_length": rc.max_length, "samples": len(texts)}  # fmt: skip
    final = run / "final"
    if lora:  # final-adapter/ for peft; the merged model in final/, which load_rm and rm eval read as any RM
        model = save_merged(model, tokenizer, final, run / ADAPTER_DIR)
    else:
        model.save_pretrained(final)
        tokenizer.save_pretrained(final)
    write_json_atomic(final / STATS_FILE, stats)
    plot_metrics(
        run / "metrics.jsonl", run / "curves.png", title="reward model (Bradley–Terry)", keys=RM_PLOT_KEYS
    )
    result = {
        "accuracy": round(final_eval["accuracy"], 4) if final_eval else None,
        "margin": round(final_eval["margin"], 4) if "margin" in final_eval else None,
        "point_accuracy": round(final_eval["point_accuracy"], 4) if "point_accuracy" in final_eval else None,
        "model": str(final), **settings, "pairs": len(pairs), "points": len(points),
        "eval_pairs": len(eval_pairs), "eval_points": len(eval_points),
        "reward_mean": round(stats["mean"], 4), "reward_std": round(stats["std"], 4),
        "wall_s": round(time.time() - t_start, 1), "output_dir": str(run),
    }  # fmt: skip
    if lora:
        result["adapter"] = str(run / ADAPTER_DIR)
    write_json_atomic(run / "result.json", result)
    return result


def point_scores(
    model, tokenizer, points: list[Point], max_length: int, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores [B] with gradients, labels [B], weights [B]) of unpaired rows: one forward over their texts."""
    enc = encode_texts(tokenizer, [p.text for p in points], max_length, device)
    r = model(**enc).logits[:, 0].float()  # [B]
    label = torch.tensor([float(p.label) for p in points], device=device)
    weight = torch.tensor([p.weight for p in points], device=device)
    return r, label, weight


def rows_metrics(
    model, tokenizer, pairs: list[Pair], points: list[Point], max_length: int, batch_size: int = 64
) -> dict[str, float]:
    """``pair_metrics`` of the pairs and ``point_accuracy`` of the unpaired rows; ``accuracy`` is the pairwise
    one when there are pairs, else the pointwise one (the RM's ranking of liked above disliked at 0)."""
    m = pair_metrics(model, tokenizer, pairs, max_length, batch_size) if pairs else {}
    if points:
        r = score_texts(model, tokenizer, [p.text for p in points], batch_size, max_length)
        label = torch.tensor([float(p.label) for p in points])
        m["point_accuracy"] = pointwise_accuracy(r.cpu(), label).mean().item()
        m.setdefault("accuracy", m["point_accuracy"])
    return m


def pair_metrics(
    model, tokenizer, pairs: list[Pair], max_length: int, batch_size: int = 64
) -> dict[str, float]:
    r_c, r_r = _score_pairs(model, tokenizer, pairs, max_length, batch_size)
    both = torch.cat([r_c, r_r])
    return {"accuracy": pairwise_accuracy(r_c, r_r).mean().item(), "margin": (r_c - r_r).mean().item(),
            "reward_mean": both.mean().item(), "reward_std": both.std(unbiased=False).item()}  # fmt: skip


def _score_pairs(model, tokenizer, pairs, max_length, batch_size):
    texts = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    scores = score_texts(model, tokenizer, texts, batch_size, max_length)
    return scores[: len(pairs)], scores[len(pairs) :]


# ---- evaluation ------------------------------------------------------------------------------------

MAX_CATEGORIES = 50  # a metadata field with more distinct values than this is not categorical


def evaluate_reward_model(model_dir: str, data, cfg: Config | None = None) -> dict:
    """Pairwise accuracy, margins and accuracy per value of each categorical metadata field, with records."""
    cfg = cfg or Config()
    model, tokenizer = load_rm(str(model_dir), default_device())
    stats_file = Path(model_dir) / STATS_FILE
    max_length = json.loads(stats_file.read_text()).get("max_length", 512) if stats_file.is_file() else 512
    pairs, points = load_rows(data, tokenizer, cfg.rm, "test")
    if not pairs:  # unpaired rows only (thumbs): the pointwise accuracy
        m = rows_metrics(model, tokenizer, [], points, max_length, cfg.reward_model.batch_size)
        return {"accuracy": round(m["accuracy"], 4), "point_accuracy": round(m["point_accuracy"], 4),
                "pairs": 0, "points": len(points), "model": str(model_dir)}  # fmt: skip
    r_c, r_r = _score_pairs(model, tokenizer, pairs, max_length, cfg.reward_model.batch_size)
    acc = pairwise_accuracy(r_c, r_r)
    margins = r_c - r_r
    by_field: dict[str, dict[str, dict]] = {}
    for key in sorted({k for p in pairs for k in p.meta}):
        values = [p.meta.get(key) for p in pairs]
        if not all(isinstance(v, (str, bool, int)) or v is None for v in values):
            continue
        if len({str(v) for v in values}) > MAX_CATEGORIES:
            continue
        groups: dict[str, list[int]] = defaultdict(list)
        for i, v in enumerate(values):
            groups[str(v)].append(i)
        by_field[key] = {v: {"accuracy": round(acc[idx].mean().item(), 4), "pairs": len(idx),
                             "margin": round(margins[idx].mean().item(), 4)} for v, idx in sorted(groups.items())}  # fmt: skip
    report = {
        "accuracy": round(acc.mean().item(), 4), "pairs": len(pairs), "margin_mean": round(margins.mean().item(), 4),
        "margin_median": round(margins.median().item(), 4), "reward_mean": round(torch.cat([r_c, r_r]).mean().item(), 4),
        "by_field": by_field, "model": str(model_dir),
        "records": [{"chosen_score": round(a, 5), "rejected_score": round(b, 5), **p.meta}
                    for a, b, p in zip(r_c.tolist(), r_r.tolist(), pairs, strict=True)],
    }  # fmt: skip
    report["markdown"] = markdown_line(report)
    return report


def markdown_line(report: dict) -> str:
    parts = [
        f"| {report['model']} | pairs {report['pairs']} | accuracy {report['accuracy']:.3f} | margin {report['margin_mean']:.3f} |"
    ]
    for key, groups in report["by_field"].items():
        parts.append(" ".join(f"{key}={v}: {g['accuracy']:.3f} |" for v, g in groups.items()))
    return " ".join(parts)
