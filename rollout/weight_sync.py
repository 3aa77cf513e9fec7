"""Weight sync, learner -> rollout engines, after every optimizer step; versioned, timed and verified.

Two transports, chosen by ``rollout.weight_sync``:

- ``object_store`` (default; CPU and small models): learner rank 0's state dict is put into Ray's object
  store once, as numpy arrays, and every worker on the node maps the same buffers without a copy
  (:func:`to_shared`); each loads them into its engine with one copy.
- ``broadcast`` (GPU clusters): learner rank 0 and every rollout engine (each tensor-parallel rank of a vLLM
  engine) form one extra process group, NCCL on GPUs, gloo on CPUs, and the parameters are broadcast from
  rank 0 in buckets of ``rollout.sync_bucket_mb``, each bucket one flat tensor (one collective). Under
  ZeRO-3 the learners gather each bucket's shards first (every learner rank takes part; only rank 0 sends).
  The group is its own ``ProcessGroup`` built on a rendezvous store, so it lives beside the learners'
  DeepSpeed group (and vLLM's) without touching them.

With LoRA (``model.lora.r > 0``) either transport sends the merged weights; ``rollout.lora_sync: adapter``
instead writes only the adapters to a shared folder and the engines load them as adapters (:class:`AdapterSync`).

Every sync ends with the fingerprint check: each engine returns the float64 sum of the weights it received
(:func:`fingerprint`) and it must equal what the learner sent; a worker left on stale weights fails the run
with :class:`StaleWeightsError` instead of training on the wrong policy's samples. The stronger check — the
engine's log-probs of a fixed completion equal the learner's — runs every ``rollout.freshness_steps`` steps
(``rlad.cluster.Cluster.check_freshness``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rlad.config import Config
from rollout.transport import buckets, rendezvous_url

__all__ = [
    "AdapterSync",
    "BroadcastSync",
    "ObjectStoreSync",
    "StaleWeightsError",
    "SyncReport",
    "WeightSync",
    "make_weight_sync",
]


class StaleWeightsError(RuntimeError):
    """A rollout worker does not hold the learner's weights after a sync."""


@dataclass
class SyncReport:
    version: int
    seconds: float
    bytes: int


class WeightSync(Protocol):
    def sync(self, learners: list[Any], workers: list[Any], version: int) -> SyncReport: ...


def _check(loaded: Sequence[tuple[float, int]], expected: float, version: int, tolerance: float) -> None:
    for i, (got, _) in enumerate(loaded):
        if abs(got - expected) > tolerance * max(1.0, abs(expected)):
            raise StaleWeightsError(
                f"rollout worker {i} holds weights with fingerprint {got!r} after syncing version {version}; "
                f"the learner's is {expected!r}"
            )


class ObjectStoreSync:
    """Through Ray's object store (see the module docstring). ``learners`` and ``workers`` are actor handles."""

    def __init__(self, tolerance: float = 1e-6):
        self.tolerance = tolerance

    def sync(self, learners: list[Any], workers: list[Any], version: int) -> SyncReport:
        import ray

        start = time.perf_counter()
        states = [learner.shared_state.remote() for learner in learners]  # every rank: ZeRO-3 gathers collectively
        fingerprint = learners[0].fingerprint.remote()
        loaded = ray.get([w.load_shared.remote(states[0], version) for w in workers])
        ray.get(states[1:])
        _check(loaded, ray.get(fingerprint), version, self.tolerance)
        return SyncReport(version, time.perf_counter() - start, loaded[0][1])


class AdapterSync:
    """``rollout.lora_sync: adapter``: learner rank 0 writes the LoRA adapters under ``folder/vNNNNNN`` (a folder
    every node reads), every engine loads them as adapters on its base weights (vLLM: a new ``LoRARequest`` per
    version), and each returns the fingerprint of the adapter tensors it read. The last ``keep`` versions stay
    on disk (a restarted worker reloads the current one)."""

    def __init__(self, folder: str | Path, keep: int = 2, tolerance: float = 1e-6):
        self.folder = Path(folder)
        self.keep = keep
        self.tolerance = tolerance

    def sync(self, learners: list[Any], workers: list[Any], version: int) -> SyncReport:
        import shutil

        import ray

        start = time.perf_counter()
        target = self.folder / f"v{version:06d}"
        self.folder.mkdir(parents=True, exist_ok=True)
        expected = ray.get([learner.save_adapter.remote(str(target)) for learner in learners])[0]
        loaded = ray.get([w.load_adapter.remote(str(target), version) for w in workers])
        _check(loaded, expected, version, self.tolerance)
        for old in sorted(self.folder.glob("v*"))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return SyncReport(version, time.perf_counter() - start, loaded[0][1])


class BroadcastSync:
    """One process group of learner rank 0 (rank 0) and every engine rank; see the module docstring.

    ``connect`` forms the group (at the start, and again after a rollout worker was restarted: a new process
    must join a new group); ``sync`` broadcasts one version."""

    def __init__(self, backend: str, bucket_mb: float, tolerance: float = 1e-6):
        self.backend = backend
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.tolerance = tolerance
        self.connected: list[Any] = []

    def connect(self, learners: list[Any], workers: list[Any]) -> None:
        import uuid

        import ray

        ranks = ray.get([w.weight_ranks.remote() for w in workers])
        world = 1 + sum(ranks)
        addresses = ray.get([learners[0].address.remote(), *[w.address.remote() for w in workers]])
        url = rendezvous_url(addresses, uuid.uuid4().hex)
        firsts = [1 + sum(ranks[:k]) for k in range(len(workers))]
        calls = [learners[0].join_weight_group.remote(url, world, self.backend)]
        calls += [w.join_weight_group.remote(url, first, world, self.backend)
                  for w, first in zip(workers, firsts, strict=True)]  # fmt: skip
        ray.get(calls)
        self.connected = list(workers)

    def sync(self, learners: list[Any], workers: list[Any], version: int) -> SyncReport:
        import ray

        start = time.perf_counter()
        if self.connected != list(workers):
            # the group holds exactly its members: a sync to a subset (a revived worker) re-forms it around them
            self.connect(learners, workers)
        meta = ray.get(learners[0].weight_meta.remote())
        plan = buckets(meta, self.bucket_bytes)
        sent = [learner.broadcast_weights.remote(plan) for learner in learners]  # all ranks: ZeRO-3 gathers
        loaded = ray.get([w.receive_weights.remote(meta, plan, version) for w in workers])
        expected = ray.get(sent)[0]
        _check(loaded, expected, version, self.tolerance)
        return SyncReport(version, time.perf_counter() - start, sum(m.nbytes for m in meta))


def make_weight_sync(config: Config) -> WeightSync:
    """The transport the config asks for (``rollout.weight_sync``, ``rollout.lora_sync``): adapters through a
    folder of the run, a broadcast group, or Ray's object store."""
    r = config.rollout
    if config.model.lora.r and r.lora_sync == "adapter":
        return AdapterSync(Path(config.train.run_dir) / "adapters")
    if r.weight_sync == "broadcast":
        return BroadcastSync("nccl" if config.learner.num_gpus > 0 else "gloo", r.sync_bucket_mb)
    return ObjectStoreSync()
