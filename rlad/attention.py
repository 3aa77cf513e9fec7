"""Attention on a CPU in bf16: plain matrix products where torch's fused SDPA kernel is the slower path.

transformers' ``sdpa`` attention calls ``torch.nn.functional.scaled_dot_product_attention``, which on a CPU runs
a flash-attention kernel. In fp32 it is the fastest path at this project's shapes, and so is its bf16 forward
over many queries; but its bf16 backward over short query blocks, and a bf16 decode step, lose to three ordinary
calls (scores, softmax in fp32, weighted values). Measured with ``python experiments/bench/attention.py`` and
by hand (torch 2.13, 2 threads of a Xeon with AMX, ms per call, sdpa -> matmuls):

    learner, bf16, forward + backward: completions behind their shared prompt, 8 rows x 63 queries over ~290
    keys: 4.97 -> 2.86 (head dim 32), 8.36 -> 4.49 (64); 128 queries: 8.9 -> 4.7, 14.8 -> 8.5; but 230
    queries over 348 keys: 11.8 -> 10.9 (32), 22.3 -> 29.4 (64), and 290 over 290: 23.7 -> 27.3 (64)
    decoding, bf16, one query per row (128 rows over a 291-token static cache): 0.75 -> 0.72 (32), 1.49 -> 1.29
    (64); a bf16 forward without gradients over 227 queries (the prefill): 8.2 -> 26.5 (64), so not there
    fp32, every shape: sdpa equal or faster

``cpu_attention`` therefore computes ``matmul_attention`` for bf16 on a CPU when the call is a decode step (one
query) or needs gradients over at most ``MATMUL_MAX_QUERIES`` queries, and hands everything else to
transformers' own ``sdpa_attention_forward`` (fp32, long query blocks, dropout, a GPU). The query heads sharing a
key/value head are folded into the query length, so keys and values are never copied per head (``repeat_kv``).
A row whose keys are all masked (padding) gets the uniform average eager attention gives it instead of NaN.
Registered with transformers as ``rlad_cpu`` (attention and mask interfaces); the policy loader selects it on a
CPU (``rlad.policy.load_policy``). It is not saved with a checkpoint: vLLM and any other loader see the model's
usual attention.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["NAME", "cpu_attention", "matmul_attention", "register", "uses_matmul"]

NAME = "rlad_cpu"
MATMUL_MAX_QUERIES = 128
"""Longest query block whose bf16 forward + backward runs as matmuls (measured: 1.8-1.9x at 63 and 128, 0.76-1.09x
at 230; see the module docstring)."""


def uses_matmul(query: torch.Tensor, attention_mask: torch.Tensor | None, causal: bool, dropout: float) -> bool:
    """Whether ``cpu_attention`` computes this call itself rather than handing it to sdpa: bf16 on a CPU, and a
    decode step or a gradient-taking call over at most ``MATMUL_MAX_QUERIES`` queries."""
    if query.device.type != "cpu" or query.dtype != torch.bfloat16 or dropout > 0.0:
        return False
    length = query.shape[2]
    if attention_mask is None and causal and length > 1:
        return False  # transformers dropped the mask because causality alone describes it: sdpa's is_causal path
    grads = torch.is_grad_enabled() and query.requires_grad
    return length == 1 or (grads and length <= MATMUL_MAX_QUERIES)


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
