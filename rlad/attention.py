"""Attention on a CPU in bf16: plain matrix products, where torch's fused SDPA kernel is the slower path.

transformers' ``sdpa`` attention calls ``torch.nn.functional.scaled_dot_product_attention``, which on a CPU runs
a flash-attention kernel. In fp32 it is the fastest path at this project's shapes; in bf16 it loses to three
ordinary calls (scores, softmax in fp32, weighted values), which reach the CPU's bf16 matrix units. Measured with
``python experiments/bench/attention.py`` (torch 2.13, 2 threads of a Xeon with AMX, ms per call, sdpa -> rlad):

    learner, bf16 (8 rows x 63 completion tokens behind their ~290-token shared prompt, forward + backward):
    4.97 -> 2.86 ms at head dim 32 (the demo's), 8.36 -> 4.49 ms at head dim 64 (1.7-1.9x)
    decoding, bf16 (128 rows over a 291-token static cache): 0.75 -> 0.72 ms (32), 1.49 -> 1.29 ms (64)
    fp32, every shape: sdpa equal or faster, so fp32 keeps it

``cpu_attention`` takes ``matmul_attention`` for bf16 on a CPU and hands everything else (fp32, dropout, a GPU)
to transformers' own ``sdpa_attention_forward``. The query heads sharing a key/value head are folded into the
query length, so keys and values are never copied per head (``repeat_kv``). A row whose keys are all masked
(padding) gets the uniform average eager attention gives it instead of NaN. Registered with transformers as
``rlad_cpu`` (attention and mask interfaces); the policy loader selects it on a CPU (``rlad.policy.load_policy``).
It is not saved with a checkpoint: vLLM and any other loader see the model's usual attention.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["NAME", "cpu_attention", "matmul_attention", "register", "uses_matmul"]

NAME = "rlad_cpu"


def uses_matmul(query: torch.Tensor, attention_mask: torch.Tensor | None, causal: bool, dropout: float) -> bool:
    """Whether ``cpu_attention`` computes this call itself (bf16 on a CPU) rather than handing it to sdpa."""
    if query.device.type != "cpu" or dropout > 0.0:
        return False
    if attention_mask is None and causal and query.shape[2] > 1:
        return False  # sdpa's own convention for a causal call without a mask; never reached by these models
    return query.dtype == torch.bfloat16


def cpu_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (B, H, Lq, D), key and value (B, Hkv, Lk, D), mask
    broadcastable to (B, 1, Lq, Lk) (bool: True attends; float: added) or None; returns (B, Lq, H, D)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if not uses_matmul(query, attention_mask, causal, dropout) or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    return matmul_attention(query, key, value, attention_mask, scaling).transpose(1, 2).contiguous(), None


def matmul_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v in three calls, scores and softmax in fp32; query (B, H, Lq, D), key and
    value (B, Hkv, Lk, D) with H a multiple of Hkv, mask as in ``cpu_attention``; returns (B, H, Lq, D)."""
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    scale = dim**-0.5 if scaling is None else scaling
    # (B, Hkv, group * Lq, D): the query heads of one key/value head side by side, so one product per kv head
    folded = query.reshape(batch, kv_heads, group * length, dim)
    scores = torch.matmul(folded, key.transpose(-1, -2)).float().mul_(scale)
    scores = scores.view(batch, kv_heads, group, length, -1)
    if attention_mask is not None:
        mask = attention_mask.unsqueeze(1)  # (B, 1, 1, Lq, Lk) against the scores' (B, Hkv, group, Lq, Lk)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask.float()
    weights = scores.softmax(-1).to(value.dtype).view(batch, kv_heads, group * length, -1)
    return torch.matmul(weights, value).view(batch, heads, length, dim)


def register() -> str:
    """Make ``rlad_cpu`` known to transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, cpu_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
