"""Score a policy on held-out samples: generate, verify with the reward mix, summarise the metrics.

The completions are written as a completions JSONL (the format ``rlad score`` reads), so any evaluation
can be re-scored offline under another reward mix.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewards import RewardMix
from rlad.config import Config
from rlad.inputs import InputBuilder
from rlad.sample import VerifiableSample
from rlad.scoring import ScoredRecord, score_records, summarise
from rollout.transformers_engine import TransformersEngine

__all__ = ["evaluate_policy", "save_and_summarise"]


def evaluate_policy(
    model: Any,
    builder: InputBuilder,
    samples: Sequence[VerifiableSample],
    config: Config,
    group: str,
    out: str | Path | None = None,
    batch_size: int = 16,
) -> dict[str, float]:
    """Greedy completions for ``samples``; returns the summary row (mean rewards, F1s, answer accuracy)."""
    was_training = model.training
    model.eval()
    engine = TransformersEngine(model, builder, config.generation, batch_size=batch_size)
    completions = engine.generate(samples, n=1, greedy=True)
    model.train(was_training)
    records = [ScoredRecord(c.text, s, group) for c, s in zip(completions, samples, strict=True)]
    return save_and_summarise(records, score_records(records, RewardMix(config.rewards)), group, out)


def save_and_summarise(
    records: Sequence[ScoredRecord], scores: Sequence[dict[str, float]], group: str, out: str | Path | None
) -> dict[str, float]:
    """Write the scored completions as a completions JSONL (re-scorable with ``rlad score``); the summary row."""
    if out is not None:
        with Path(out).open("w", encoding="utf-8") as f:
            for r, s in zip(records, scores, strict=True):
                f.write(json.dumps({"completion": r.completion, "sample": r.sample.to_record(), "group": group,
                                    "scores": s}) + "\n")  # fmt: skip
    return summarise(list(records), list(scores))[group]
