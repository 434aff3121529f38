"""Loading the policy, reference and tokenizer; building the tiny offline model.

The tiny model is Llama-shaped on purpose: with transformers 5, ``AutoTokenizer`` on a directory whose config
says ``qwen2`` builds a ``Qwen2Tokenizer`` and silently drops the character-level vocabulary's spaces. We also
pin ``tokenizer_class`` in ``tokenizer_config.json`` and test the round trip.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
from pathlib import Path

import torch

from reasoner.train.checkpoint import cache_lock

SPECIAL = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>"}
CHARS = sorted(set(string.printable) - set("\x0b\x0c\r"))  # printable ASCII, space, tab and newline
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
TINY_SHAPE = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4}


def build_char_tokenizer():
    """A character-level ``PreTrainedTokenizerFast``: one token per character, with pad/bos/eos/unk.

    >>> tok = build_char_tokenizer()
    >>> ids = tok("12 + 7 = 19\\n#### 19")["input_ids"]
    >>> tok.decode(ids)
    '12 + 7 = 19\\n#### 19'
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL.values())}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL["unk"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=SPECIAL["pad"],
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["eos"],
        unk_token=SPECIAL["unk"],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_model(out_dir: str | Path, seed: int = 0, **shape) -> Path:
    """Save a randomly initialised Llama-shaped character-level causal LM and its tokenizer to ``out_dir``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_char_tokenizer()
    dims = {**TINY_SHAPE, **shape}
    config = LlamaConfig(
        vocab_size=len(tok),
        num_key_value_heads=dims["num_attention_heads"],
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **dims,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    # Written beside and renamed into place under a lock: a second `make` never sees half a model.
    with cache_lock(out, "the tiny model"):
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # Pin the class so AutoTokenizer never substitutes a subword tokenizer for ours.
        cfg_path = tmp / "tokenizer_config.json"
        tok_cfg = json.loads(cfg_path.read_text())
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(tok_cfg, indent=2))
        model.generation_config.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def set_cpu_threads(threads: int) -> None:
    if threads > 0 and not torch.cuda.is_available():
        torch.set_num_threads(threads)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gguf_cache_dir(gguf_file: str | Path) -> Path:
    """Where a ``.gguf`` given as a model path is converted to, once: ``$REASONER_CACHE`` (default
    ``~/.cache/reasoner``) ``/gguf/<stem>-<hash>``, the hash over the file's absolute path, size and mtime, so an
    edited or replaced file is converted again."""
    f = Path(gguf_file).resolve()
    st = f.stat()
    key = hashlib.sha256(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    root = Path(os.environ.get("REASONER_CACHE") or Path.home() / ".cache" / "reasoner")
    return root / "gguf" / f"{f.stem}-{key}"


def resolve_model_path(path: str) -> str:
    """The path to hand ``from_pretrained``: a directory or hub id unchanged; a ``.gguf`` file converted (once,
    under a lock, see ``gguf_cache_dir``) to a plain checkpoint directory."""
    if not str(path).endswith(".gguf"):
        return path
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"model {path!r} names a .gguf file that does not exist (`make real-model` fetches SmolLM2's)"
        )
    return str(convert_gguf(path, gguf_cache_dir(path)))


def convert_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Write a plain ``save_pretrained`` checkpoint (fp32 safetensors, generation config, tokenizer with its chat
    template) of any GGUF file transformers can read. Idempotent and safe to run from two processes at once: an
    existing complete ``out_dir`` (it has ``config.json``) is kept, the conversion runs under ``cache_lock`` and
    the result is renamed into place.

    transformers' GGUF loader dequantizes the weights to float but marks the model quantized, and
    ``save_pretrained`` refuses it; a fresh model built from its config with the state dict loaded saves fine."""
    src, out = Path(gguf_file), Path(out_dir)
    if not src.is_file():
        raise FileNotFoundError(f"GGUF file {str(src)!r} not found")
    if (out / "config.json").exists():
        return out
    with cache_lock(out, f"the conversion of {src.name}"):  # a second converter waits, then finds the result
        if (out / "config.json").exists():
            return out
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _write_gguf_checkpoint(src, tmp)
        shutil.rmtree(out, ignore_errors=True)  # an incomplete directory (no config.json), if any
        tmp.rename(out)
    return out


def _write_gguf_checkpoint(src: Path, out: Path) -> None:
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it)
    except ImportError as e:
        raise ImportError(f"reading {src} needs the `gguf` package: pip install gguf") from e
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"transformers cannot read the GGUF file {src}: {e}") from e
    config = loaded.config
    config.__dict__.pop("quantization_config", None)
    config.__dict__.pop("_name_or_path", None)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    out.mkdir(parents=True)
    model.save_pretrained(out)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.save_pretrained(out)
    # Pin the class: AutoTokenizer would otherwise pick the architecture's tokenizer (e.g. Llama's) and rebuild
    # the vocabulary with its own pre-tokenizer rules instead of reading tokenizer.json as written.
    cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(tok_cfg, indent=2))


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(path))
    if tok.pad_token is None:  # many instruct models ship without one
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_policy(
    path: str, dtype: str = "auto", device: torch.device | None = None, attn_implementation: str | None = None
):
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    path = resolve_model_path(path)
    if not Path(path).exists() and "/" not in path:
        raise FileNotFoundError(
            f"model {path!r} not found: give a local directory or a hub id like Qwen/Qwen2.5-0.5B-Instruct "
            "(build the offline default with `reasoner tiny-model --out runs/tiny-model`)"
        )
    kwargs = {"dtype": resolve_dtype(dtype, device)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device)


def load_trainable_policy(cfg, path: str, device: torch.device, saved: str | None = None):
    """The policy the update trains: fp32 master weights, or with ``model.lora.r`` > 0 a frozen base in
    ``model.dtype`` with fp32 LoRA adapters. ``saved``: a checkpoint's policy to resume from (a whole model, or
    with LoRA the adapter, which goes back onto ``path``)."""
    from reasoner.train.lora import add_lora, check_resume, enabled, load_adapter

    mc = cfg.model
    lora = enabled(mc.lora)
    if saved:
        check_resume(mc.lora, saved)
    path = saved if saved and not lora else path
    model = load_policy(path, mc.dtype if lora else "float32", device, mc.attn_implementation)
    if mc.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if lora:  # the frozen embeddings' output needs requires_grad, or checkpointed blocks get no gradient
            model.enable_input_require_grads()
    if not lora:
        return model
    return load_adapter(model, saved) if saved else add_lora(model, mc.lora)
