"""The engine's linear layers on a CPU in bf16, with their weights packed once for oneDNN instead of every call.

``torch.nn.functional.linear`` on a CPU in bf16 hands oneDNN the weight in its plain (out, in) layout, and oneDNN
reorders it into the blocked layout its AMX / AVX512-BF16 kernels read — on every call. A decode step multiplies
a few rows by every weight of the model, so that reorder is much of the step's matmul time. Packed once
(``torch.ops.mkldnn._reorder_linear_weight``, what inductor's weight "freezing" does) and multiplied by
``torch.ops.mkldnn._linear_pointwise``, the products are the same numbers (bit for bit, tested) in less time.
Measured with ``python experiments/bench/packed_linear.py`` (torch 2.13, 2 threads of a Xeon with AMX, other work
on the cores, microseconds per call, plain -> packed): 128 rows x 384 -> 1152 202 -> 129, 1152 -> 384 182 -> 141,
384 -> 384 108 -> 85; generation 1.08x on a 23 M-parameter tiny spec, 1.04x on the demo's policy (README).

``pack_linears(model)`` turns every ``torch.nn.Linear`` of a model into a ``PackedLinear`` in place (the class
only: parameters, names, ``state_dict`` and tied weights are unchanged, so weight sync, LoRA and checkpoints see
the same model). A ``PackedLinear`` uses its packed copy only where it applies: no gradient wanted, bf16 input
and weight on a CPU; anywhere else it is ``torch.nn.Linear``. The copy is re-made whenever the weight changed —
its tensor's version counter moves with every in-place write (``load_state_dict``, a broadcast's ``copy_``, a
merged adapter) — so it can never serve stale weights. The packed copies hold the linear weights a second time
(the model's size again in memory, less its embeddings).
"""

from __future__ import annotations

import torch

__all__ = ["PackedLinear", "can_pack", "pack_for_cpu", "pack_linears"]


def can_pack() -> bool:
    """Whether packing applies here: a CPU with bf16 units (AMX, where it was measured, or AVX512-BF16; on an AVX2
    CPU torch's bf16 products take slow fallback paths) and a torch build with the operators a ``PackedLinear``
    calls."""
    from rlad.policy import cpu_bf16_units

    if cpu_bf16_units() is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight  # noqa: B018 (resolves the operator or raises)
        torch.ops.mkldnn._linear_pointwise  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


class PackedLinear(torch.nn.Linear):
    """``torch.nn.Linear`` whose bf16 inference on a CPU multiplies by a packed copy of the weight (module
    docstring). Made by :func:`pack_linears`, never constructed directly."""

    _packed: torch.Tensor | None
    _packed_of: tuple[int, int] | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (
            x.dtype != torch.bfloat16
            or weight.dtype != torch.bfloat16
            or x.device.type != "cpu"
            or weight.device.type != "cpu"
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            or x.numel() == 0
        ):
            return torch.nn.functional.linear(x, weight, self.bias)
        key = (weight.data_ptr(), weight._version)
        if self._packed_of != key:  # pack_linears set it; a new address or version: the weight changed
            self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(1, x.numel() // x.shape[-1]))
            self._packed_of = key
        bias = self.bias.detach() if self.bias is not None else None
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self._packed, bias, "none", [], "")


def pack_linears(model: torch.nn.Module) -> int:
    """Every ``torch.nn.Linear`` of ``model`` (exactly that class: subclasses with a forward of their own are left
    alone; a LoRA wrapper's base layer is a plain one) becomes a ``PackedLinear`` in place; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = PackedLinear
            module._packed, module._packed_of = None, None
            count += 1
    return count


def pack_for_cpu(model: torch.nn.Module) -> int:
    """:func:`pack_linears` where it applies: a bf16 model on a CPU where :func:`can_pack`; returns how many layers
    were packed (0: the model is left as it was)."""
    first = next(model.parameters(), None)
    if first is None or first.dtype != torch.bfloat16 or first.device.type != "cpu" or not can_pack():
        return 0
    return pack_linears(model)
