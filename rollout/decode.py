"""The transformers engine's sampling loop: each prompt prefilled once, its ``n`` completions decoded together.

``transformers``' ``generate`` copies every prompt ``n`` times before the prefill, so a GRPO group of 8 runs the
vision tower and the prompt's 200-odd tokens 8 times, then samples through a general pipeline of logits
processors. Here:

    prefill   the distinct prompts, once each (vision tower, M-RoPE positions from the model's ``get_rope_index``)
    expand    the key/value cache and the last logits to n rows per prompt (into one static cache for prompt +
              ``max_new_tokens`` with ``generation.kv_cache: static``)
    decode    one token for every row per step, with explicit positions (the prompt's last + 1 + t), until
              each row has written a stop token or ``max_new_tokens``; on a CPU (``rlad_cpu`` attention) each
              step reads one copy of a group's prompt from the cache, not n (``rlad.attention.SharedPrompt``)

Sampling is plain and exact: banned tokens masked, logits / temperature, top-k, then top-p (nucleus) over the
sorted probabilities, then inverse-CDF draws from a seeded generator. The reported log-prob of each token is
``log_softmax(raw logits / temperature)``, before the masks, as the learner computes it (``rlad.logprobs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlad.attention import NAME as CPU_ATTENTION
from rlad.attention import SHARED_PROMPT, SharedPrompt
from rlad.config import GenerationConfig
from rlad.shared_prompt import cache_keyword, model_output_cache, prompt_positions, rope_index_of

__all__ = ["Decoded", "decode"]


@dataclass
class Decoded:
    token_ids: list[list[int]]  # per row, up to and including its stop token (when one came)
    logprobs: list[list[float]]  # per row and token, at the sampling temperature
    finished: list[bool]  # a stop token ended the row (not max_new_tokens)


def _next_tokens(
    logits: torch.Tensor,
    settings: GenerationConfig,
    greedy: bool,
    banned: Sequence[int],
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token (B,), its log-prob (B,)) from raw next-token logits (B, V)."""
    raw = logits.float()
    temperature = 1.0 if greedy else settings.temperature
    logp = torch.log_softmax(raw / temperature, dim=-1)
    masked = raw.clone()
    if banned:
        masked[:, list(banned)] = float("-inf")
    if greedy:
        token = masked.argmax(-1)
    else:
        masked = masked / temperature
        vocab = masked.shape[-1]
        if 0 < settings.top_k < vocab:
            kth = masked.topk(settings.top_k, dim=-1).values[:, -1:]
            masked = masked.masked_fill(masked < kth, float("-inf"))
        probs = torch.softmax(masked, dim=-1)
        order = None
        if settings.top_p < 1.0:  # keep the smallest head of the sorted tokens whose mass reaches top_p
            probs, order = probs.sort(dim=-1, descending=True)
            probs = probs.masked_fill(probs.cumsum(-1) - probs >= settings.top_p, 0.0)
        cumulative = probs.cumsum(-1)
        draw = torch.rand((raw.shape[0], 1), generator=generator, device=raw.device) * cumulative[:, -1:]
        pick = torch.searchsorted(cumulative, draw, right=True).clamp(max=vocab - 1)
        token = (order.gather(1, pick) if order is not None else pick).squeeze(1)
    return token, logp.gather(1, token.unsqueeze(1)).squeeze(1)


@torch.no_grad()
def decode(
    model: Any,
    batch: dict[str, torch.Tensor],
    n: int,
    settings: GenerationConfig,
    *,
    greedy: bool,
    stop: Sequence[int],
    banned: Sequence[int],
    pad_id: int,
    generator: torch.Generator | None = None,
) -> Decoded:
    """``n`` completions of each prompt of ``batch`` (collated left-padded, on the model's device), rows in
    prompt order (prompt 0's n, then prompt 1's, ...)."""
    from transformers import DynamicCache, StaticCache

    keyword = cache_keyword(model)
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    positions = prompt_positions(batch, rope_index_of(model))
    attention = batch["attention_mask"].long()
    out = model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1, **{keyword: DynamicCache()})
    cache = model_output_cache(out)
    if settings.kv_cache == "static":  # preallocated for prompt + max_new_tokens: no concatenation per token
        static = StaticCache(config=text_config, max_cache_len=attention.shape[1] + settings.max_new_tokens)
        filled = {"cache_position": torch.arange(attention.shape[1], device=attention.device)}
        for i, layer in enumerate(cache.layers):
            static.update(layer.keys.repeat_interleave(n, 0), layer.values.repeat_interleave(n, 0), i, filled)
        cache = static
    elif n > 1:
        cache.batch_repeat_interleave(n)
    logits = out.logits[:, -1].repeat_interleave(n, dim=0)
    last = positions[..., -1:].repeat_interleave(n, dim=-2)  # (3, B, 1) or (B, 1): the prompts' last position
    attention = attention.repeat_interleave(n, dim=0)
    rows, prompt = logits.shape[0], attention.shape[1]
    # one prompt copy per group (rlad.attention.SharedPrompt) where rlad's CPU attention runs every layer
    shared = (
        n > 1
        and getattr(model.config, "_attn_implementation", None) == CPU_ATTENTION
        and set(getattr(text_config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
    )  # fmt: skip
    if shared:  # the steps' mask, made once as the additive bias the attention takes: its prompt part (left padding)
        zero = torch.zeros((), dtype=next(model.parameters()).dtype, device=attention.device)
        bias = zero.masked_fill(attention == 0, -torch.inf)
        step_mask = {"full_attention": bias[:, None, None, :]}
    stop_ids = torch.tensor(sorted(set(stop)), dtype=torch.long, device=logits.device)
    done = torch.zeros(rows, dtype=torch.bool, device=logits.device)
    tokens, logprobs = [], []
    for t in range(settings.max_new_tokens):
        token, logp = _next_tokens(logits, settings, greedy, banned, generator)
        token = token.masked_fill(done, pad_id)
        tokens.append(token)
        logprobs.append(logp)
        done |= torch.isin(token, stop_ids)
        if bool(done.all()) or t + 1 == settings.max_new_tokens:
            break
        if shared:
            mask, extra = step_mask, {SHARED_PROMPT: SharedPrompt(n, prompt, prompt + t + 1)}
        else:
            mask = attention = torch.cat([attention, attention.new_ones(rows, 1)], dim=1)
            extra = {}
        out = model(
            input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=last + 1 + t, use_cache=True,
            **{keyword: cache}, **extra,
        )  # fmt: skip
        cache = model_output_cache(out)
        logits = out.logits[:, -1]
    token_rows = torch.stack(tokens, dim=1).tolist()
    logprob_rows = torch.stack(logprobs, dim=1).tolist()
    stops = set(stop)
    result = Decoded([], [], [])
    for ids, lps in zip(token_rows, logprob_rows, strict=True):
        cut = next((j + 1 for j, t in enumerate(ids) if t in stops), None)
        result.token_ids.append(ids[:cut] if cut else ids)
        result.logprobs.append(lps[:cut] if cut else lps)
        result.finished.append(cut is not None)
    return result
