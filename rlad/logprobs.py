"""Per-token log-probabilities of given tokens under a model: what the learner feeds the GRPO loss.

``token_logprobs(model, batch)`` runs the model on a batch from ``InputBuilder.collate`` (prompt + completion,
labels -100 on the prompt) and returns, for every position whose label is set, log p(label | everything
before it) at ``temperature``, shape (B, L), with the label mask. The rollout engine reports the same quantity
for the tokens it sampled; the two agree for the same weights (tested), which is what makes the engine's
numbers usable as old log-probs and their gap a measure of stale weights.
"""

from __future__ import annotations

from typing import Any

import torch

from rlad.inputs import IGNORE_INDEX

__all__ = ["token_logprobs"]


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
