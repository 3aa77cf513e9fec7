"""What rlad adds to each vLLM worker process (``LLM(worker_extension_cls=...)``), called by name through
``LLM.collective_rpc``: loading weights into the running model and receiving them by broadcast.

vLLM mixes this class into its GPU (or CPU) worker, so ``self.model_runner.model`` is the model vLLM samples
with; ``load_weights`` there maps Hugging Face parameter names (the learner's) onto vLLM's fused layout
(qkv, gate_up) and tensor-parallel shards. Every method returns the fingerprint of the tensors it loaded,
so the trainer can check that the engine took exactly what the learner sent.

Loading goes through vLLM's in-place reload (``vllm.model_executor.model_loader.reload``): layers whose
weights were repacked for the kernels after the first load (the CPU build does this) are restored, loaded
and processed again, layer by layer as their weights arrive. It is the machinery of vLLM's own
``reload_weights``, called here directly so that the names vLLM consumed come back and can be checked: a
parameter no name reached would otherwise stay silently stale (vLLM only logs a warning).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from rollout.transport import TensorMeta, fingerprint, receive_tensors, weight_group

__all__ = ["WeightLoader"]


class WeightLoader:
    model_runner: Any  # provided by vLLM's worker class this is mixed into
    vllm_config: Any
    device: Any

    def _reload(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.layerwise import (
            finalize_layerwise_reload,
            initialize_layerwise_reload,
        )

        model = self.model_runner.get_model()
        expected = {name for name, _ in model.named_parameters()}
        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(model)
            loaded = set(model.load_weights(weights) or ())  # vLLM's names (fused layers under one name)
            finalize_layerwise_reload(model, self.vllm_config.model_config)
        for reset in ("reset_encoder_cache", "reset_mm_cache"):  # image features computed by the old weights
            getattr(self.model_runner, reset, lambda: None)()
        missing = sorted(expected - loaded)
        if missing:
            raise RuntimeError(f"the weight update left {len(missing)} vLLM parameters unwritten: {missing[:5]}")

    def rlad_load_weights(self, named: list[tuple[str, torch.Tensor]]) -> float:
        """The colocated path: tensors handed over in the same process (or serialised by vLLM's RPC)."""
        self._reload(named)
        return fingerprint(t for _, t in named)

    def rlad_join_weight_group(self, init_method: str, first_rank: int, world_size: int, backend: str) -> None:
        """Join the learner's broadcast group as rank ``first_rank`` + this worker's tensor-parallel rank."""
        from vllm.distributed import get_tensor_model_parallel_rank

        rank = first_rank + get_tensor_model_parallel_rank()
        self._rlad_group = weight_group(init_method, rank, world_size, backend)

    def rlad_receive_weights(self, meta: Sequence[Sequence[Any]], plan: Sequence[Sequence[int]]) -> float:
        """Every parameter from learner rank 0, loaded as it arrives (each tensor-parallel rank receives the full
        tensors; ``load_weights`` keeps its shard). Returns the fingerprint of what arrived."""
        tensors = [TensorMeta(m[0], m[1], tuple(m[2])) for m in meta]
        device = self.device if isinstance(self.device, torch.device) else torch.device(self.device)
        sums = [0.0]
        self._reload(receive_tensors(self._rlad_group, tensors, plan, device, sums))
        return sums[0]
