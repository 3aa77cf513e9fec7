"""What crosses between learner and rollout processes, and where they meet: node addresses and the
rendezvous URL of a process group, tensor metadata, flat buckets, the float64 fingerprint, zero-copy views for
Ray's object store, and the process group of the weight broadcast.

Shared by the learner (``rlad/learner.py``), the rollout engines (``rollout/``) and the weight sync
(``rollout/weight_sync.py``), which is why it is a module of its own: none of them imports another for it.
"""

from __future__ import annotations

import datetime
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "NodeAddress",
    "TensorMeta",
    "adapter_file_fingerprint",
    "buckets",
    "fingerprint",
    "flatten",
    "from_shared",
    "node_address",
    "receive_tensors",
    "rendezvous_url",
    "to_shared",
    "weight_group",
]


class NodeAddress(NamedTuple):
    node_id: str
    ip: str
    port: int  # free when asked
    tmp: str  # the node's temporary folder


def node_address() -> NodeAddress:
    """Where this process runs, and a free port on its node: what :func:`rendezvous_url` needs."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    try:
        import ray
    except ImportError:  # a learner used without Ray (experiments/gpu/check_gpu_path.py)
        ray = None
    if ray is None or not ray.is_initialized():
        return NodeAddress("local", "127.0.0.1", port, tempfile.gettempdir())
    return NodeAddress(ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), port,
                       tempfile.gettempdir())  # fmt: skip


def rendezvous_url(addresses: Sequence[NodeAddress], token: str) -> str:
    """Where the learners' process group meets. All on one node: a file in its temporary folder, so rlad opens no
    network port for it; across nodes: rank 0's address and port (``tcp://``), which the nodes must reach."""
    if len({a.node_id for a in addresses}) == 1:
        return f"file://{Path(addresses[0].tmp) / f'rlad-rendezvous-{token}'}"
    return f"tcp://{addresses[0].ip}:{addresses[0].port}"


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


def adapter_file_fingerprint(folder: str | Path) -> tuple[float, int]:
    """Fingerprint and bytes of the adapter tensors in a peft folder, as an engine reads them."""
    from safetensors.torch import load_file

    path = Path(folder) / "adapter_model.safetensors"
    tensors = load_file(str(path))
    return fingerprint(tensors.values()), path.stat().st_size
