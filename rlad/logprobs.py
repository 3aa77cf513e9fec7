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

__all__ = ["completion_logprobs", "token_logprobs"]


def token_logprobs(
    model: Any, batch: dict[str, torch.Tensor], temperature: float = 1.0, entropy: bool = False
) -> tuple[torch.Tensor, ...]:
    """(logprobs (B, L), mask (B, L)[, entropy (B, L)]): log-prob of ``batch["labels"]`` at each labelled
    position, 0 elsewhere; with ``entropy`` also the policy's entropy there (no gradient; a collapse monitor)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[:, :-1].float() / temperature  # (B, L-1, V): position t predicts token t+1
    targets = labels[:, 1:]  # (B, L-1)
    mask = targets != IGNORE_INDEX
    log_probs = torch.log_softmax(logits, dim=-1)
    picked = torch.gather(log_probs, 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    pad = torch.zeros_like(labels[:, :1], dtype=picked.dtype)
    # back to (B, L) aligned with labels: entry t is log p(labels[t] | tokens < t)
    out = (torch.cat([pad, picked * mask], dim=1), torch.cat([pad.bool(), mask], dim=1))
    if not entropy:
        return out
    with torch.no_grad():
        h = -(log_probs.exp() * log_probs).sum(-1) * mask  # (B, L-1)
    return (*out, torch.cat([pad, h], dim=1))


@torch.no_grad()
def completion_logprobs(
    model: Any, builder: InputBuilder, samples: Sequence[VerifiableSample], token_ids: Sequence[Sequence[int]]
) -> list[list[float]]:
    """Per-token log-probs (temperature 1) of each given completion under ``model``: the freshness check's
    probe, computed alike by the learner and the transformers engine (vLLM reports its own)."""
    param = next(model.parameters())
    encoded = [builder.encode_completion(s, list(ids)) for s, ids in zip(samples, token_ids, strict=True)]
    logp, mask = token_logprobs(model, to_model(builder.collate(encoded), param.device, param.dtype))
    return [row[m].tolist() for row, m in zip(logp, mask, strict=True)]
