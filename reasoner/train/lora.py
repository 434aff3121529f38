"""LoRA through ``peft``: adapters on a frozen base, the base as the KL reference, merged weights for engines.

``model.lora.r`` > 0 turns it on for the policy (`reasoner train`), the PPO critic and `reasoner rm train`:

- **Training.** ``add_lora`` wraps a model in a ``peft`` model: the base weights are frozen (and stay in
  ``model.dtype``: bf16 on CUDA, since no optimizer holds fp32 copies of them), the adapters are fp32 and are
  the only parameters with gradients, so the optimizer's state is the adapters' alone.
- **Reference.** ``AdaptersOff(policy)`` is the base model: the policy's own forward with the adapters switched
  off (``disable_adapter()``), so a KL penalty needs no second copy of the weights.
- **Engines.** ``named_merged_weights`` gives the weights an engine loads (checkpoint names, adapters merged).
  Each merged tensor is ``W + B @ A * alpha / r`` computed *out of place* when a push bucket needs it
  (``MergedWeight``): the policy's base weights are never written. Merging in place and unmerging after the
  push would round twice in bf16 (``W + d - d != W``), so the frozen base would drift a little every step.
- **Saving.** ``save_merged`` writes ``final-adapter/`` (``PeftModel.from_pretrained`` loads it) and the merged
  model in ``final/`` (plain ``from_pretrained`` loads it; eval, serve and vLLM use it as any model).
  Checkpoints hold the adapter only (``save_pretrained`` of a ``peft`` model); resume loads it onto the base.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reasoner.config import ConfigError, LoraSettings

ADAPTER_DIR = "final-adapter"
_BASE_PREFIX = "base_model.model."  # what peft puts before the wrapped model's parameter names


def check_lora(lora: LoraSettings, key: str = "model.lora") -> None:
    """Fail with a message naming the bad setting (called before anything slow runs)."""
    if lora.r < 0:
        raise ConfigError(f"{key}.r must be >= 0 (0 = LoRA off), got {lora.r}")
    if lora.r == 0:
        return
    if lora.alpha <= 0:
        raise ConfigError(f"{key}.alpha must be > 0 (the adapter is scaled by alpha / r), got {lora.alpha}")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"{key}.dropout must be in [0, 1), got {lora.dropout}")
    targets = lora.target_modules
    if isinstance(targets, str) and targets != "all-linear":
        raise ConfigError(
            f"{key}.target_modules must be a list of module names (e.g. [q_proj, v_proj]) or 'all-linear'; "
            f"got the string {targets!r} (write [{targets}] for one module)"
        )
    if isinstance(targets, list) and not targets:
        raise ConfigError(f"{key}.target_modules is empty: list module names or give 'all-linear'")


def enabled(lora: LoraSettings) -> bool:
    return lora.r > 0


def is_lora(model: Any) -> bool:
    """True for a ``peft`` model (a DDP wrapper around one counts). Never imports peft itself."""
    peft = sys.modules.get("peft")
    model = getattr(model, "module", model)  # DDP
    return peft is not None and isinstance(model, peft.PeftModel)


def add_lora(model: torch.nn.Module, lora: LoraSettings, task_type: str | None = "CAUSAL_LM"):
    """``model`` with fresh LoRA adapters (B = 0: it starts as the base model exactly); only adapters train.

    ``task_type``: ``CAUSAL_LM`` (the policy), ``SEQ_CLS`` (a reward model: its score head trains in full),
    or None (a bare backbone, e.g. the PPO critic's, whose value head lives outside it).
    """
    from peft import LoraConfig, get_peft_model

    check_lora(lora)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
    )
    try:
        with _quiet():
            return get_peft_model(model, config)
    except ValueError as e:
        if "not found" not in str(e).lower() and "target modules" not in str(e).lower():
            raise
        linear = sorted(
            {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise ConfigError(
            f"model.lora.target_modules={lora.target_modules!r}: {e}. Linear layers of this model: "
            f"{', '.join(linear)} (or give 'all-linear')"
        ) from None


def load_adapter(base: torch.nn.Module, adapter_dir: str | Path, trainable: bool = True):
    """The ``peft`` model of ``base`` with the adapter saved in ``adapter_dir`` (a checkpoint or final-adapter)."""
    from peft import PeftModel

    with _quiet():
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)


@contextmanager
def _quiet():
    """peft reads transformers' deprecated ``is_gradient_checkpointing``: its FutureWarning is not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def check_resume(lora: LoraSettings, saved: str | Path) -> None:
    """A checkpoint's model must be what this run's ``model.lora`` settings make: an adapter of the same rank
    with LoRA on, a whole model with it off. Fails naming the setting to change."""
    if not is_adapter_dir(saved):
        if enabled(lora):
            raise ConfigError(f"{saved} holds a whole model (a run without LoRA), but model.lora.r={lora.r}: "
                              "resume with model.lora.r=0, or start a new run in another train.output_dir")  # fmt: skip
        return
    import json

    r = json.loads((Path(saved) / "adapter_config.json").read_text()).get("r")
    if not enabled(lora):
        raise ConfigError(f"{saved} holds a LoRA adapter (r={r}), but model.lora.r=0: resume with the run's "
                          f"model.lora settings (model.lora.r={r} ...)")  # fmt: skip
    if r != lora.r:
        raise ConfigError(f"{saved} holds a LoRA adapter of rank {r}, but model.lora.r={lora.r}: resume with "
                          f"model.lora.r={r}")  # fmt: skip


class AdaptersOff:
    """The KL reference of a LoRA policy: the policy's base model, i.e. its forward with the adapters disabled.

    Not an ``nn.Module`` on purpose: it owns no parameters, so nothing counts, saves or moves the policy's
    weights twice through it. Called like a model (``reasoner.train.batch.sequence_logprobs`` does).
    """

    def __init__(self, policy):
        if not is_lora(policy):
            raise TypeError("AdaptersOff needs a peft model (the policy with model.lora.r > 0)")
        self.policy = policy

    @property
    def config(self):  # what callers read of a model: its config (attention implementation) and dtype
        return self.policy.config

    @property
    def dtype(self) -> torch.dtype:
        return self.policy.dtype

    def __call__(self, *args, **kwargs):
        with self.policy.disable_adapter():
            return self.policy(*args, **kwargs)


@dataclass(frozen=True)
class MergedWeight:
    """A LoRA layer's weight with its adapter merged in, computed only when ``materialize()`` is called.

    An engine push holds one bucket of these at a time, so merging costs one bucket of memory, not a copy of
    the model. ``shape`` and ``dtype`` are the base weight's (what the engine's checkpoint has).
    """

    layer: Any  # a peft LoRA layer (its base_layer holds the frozen weight)

    @property
    def shape(self) -> torch.Size:
        return self.layer.get_base_layer().weight.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.layer.get_base_layer().weight.dtype

    @torch.no_grad()
    def materialize(self) -> torch.Tensor:
        return merged_weight(self.layer)


@torch.no_grad()
def merged_weight(layer) -> torch.Tensor:
    """``W + delta`` of a peft LoRA layer, summed in fp32 and rounded once to W's dtype; W is not modified."""
    base = layer.get_base_layer().weight
    out = base.detach().to(torch.float32, copy=True)  # .float() of an fp32 tensor is the tensor itself
    for name in layer.active_adapters:
        if name in layer.lora_A or name in getattr(layer, "lora_embedding_A", {}):
            out += layer.get_delta_weight(name).float()
    return out.to(base.dtype)


def materialize(tensor) -> torch.Tensor:
    """A tensor as it is, or a ``MergedWeight`` computed now."""
    return tensor.materialize() if isinstance(tensor, MergedWeight) else tensor


def named_merged_weights(
    model, only_trainable: bool = False
) -> list[tuple[str, torch.Tensor | MergedWeight]]:
    """``(name, tensor)`` of a ``peft`` model as the merged model's checkpoint names them.

    LoRA layers' weights come back as ``MergedWeight`` (merged when materialized); the adapters' own
    parameters are not listed. ``only_trainable``: only the weights an optimizer step can change, i.e. those
    of layers that carry an adapter (plus any module peft trains in full, e.g. a score head).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = getattr(model, "module", model)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    out: list[tuple[str, torch.Tensor | MergedWeight]] = []
    for name, param in model.named_parameters():
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts) or "original_module" in parts:
            continue  # the adapters themselves; the frozen original of a module peft trains in full
        owner = name.rsplit(".", 2)[0] if ".base_layer." in name else None
        if owner in layers and name.endswith(".base_layer.weight"):
            value: torch.Tensor | MergedWeight = MergedWeight(layers[owner])
        elif only_trainable and not param.requires_grad:
            continue
        else:
            value = param.detach()
        out.append((clean_name(name), value))
    return out


def clean_name(name: str) -> str:
    """A ``peft`` parameter name as the merged checkpoint spells it.

    >>> clean_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight")
    'model.layers.0.self_attn.q_proj.weight'
    >>> clean_name("base_model.model.score.modules_to_save.default.weight")
    'score.weight'
    """
    name = name.removeprefix(_BASE_PREFIX).replace(".base_layer.", ".")
    return name.replace(".modules_to_save.default.", ".")


def save_merged(model, tokenizer, out: str | Path, adapter_out: str | Path) -> torch.nn.Module:
    """Save the adapter to ``adapter_out`` and the merged model to ``out``; returns the merged model.

    The merge happens in place (``merge_and_unload``: no second copy of the weights), so ``model`` is spent
    afterwards: use the returned plain transformers model instead.
    """
    model = getattr(model, "module", model)
    model.save_pretrained(adapter_out)
    tokenizer.save_pretrained(adapter_out)
    merged = model.merge_and_unload()
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return merged


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable and total parameters (tied weights once)."""
    params = list(model.parameters())
    return {
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "total": sum(p.numel() for p in params),
    }
