"""Per-token log-probabilities of given tokens under a model: what the learner feeds the GRPO loss.

``token_logprobs(model, batch)`` runs the model on a batch from ``InputBuilder.collate`` (prompt + completion,
labels -100 on the prompt) and returns, for every position whose label is set, log p(label | everything
before it) at ``temperature``, shape (B, L), with the label mask. The rollout engine reports the same quantity
for the tokens it sampled; the two agree for the same weights (tested), which is what makes the engine's
numbers usable as old log-probs and their gap a measure of stale weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlad.inputs import IGNORE_INDEX, InputBuilder, to_model
from rlad.sample import VerifiableSample
from rlad.shared_prompt import SharedPromptBatch, cache_keyword, forward_parameters, model_output_cache

__all__ = ["completion_logprobs", "shared_prompt_logprobs", "token_logprobs"]


def _takes_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in forward_parameters(model)


def token_logprobs(
    model: Any, batch: dict[str, torch.Tensor], temperature: float = 1.0, entropy: bool = False
) -> tuple[torch.Tensor, ...]:
    """(logprobs (B, L), mask (B, L)[, entropy (B, L)]): log-prob of ``batch["labels"]`` at each labelled
    position, 0 elsewhere; with ``entropy`` also the policy's entropy there (no gradient; a collapse monitor).

    A left-padded batch (``collate(..., padding_side="left")``: every sequence ends in the last column) has all its
    completion tokens in the last K columns, so only K + 1 positions of logits are computed (``logits_to_keep``):
    the output layer and the softmax skip the prompt, which is most of a VLM's sequence."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labelled = labels != IGNORE_INDEX
    keep = int(labelled.sum(1).max()) + 1 if labels.numel() else 0
    left_aligned = bool((labelled.any(1) <= labelled[:, -1]).all()) if labels.numel() else False
    start = 0  # the first position whose logits are computed
    if left_aligned and keep < labels.shape[1] and _takes_logits_to_keep(model):
        inputs["logits_to_keep"] = keep
        start = labels.shape[1] - keep
    logits = model(**inputs).logits[:, :-1].float() / temperature  # position start + t predicts token start + t + 1
    targets = labels[:, start + 1 :]  # (B, L - start - 1)
    mask = targets != IGNORE_INDEX
    log_probs = torch.log_softmax(logits, dim=-1)
    picked = torch.gather(log_probs, 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    pad = torch.zeros_like(labels[:, : start + 1], dtype=picked.dtype)
    # back to (B, L) aligned with labels: entry t is log p(labels[t] | tokens < t)
    out = (torch.cat([pad, picked * mask], dim=1), torch.cat([pad.bool(), mask], dim=1))
    if not entropy:
        return out
    with torch.no_grad():
        h = -(log_probs.exp() * log_probs).sum(-1) * mask  # (B, L - start - 1)
    return (*out, torch.cat([pad, h], dim=1))


def _rows(select: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x``'s rows picked by the one-hot ``select`` (N, R): (N, *x.shape[1:])."""
    return (select @ x.reshape(x.shape[0], -1)).view(select.shape[0], *x.shape[1:])


def shared_prompt_logprobs(
    model: Any, batch: SharedPromptBatch, temperature: float = 1.0, entropy: bool = False
) -> tuple[torch.Tensor, ...]:
    """``token_logprobs`` for a shared-prompt micro-batch (``rlad.shared_prompt``): (logprobs (N, T), mask (N, T)[,
    entropy (N, T)]), one row per completion, its token t in column t. Two forward passes: the distinct prompts
    (keeping their key/value cache, autograd history included), then every completion behind its prompt's cache."""
    from transformers import DynamicCache

    keyword = cache_keyword(model)
    prompts = batch.prompts
    out = model(**prompts, use_cache=True, logits_to_keep=1, **{keyword: DynamicCache()})
    # row n gets completion n's prompt through a one-hot matmul, not an indexed gather: the backward of a gather
    # with repeated rows accumulates in a thread-dependent order, and resumed runs must equal uninterrupted ones
    select = torch.nn.functional.one_hot(batch.owner, out.logits.shape[0]).to(out.logits.dtype)
    cache = DynamicCache()
    for i, layer in enumerate(model_output_cache(out).layers):
        cache.update(_rows(select, layer.keys), _rows(select, layer.values), i)
    logits = _rows(select, out.logits[:, -1:])  # (N, 1, V): the prompt's last position predicts token 0
    steps = batch.completion_ids.shape[1]
    if steps > 1:  # tokens 0 .. T-2, each predicting the next one
        attention = torch.cat([prompts["attention_mask"][batch.owner], batch.mask[:, :-1].long()], dim=1)
        offsets = torch.arange(1, steps, device=batch.owner.device)
        # left padding: each prompt ends in the last column, where (text) positions are equal on every M-RoPE axis
        last = prompts["position_ids"][..., batch.owner, -1:]  # (3, N, 1) or (N, 1)
        positions = last + offsets
        rest = model(input_ids=batch.completion_ids[:, :-1], attention_mask=attention, position_ids=positions,
                     use_cache=True, **{keyword: cache})  # fmt: skip
        logits = torch.cat([logits, rest.logits], dim=1)
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    picked = torch.gather(log_probs, 2, batch.completion_ids.unsqueeze(-1)).squeeze(-1) * batch.mask
    if not entropy:
        return picked, batch.mask
    with torch.no_grad():
        h = -(log_probs.exp() * log_probs).sum(-1) * batch.mask
    return picked, batch.mask, h


@torch.no_grad()
def completion_logprobs(
    model: Any, builder: InputBuilder, samples: Sequence[VerifiableSample], token_ids: Sequence[Sequence[int]]
) -> list[list[float]]:
    """Per-token log-probs (temperature 1) of each given completion under ``model``: the freshness check's
    probe, computed alike by the learner and the transformers engine (vLLM reports its own)."""
    param = next(model.parameters())
    encoded = [builder.encode_completion(s, list(ids)) for s, ids in zip(samples, token_ids, strict=True)]
    batch = to_model(builder.collate(encoded, padding_side="left"), param.device, param.dtype)
    logp, mask = token_logprobs(model, batch)
    return [row[m].tolist() for row, m in zip(logp, mask, strict=True)]
