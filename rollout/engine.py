"""The rollout engine contract: what every backend (transformers on CPU/GPU, vLLM on GPUs) provides.

An engine holds one copy of the policy and turns samples into completions. The Ray rollout worker
(``rollout/worker.py``) wraps any engine; the trainer only talks to workers. What makes a backend fit:

- ``generate`` takes a batch of samples (each with its images) and returns ``n`` completions per sample with
  token ids, per-token log-probs and the policy version that produced them;
- ``load_weights`` takes a full state dict (the learner's parameter names) and a version number, so the
  engine can prove which weights sampled what; a vLLM engine maps the names into its own layout there;
- ``fingerprint`` sums the weights it took in, so the trainer can check after every sync that the engine is
  not on stale weights (a bug TRL and verl users hit after sleep/wake);
- ``score`` gives the engine's own log-probs of a given completion: the freshness check compares them with
  the learner's, which catches weights that arrived but do not sample;
- the broadcast transport (``weight_ranks``, ``join_weight_group``, ``receive_weights``) and LoRA adapters
  (``load_adapter``) are served by both backends (``rollout/weight_sync.py``);
- sampling settings come only from rlad's ``generation`` section, never from checkpoint defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rlad.sample import VerifiableSample

__all__ = ["VISION_TOKENS", "Completion", "RolloutEngine", "banned_tokens", "stop_tokens"]

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_pad|>")


def stop_tokens(builder: Any) -> list[int]:
    """Ids that end a completion: the end-of-turn token, and the tokenizer's end-of-text when different."""
    stop = [builder.end_of_turn_id]
    eos = builder.tokenizer.eos_token_id
    return stop + ([eos] if eos is not None and eos not in stop else [])


def banned_tokens(tokenizer: Any) -> list[int]:
    """Ids never sampled: a generated ``<|image_pad|>`` (or another vision marker) would have the learner look
    for an image that is not there ("image features and image tokens do not match")."""
    vocab = tokenizer.get_vocab()
    return [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS if t in vocab]


@dataclass
class Completion:
    sample_id: str
    text: str  # decoded completion, without the end-of-turn token
    token_ids: list[int]  # generated ids, up to and including the end-of-turn token when one was produced
    finished: bool  # False when max_new_tokens cut it off
    logprobs: list[float]  # log-prob of each generated token at the sampling temperature (before top-p/top-k)
    policy_version: int  # the weights that produced it


class RolloutEngine(Protocol):
    policy_version: int

    def generate(
        self, samples: Sequence[VerifiableSample], n: int = 1, greedy: bool = False, seed: int | None = None
    ) -> list[Completion]:
        """``n`` completions per sample, in sample order (sample 0's n, then sample 1's, ...). ``seed`` makes
        sampling reproducible (a resumed run re-draws what the uninterrupted one drew)."""
        ...

    def load_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Replace the policy's weights with ``state`` (every parameter, learner names) at ``version``."""
        ...

    def fingerprint(self) -> float:
        """Sum of every weight the engine took in, in float64: equal to the learner's after a good sync."""
        ...

    def score(self, samples: Sequence[VerifiableSample], token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """Per-token log-probs (temperature 1) of the given completions under the engine's current weights."""
        ...
