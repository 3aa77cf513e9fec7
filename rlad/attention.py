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

**Decoding a GRPO group** (``shared_prompt_attention``, fp32 and bf16). The rollout engine decodes ``n``
completions of each prompt side by side, and the cache holds each prompt ``n`` times (the group's rows are
copies). A decode step over that cache reads every copy, and the prompt is most of the cache: it is bound by
that traffic. When the engine passes ``SharedPrompt`` (``rollout/decode.py``, keyword ``rlad_shared_prompt``),
the step is two attentions merged by their log-sum-exp ("cascade" attention): the group's ``n`` rows' queries
against one copy of its prompt, then each row against its own completion so far, both by torch's CPU flash kernel
(which returns the log-sum-exp). The unwritten tail of a static cache is not read at all. Same values as one
attention over the whole cache up to rounding (tested). ``python experiments/bench/attention.py``, 128 rows in
groups of 8 over a 291-token prompt with 48 of 160 completion slots written, against sdpa over the whole cache:
fp32 1.72x (head dim 32) / 2.33x (64), bf16 1.74x / 2.11x. The same merge in plain matmuls was slower than the
flash kernel (0.74x of sdpa in bf16): it pays for its own softmax passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "NAME", "SHARED_PROMPT", "SharedPrompt", "cpu_attention", "matmul_attention", "register",
    "shared_prompt_attention", "uses_matmul",
]  # fmt: skip

NAME = "rlad_cpu"
SHARED_PROMPT = "rlad_shared_prompt"
"""The keyword by which a decode step hands ``cpu_attention`` its ``SharedPrompt`` (through the model's forward)."""
MATMUL_MAX_QUERIES = 128
"""Longest query block whose bf16 forward + backward runs as matmuls (measured: 1.8-1.9x at 63 and 128, 0.76-1.09x
at 230; see the module docstring)."""


@dataclass(frozen=True)
class SharedPrompt:
    """Where a decode step's keys and values are: the rows come in groups of ``group`` completions of one prompt
    (rows ``k * group`` to ``(k + 1) * group - 1``), cache positions ``[0, prompt)`` hold the group's prompt (the
    same in each of its rows: the first row's copy is read), ``[prompt, filled)`` each row's completion so far,
    the token being decoded included."""

    group: int
    prompt: int
    filled: int


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

    shared = kwargs.pop(SHARED_PROMPT, None)
    if shared is not None:  # a group's decode step (rollout/decode.py): its mask covers the prompt only
        if dropout:
            raise ValueError(f"{SHARED_PROMPT} is for decoding: attention dropout {dropout} is not applied there")
        out = shared_prompt_attention(query, key, value, attention_mask, shared, scaling)
        return out.transpose(1, 2).contiguous(), None
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


def shared_prompt_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    shared: SharedPrompt,
    scaling: float | None = None,
) -> torch.Tensor:
    """One decode step's attention (query (B, H, 1, D), key and value (B, Hkv, Lk, D), mask as in
    ``cpu_attention`` over the Lk positions) computed as the group's queries against one copy of its prompt plus
    each row against its own completion, merged by log-sum-exp; returns (B, H, 1, D). The mask is read over the
    prompt only (left padding, the same for a group's rows): every completion position before ``filled`` attends."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    batch, heads, _, dim = query.shape
    kv_heads, n, prompt = key.shape[1], shared.group, shared.prompt
    if query.shape[2] != 1 or batch % n or not 0 < prompt < shared.filled <= key.shape[2]:
        raise ValueError(
            f"{shared} does not describe a decode step of {batch} rows x {query.shape[2]} queries over "
            f"{key.shape[2]} cached positions: one query a row, rows in whole groups, prompt < filled <= the "
            "cache's length"
        )
    fold, groups = heads // kv_heads, batch // n
    scale = dim**-0.5 if scaling is None else scaling
    # the group's n rows x fold query heads of a kv head as one block of n * fold queries over its prompt
    queries = query.reshape(groups, n, kv_heads, fold, dim).transpose(1, 2).reshape(groups, kv_heads, n * fold, dim)
    bias = None
    if attention_mask is not None:  # the flash kernel takes an additive bias (rollout/decode.py passes one, made once)
        mask = attention_mask[::n, :, -1:, :prompt]  # (groups, 1, 1, prompt)
        if mask.dtype == torch.bool:
            bias = torch.zeros((), dtype=query.dtype, device=query.device).masked_fill(~mask, float("-inf"))
        else:
            bias = mask.to(query.dtype)
    head, head_lse = flash(queries, key[::n, :, :prompt], value[::n, :, :prompt], attn_mask=bias, scale=scale)
    head = head.reshape(groups, kv_heads, n, fold, dim).transpose(1, 2).reshape(batch, kv_heads, fold, dim)
    head_lse = head_lse.reshape(groups, kv_heads, n, fold).transpose(1, 2).reshape(batch, kv_heads, fold, 1)
    own = slice(prompt, shared.filled)
    tail, tail_lse = flash(query.reshape(batch, kv_heads, fold, dim), key[:, :, own], value[:, :, own], scale=scale)
    # softmax over both parts = the parts' outputs weighted by their shares of the total mass: e^lh / (e^lh + e^lt)
    share = torch.sigmoid(head_lse - tail_lse.reshape_as(head_lse))
    out = torch.lerp(tail.float(), head.float(), share) if query.dtype != torch.float32 else tail.lerp(head, share)
    return out.to(query.dtype).reshape(batch, heads, 1, dim)


def register() -> str:
    """Make ``rlad_cpu`` known to transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, cpu_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
