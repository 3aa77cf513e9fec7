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
(``rlad.train.Cluster.check_freshness``).
"""

from __future__ import annotations

import datetime
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

__all__ = [
    "AdapterSync",
    "BroadcastSync",
    "ObjectStoreSync",
    "StaleWeightsError",
    "SyncReport",
    "TensorMeta",
    "WeightSync",
    "adapter_file_fingerprint",
    "buckets",
    "fingerprint",
    "flatten",
    "from_shared",
    "receive_tensors",
    "to_shared",
    "weight_group",
]


class StaleWeightsError(RuntimeError):
    """A rollout worker does not hold the learner's weights after a sync."""


@dataclass
class SyncReport:
    version: int
    seconds: float
    bytes: int


class TensorMeta(NamedTuple):
    """What a receiver allocates before a broadcast: one parameter's name, dtype (``torch.float32`` as
    ``"float32"``) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def nbytes(self) -> int:
        return self.numel * getattr(torch, self.dtype).itemsize


def fingerprint(tensors: Iterable[torch.Tensor]) -> float:
    """The float64 sum of every element: equal on both sides of a good sync, whatever the tensors' order
    (accumulated in float64 without a float64 copy of the weights)."""
    return float(sum(t.detach().sum(dtype=torch.float64) for t in tensors))


def to_shared(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[np.ndarray, str]]:
    """A state dict as numpy arrays (bf16 viewed as int16): Ray writes numpy buffers into its object store once
    and readers on the node map them without a copy, where torch tensors would be pickled and copied."""
    out = {}
    for name, t in state.items():
        t = t.detach().contiguous()
        raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        out[name] = (raw.numpy(), str(t.dtype).removeprefix("torch."))
    return out


def from_shared(shared: Mapping[str, tuple[np.ndarray, str]]) -> dict[str, torch.Tensor]:
    """Tensors over the arrays of :func:`to_shared` (read-only views of the object store: load, never write)."""
    out = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name, (array, dtype) in shared.items():
            t = torch.from_numpy(array)
            out[name] = t.view(torch.bfloat16) if dtype == "bfloat16" else t
    return out


def buckets(meta: Sequence[TensorMeta], bucket_bytes: int) -> list[list[int]]:
    """Consecutive index ranges of ``meta`` of one dtype holding at most ``bucket_bytes`` each (a larger tensor
    alone): each bucket travels as one flat tensor, one collective."""
    out: list[list[int]] = []
    size = 0
    for i, m in enumerate(meta):
        if not out or size + m.nbytes > bucket_bytes or meta[out[-1][0]].dtype != m.dtype:
            out.append([])
            size = 0
        out[-1].append(i)
        size += m.nbytes
    return out


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One bucket as one contiguous 1-D tensor (the sender's side of :func:`receive_tensors`)."""
    return torch.cat([t.reshape(-1) for t in tensors]) if len(tensors) > 1 else tensors[0].reshape(-1)


def weight_group(init_method: str, rank: int, world_size: int, backend: str, timeout_s: float = 600.0) -> Any:
    """A process group of its own (``file://`` or ``tcp://`` rendezvous) for the weight broadcast: not the
    default group, so the learners' DeepSpeed group and vLLM's stay as they are."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store, _, _ = next(dist.rendezvous(init_method, rank, world_size, timeout=timeout))
    store = dist.PrefixStore("rlad-weights", store)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world_size)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size)
    raise ValueError(f"weight sync backend must be nccl or gloo, got {backend!r}")


def receive_tensors(
    group: Any,
    meta: Sequence[TensorMeta],
    plan: Sequence[Sequence[int]],
    device: torch.device | str,
    sums: list[float],
) -> Iterator[tuple[str, torch.Tensor]]:
    """The receiving side of a broadcast: per bucket of ``plan``, one flat tensor from rank 0, then each
    parameter as ``(name, view)`` to the loader (vLLM's ``load_weights``, or ``copy_`` into a transformers
    model). ``sums[0]`` accumulates the fingerprint."""
    for bucket in plan:
        dtype = getattr(torch, meta[bucket[0]].dtype)
        sizes = [meta[i].numel for i in bucket]
        flat = torch.empty(sum(sizes), dtype=dtype, device=device)
        group.broadcast(flat, 0).wait()
        sums[0] += fingerprint([flat])
        for i, piece in zip(bucket, flat.split(sizes), strict=True):
            yield meta[i].name, piece.view(meta[i].shape)


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

        from rlad.learner import rendezvous_url

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


def adapter_file_fingerprint(folder: str | Path) -> tuple[float, int]:
    """Fingerprint and bytes of the adapter tensors in a peft folder, as an engine reads them."""
    from safetensors.torch import load_file

    path = Path(folder) / "adapter_model.safetensors"
    tensors = load_file(str(path))
    return fingerprint(tensors.values()), path.stat().st_size
