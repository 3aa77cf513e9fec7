"""Weight sync, learner -> rollout workers, after every optimizer step; versioned, timed and verified.

On CPU (and the default everywhere) the weights travel through Ray's object store: learner rank 0's state
dict is put once and every worker reads the same object (zero-copy on one node). On GPUs an NCCL broadcast
from learner rank 0 to the engines is the faster path; it fits the same ``WeightSync`` contract and comes
with the vLLM backend.

Every sync ends with a freshness check: each worker returns the fingerprint (float64 sum of every weight) of
the weights it now samples with, and it must equal the learner's. A worker left on stale weights fails the
run with ``StaleWeightsError`` instead of training on the wrong policy's samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["ObjectStoreSync", "StaleWeightsError", "SyncReport", "WeightSync"]


class StaleWeightsError(RuntimeError):
    """A rollout worker does not hold the learner's weights after a sync."""


@dataclass
class SyncReport:
    version: int
    seconds: float
    bytes: int


class WeightSync(Protocol):
    def sync(self, learners: list[Any], workers: list[Any], version: int) -> SyncReport: ...


class ObjectStoreSync:
    """Through Ray's object store (see the module docstring). ``learners`` and ``workers`` are actor handles."""

    def __init__(self, tolerance: float = 1e-6):
        self.tolerance = tolerance

    def sync(self, learners: list[Any], workers: list[Any], version: int) -> SyncReport:
        import ray

        start = time.perf_counter()
        states = [learner.state_dict.remote() for learner in learners]  # every rank: ZeRO-3 gathers collectively
        fingerprint = learners[0].fingerprint.remote()
        loaded = ray.get([w.load_weights.remote(states[0], version) for w in workers])
        ray.get(states[1:])
        expected = ray.get(fingerprint)
        for i, (got, _) in enumerate(loaded):
            if abs(got - expected) > self.tolerance * max(1.0, abs(expected)):
                raise StaleWeightsError(
                    f"rollout worker {i} holds weights with fingerprint {got!r} after syncing version {version}; "
                    f"the learner's is {expected!r}"
                )
        return SyncReport(version, time.perf_counter() - start, loaded[0][1])
