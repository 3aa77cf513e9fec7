"""How big a policy's masks are against the truth: the watch for the shrinking-mask reward hack.

    python experiments/learning/mask_sizes.py COMPLETIONS.jsonl [COMPLETIONS.jsonl ...]

Reads ``completions.jsonl`` files written by ``rlad eval`` (one per seed, or an SFT policy's and a GRPO policy's
side by side) and, over the questions about defective images, prints per file and as mean ± 95 % CI over files:

- ``cells``: patches the policy's ``<seg>`` names per question (an unparseable mask counts as none named);
- ``truth``: anomalous patches of the true grid mask per question;
- ``precision`` and ``recall``: named patches that are anomalous, anomalous patches that are named, pooled
  over the file's questions;
- ``unparseable``: the share of masks ``mask_text.decode`` refuses;
- ``fp_near``: the share of wrongly named patches that touch an anomalous one (8 neighbours): near misses;
- ``fn_near``: the share of missed anomalous patches that touch a named one;
- ``row_F1``, ``col_F1``: F1 of the rows (columns) a mask touches against the rows (columns) the truth does,
  pooled: which axis the policy gets wrong.

A policy learning to shrink its masks shows ``cells`` falling below ``truth`` with ``recall``; one that pads
them, ``cells`` above ``truth`` with ``precision`` falling. Errors mostly near (``fp_near``, ``fn_near`` high) are a
blurred outline; far ones are regions missed or invented.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import per_file  # noqa: E402

from rlad import mask_text  # noqa: E402
from rlad.completion import parse_completion  # noqa: E402
from rlad.metrics import BinaryCounts, binary_counts  # noqa: E402
from rlad.scoring import ScoredRecord  # noqa: E402

COLUMNS = ("cells", "truth", "precision", "recall", "unparseable", "fp_near", "fn_near", "row_F1", "col_F1")


def touching(mask: np.ndarray) -> np.ndarray:
    """Patches that are in ``mask`` or touch one of its patches (8 neighbours)."""
    padded = np.pad(mask, 1)
    rows, cols = mask.shape
    return np.any([padded[1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols]
                   for dr in (-1, 0, 1) for dc in (-1, 0, 1)], axis=0)  # fmt: skip


def mask_sizes(records: Iterable[ScoredRecord]) -> dict[str, float]:
    """``COLUMNS`` and ``n`` over the records whose sample's grid mask is not empty."""
    n = bad = fp_near = fn_near = 0
    counts, rows, cols = BinaryCounts(), BinaryCounts(), BinaryCounts()  # patches, rows, columns: pooled
    for record in records:
        truth = record.sample.mask
        if not truth.any():
            continue
        n += 1
        pred = mask_text.decode_or_none(parse_completion(record.completion).seg, record.sample.grid)
        if pred is None:
            bad += 1
            pred = np.zeros_like(truth)
        counts += binary_counts(pred, truth)
        rows += binary_counts(pred.any(1), truth.any(1))
        cols += binary_counts(pred.any(0), truth.any(0))
        fp_near += int((pred & ~truth & touching(truth)).sum())
        fn_near += int((truth & ~pred & touching(pred)).sum())
    if n == 0:
        raise ValueError("no questions about a defect the grid mask shows in these rows")
    named, anomalous = counts.tp + counts.fp, counts.tp + counts.fn
    return {
        "n": n, "cells": named / n, "truth": anomalous / n, "precision": counts.tp / named if named else 0.0,
        "recall": counts.tp / anomalous, "unparseable": bad / n,
        "fp_near": fp_near / counts.fp if counts.fp else 0.0, "fn_near": fn_near / counts.fn if counts.fn else 0.0,
        "row_F1": rows.f1(), "col_F1": cols.f1(),
    }  # fmt: skip


if __name__ == "__main__":
    per_file.main(__doc__, mask_sizes, COLUMNS)
