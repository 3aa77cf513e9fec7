"""Qwen2.5-VL's vision attention with all its windows in one attention call a block.

The vision tower attends within windows (112 px: 64 patches) in most blocks and within each image in the rest,
and hands transformers the boundaries as ``cu_seqlens``. Without flash-attn's variable-length kernel, transformers
5.x splits the sequence at those boundaries and makes one attention call per window (after a host sync on the
boundaries): 16 calls an image at 448 px in every windowed block, forward, recomputation and backward. On the
H100 the learner of a 1.87 B Qwen2.5-VL ran at 2–4 % of the bf16 peak with that loop in place (README, *Verified
on one H100*); a first suspect, not a measurement of its share.

``batch_vision_windows`` swaps each vision attention module's class for ``WindowBatchedVisionAttention``
(parameters untouched, like ``rlad.policy.PatchProjection``), whose forward lays the windows side by side as a
batch — a view when they are all as long (whole windows), padded to the longest with the padding masked
otherwise (edge windows) — and makes one call of the configured attention function (sdpa, ``rlad_cpu``, eager).
Same values as the loop up to rounding (tested, outputs and gradients). With flash attention configured the
original forward runs: it already makes one call. Measured on the 2-core Xeon (bf16): the demo's tower 1.04x
forward, 1.08x forward + backward, the demo's GRPO step 1.05x (README, *Performance*); on a GPU not yet
(``experiments/gpu/check_gpu_path.py --loop-windows`` gives the other side).
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import torch

__all__ = ["WindowBatchedVisionAttention", "batch_vision_windows", "windowed_attention"]


def windowed_attention(
    module: torch.nn.Module,
    interface: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    dropout: float = 0.0,
    **kwargs: Any,
) -> torch.Tensor:
    """Attention of query, key, value (1, H, S, D) within each window ``[cu_seqlens[i], cu_seqlens[i + 1])`` in
    one call of ``interface`` (transformers' attention-function signature); returns (S, H, D) in token order."""
    bounds = cu_seqlens.tolist()
    lengths = [b - a for a, b in itertools.pairwise(bounds)]
    _, heads, total, dim = query.shape
    if bounds[0] != 0 or bounds[-1] != total or min(lengths) < 1:
        raise ValueError(f"cu_seqlens {bounds[:4]}...{bounds[-2:]} do not cut {total} positions into windows")
    n, longest = len(lengths), max(lengths)
    call = dict(scaling=module.scaling, dropout=dropout, is_causal=False, **kwargs)
    if all(length == longest for length in lengths):  # whole windows: a view, no mask

        def fold(t: torch.Tensor) -> torch.Tensor:
            return t[0].view(heads, n, longest, dim).transpose(0, 1)

        out = interface(module, fold(query), fold(key), fold(value), attention_mask=None, **call)[0]
        return out.reshape(total, heads, dim)  # (n, L, H, D): windows in order are tokens in order
    device = query.device
    offsets = torch.arange(longest, device=device)
    valid = offsets < torch.tensor(lengths, device=device)[:, None]  # (n, L)
    index = torch.where(valid, torch.tensor(bounds[:-1], device=device)[:, None] + offsets, 0)

    def gather(t: torch.Tensor) -> torch.Tensor:
        return t[0][:, index].transpose(0, 1)  # (H, n, L, D) -> (n, H, L, D)

    # additive, so every attention function reads it alike; a window's padding is never attended to
    mask = torch.zeros((n, 1, 1, longest), dtype=query.dtype, device=device)
    mask = mask.masked_fill(~valid[:, None, None, :], torch.finfo(query.dtype).min)
    out = interface(module, gather(query), gather(key), gather(value), attention_mask=mask, **call)[0]
    return out[valid]  # (n, L, H, D) -> (S, H, D): padded rows dropped


def _make_class() -> type | None:
    """``WindowBatchedVisionAttention``, built on transformers' Qwen2.5-VL vision attention if its forward is the one
    it replaces (hidden_states, cu_seqlens, position_embeddings, ...); else None (and the original stays)."""
    try:
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen
    except ImportError:  # pragma: no cover - transformers without Qwen2.5-VL
        return None
    base = getattr(qwen, "Qwen2_5_VLVisionAttention", None)
    used = ("apply_rotary_pos_emb_vision", "ALL_ATTENTION_FUNCTIONS", "eager_attention_forward")
    if base is None or not all(hasattr(qwen, name) for name in used):
        return None
    replaced = ["self", "hidden_states", "cu_seqlens", "position_embeddings"]
    if list(inspect.signature(base.forward).parameters)[:4] != replaced:
        return None
    from transformers.utils.generic import is_flash_attention_requested

    class WindowBatched(base):
        """Qwen2.5-VL's vision attention, its windows in one attention call (module docstring)."""

        def forward(  # type: ignore[override]
            self,
            hidden_states: torch.Tensor,
            cu_seqlens: torch.Tensor,
            position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
            max_seqlen: int | None = None,
            **kwargs: Any,
        ) -> torch.Tensor:
            if is_flash_attention_requested(self.config):
                return super().forward(hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
            length = hidden_states.shape[0]
            qkv = self.qkv(hidden_states).reshape(length, 3, self.num_heads, -1).permute(1, 0, 2, 3)
            query, key, value = qkv.unbind(0)  # (S, H, D) each
            cos, sin = position_embeddings
            query, key = qwen.apply_rotary_pos_emb_vision(query, key, cos, sin)
            query, key, value = (t.transpose(0, 1).unsqueeze(0) for t in (query, key, value))  # (1, H, S, D)
            interface = qwen.ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, qwen.eager_attention_forward
            )
            dropout = self.attention_dropout if self.training else 0.0
            out = windowed_attention(self, interface, query, key, value, cu_seqlens, dropout, **kwargs)
            return self.proj(out.reshape(length, -1).contiguous())

    WindowBatched.__name__ = WindowBatched.__qualname__ = "WindowBatchedVisionAttention"
    return WindowBatched


WindowBatchedVisionAttention = _make_class()
"""The swapped-in class (None where this transformers' Qwen2.5-VL vision attention is not the one it replaces)."""


def batch_vision_windows(model: torch.nn.Module, batched: bool = True) -> int:
    """Swap every Qwen2.5-VL vision attention module of ``model`` for ``WindowBatchedVisionAttention`` in place
    (its class only: parameters untouched), or with ``batched=False`` back to transformers' own (one call a window,
    for a side-by-side); returns how many (0 where the class is unknown or absent)."""
    if WindowBatchedVisionAttention is None:
        return 0
    base = WindowBatchedVisionAttention.__mro__[1]
    old, new = (base, WindowBatchedVisionAttention) if batched else (WindowBatchedVisionAttention, base)
    count = 0
    for module in model.modules():
        if type(module) is old:
            module.__class__ = new
            count += 1
    return count
