"""The rollout worker: one Ray actor holding one rollout engine (a copy of the policy).

``RolloutWorker`` is a plain class a test builds directly; ``rlad.train`` starts ``rollout.workers`` of them
with ``ray.remote`` and the resources of the ``rollout`` config section. The trainer hands each worker a
slice of the step's prompts and, after every optimizer step, the new weights with their version
(``rollout/weight_sync.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from rlad.config import Config
from rlad.policy import load_policy, set_threads
from rlad.sample import VerifiableSample
from rollout.engine import Completion, RolloutEngine

__all__ = ["RolloutWorker", "make_engine"]


def make_engine(config: Config, checkpoint: str, standalone: bool = False) -> RolloutEngine:
    """The engine of ``rollout.backend`` for the policy at ``checkpoint``. In a Ray actor it takes a GPU when
    ``rollout.num_gpus`` gives it one; ``standalone`` (``rlad eval``, ``rlad predict``: the process has the
    machine to itself) takes one whenever there is one."""
    from rollout.transformers_engine import TransformersEngine

    use_gpu = (config.rollout.num_gpus > 0 or standalone) and torch.cuda.is_available()
    model_config = dataclasses.replace(config.model, path=checkpoint)
    policy = load_policy(
        model_config, shots=config.data.shots, blocks=config.output.blocks, device="cuda" if use_gpu else "cpu"
    )
    return TransformersEngine(policy.model, policy.builder, config.generation, batch_size=config.rollout.batch_size)


class RolloutWorker:
    def __init__(self, config: Config, checkpoint: str):
        set_threads(config.rollout.threads)
        self.engine = make_engine(config, checkpoint)

    def generate(
        self, samples: Sequence[VerifiableSample], n: int, greedy: bool = False, seed: int | None = None
    ) -> list[Completion]:
        return self.engine.generate(samples, n=n, greedy=greedy, seed=seed)

    def load_weights(self, state: Mapping[str, torch.Tensor], version: int) -> tuple[float, int]:
        """Take the learner's weights; returns the engine's fingerprint after loading (the freshness check)
        and the bytes received."""
        self.engine.load_weights(state, version)
        return self.engine.fingerprint(), sum(t.numel() * t.element_size() for t in state.values())

    def policy_version(self) -> int:
        return self.engine.policy_version
