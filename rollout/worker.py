"""The rollout worker: one Ray actor holding one rollout engine (a copy of the policy).

``RolloutWorker`` is a plain class a test builds directly; ``rlad.train`` starts ``rollout.workers`` of them
with ``ray.remote`` and the resources of the ``rollout`` config section. The trainer hands each worker a
slice of the step's prompts and, after every optimizer step, the new weights with their version
(``rollout/weight_sync.py``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch

from rlad.config import Config, GenerationConfig, RolloutConfig
from rlad.policy import PolicySpec, set_threads
from rlad.sample import VerifiableSample
from rollout.engine import Completion, RolloutEngine
from rollout.packed_linear import pack_for_cpu
from rollout.transport import NodeAddress, TensorMeta, adapter_file_fingerprint, from_shared, node_address

__all__ = ["RolloutWorker", "build_engine", "make_engine"]


def make_engine(config: Config, checkpoint: str, standalone: bool = False) -> RolloutEngine:
    """The engine of ``rollout.backend`` for the policy at ``checkpoint``, from a whole config (``rlad eval``,
    ``rlad predict``, tests); see :func:`build_engine`."""
    return build_engine(PolicySpec.of(config, checkpoint), config.rollout, config.generation, config.seed, standalone)


def build_engine(policy: PolicySpec, rollout: RolloutConfig, generation: GenerationConfig, seed: int,
                 standalone: bool = False) -> RolloutEngine:  # fmt: skip
    """The engine of ``rollout.backend`` for ``policy``. In a Ray actor it takes a GPU when ``rollout.num_gpus``
    gives it one; ``standalone`` (the process has the machine to itself) takes one whenever there is one."""
    from rollout.transformers_engine import TransformersEngine

    if rollout.backend == "vllm":
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine.start(policy, rollout, generation, seed)
    use_gpu = (rollout.num_gpus > 0 or standalone) and torch.cuda.is_available()
    loaded = policy.load("cuda" if use_gpu else "cpu")
    if rollout.pack_weights:  # a bf16 model on a CPU with bf16 units only; anything else is left as it is
        pack_for_cpu(loaded.model)
    return TransformersEngine(loaded.model, loaded.builder, generation, batch_size=rollout.batch_size)


class RolloutWorker:
    """One engine in a Ray actor; it takes the config sections it uses: the policy to serve, its own section,
    the sampling settings and the run's seed (vLLM seeds its sampler with it)."""

    def __init__(self, policy: PolicySpec, rollout: RolloutConfig, generation: GenerationConfig, seed: int = 0):
        set_threads(rollout.threads)
        self.engine = build_engine(policy, rollout, generation, seed)

    def generate(
        self, samples: Sequence[VerifiableSample], n: int, greedy: bool = False, seed: int | None = None
    ) -> tuple[list[Completion], float]:
        """The engine's completions, and the seconds it spent on them (the rest of a call's time is Ray's)."""
        start = time.perf_counter()
        out = self.engine.generate(samples, n=n, greedy=greedy, seed=seed)
        return out, time.perf_counter() - start

    def load_weights(self, state: Mapping[str, torch.Tensor], version: int) -> tuple[float, int]:
        """Take the learner's weights; returns the engine's fingerprint after loading (the freshness check)
        and the bytes received."""
        self.engine.load_weights(state, version)
        return self.engine.fingerprint(), sum(t.numel() * t.element_size() for t in state.values())

    def load_shared(self, shared: Mapping[str, tuple], version: int) -> tuple[float, int]:
        """:meth:`load_weights` from the object store's arrays (``rollout.transport.to_shared``)."""
        return self.load_weights(from_shared(shared), version)

    def load_adapter(self, folder: str, version: int) -> tuple[float, int]:
        """LoRA adapters written by the learner (``rollout.lora_sync: adapter``); returns the fingerprint of the
        adapter tensors the engine read, and their bytes."""
        return self.engine.load_adapter(folder, version), adapter_file_fingerprint(folder)[1]

    def policy_version(self) -> int:
        return self.engine.policy_version

    def score(self, samples: Sequence[VerifiableSample], token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """The engine's per-token log-probs of given completions (the freshness check)."""
        return self.engine.score(samples, token_ids)

    # the broadcast transport (rollout/weight_sync.py)

    def address(self) -> NodeAddress:
        return node_address()

    def weight_ranks(self) -> int:
        return self.engine.weight_ranks()

    def join_weight_group(self, init_method: str, first_rank: int, world_size: int, backend: str) -> None:
        self.engine.join_weight_group(init_method, first_rank, world_size, backend)

    def receive_weights(
        self, meta: Sequence[TensorMeta], plan: Sequence[Sequence[int]], version: int
    ) -> tuple[float, int]:
        """Weights by broadcast; returns the engine's fingerprint and the bytes received."""
        return self.engine.receive_weights(meta, plan, version), sum(m.nbytes for m in meta)
