"""How big a policy's masks are against the truth: the watch for the shrinking-mask reward hack.

    python experiments/learning/mask_sizes.py COMPLETIONS.jsonl [COMPLETIONS.jsonl ...]

Reads ``completions.jsonl`` files written by ``rlad eval`` (one per seed, or an SFT policy's and a GRPO policy's
side by side) and, over the questions about defective images, prints per file and as mean ± 95 % CI over files:

- ``cells``: patches the policy's ``<seg>`` names per question (an unparseable mask counts as none named);
- ``truth``: anomalous patches of the true grid mask per question;
- ``precision`` and ``recall``: named patches that are anomalous, anomalous patches that are named, pooled
  over the file's questions;
- ``unparseable``: the share of masks ``mask_text.decode`` refuses.

A policy learning to shrink its masks shows ``cells`` falling below ``truth`` with ``recall``; one that pads
them, ``cells`` above ``truth`` with ``precision`` falling.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rlad import mask_text  # noqa: E402
from rlad.completion import parse_completion  # noqa: E402
from rlad.scoring import CompletionFileError, ScoredRecord, read_completions  # noqa: E402
from rlad.stats import mean_ci  # noqa: E402
from rlad.tables import markdown_table  # noqa: E402

COLUMNS = ("cells", "truth", "precision", "recall", "unparseable")


def mask_sizes(records: Iterable[ScoredRecord]) -> dict[str, float]:
    """``COLUMNS`` and ``n`` over the records whose sample's grid mask is not empty."""
    n = named = anomalous = hits = bad = 0
    for record in records:
        truth = record.sample.mask
        if not truth.any():
            continue
        n += 1
        pred = mask_text.decode_or_none(parse_completion(record.completion).seg, record.sample.grid)
        if pred is None:
            bad += 1
            pred = np.zeros_like(truth)
        named += int(np.count_nonzero(pred))
        anomalous += int(np.count_nonzero(truth))
        hits += int(np.count_nonzero(pred & truth))
    if n == 0:
        raise ValueError("no questions about a defect the grid mask shows in these rows")
    return {
        "n": n, "cells": named / n, "truth": anomalous / n, "precision": hits / named if named else 0.0,
        "recall": hits / anomalous, "unparseable": bad / n,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("completions", nargs="+", type=Path, help="completions.jsonl files written by rlad eval")
    args = p.parse_args()
    results = []
    for path in args.completions:
        try:
            results.append(mask_sizes(read_completions(path)))
        except CompletionFileError as e:  # names the file and line
            raise SystemExit(str(e)) from e
        except OSError as e:
            raise SystemExit(f"{path}: cannot read ({e.strerror})") from e
        except ValueError as e:
            raise SystemExit(f"{path}: {e}") from e
    pairs = zip(args.completions, results, strict=True)
    body = [[str(path), str(r["n"]), *(f"{r[c]:.3f}" for c in COLUMNS)] for path, r in pairs]
    if len(results) > 1:
        body.append(["mean ± 95 % CI", "", *(str(mean_ci([r[c] for r in results])) for c in COLUMNS)])
    print(markdown_table(["completions", "n", *COLUMNS], body))


if __name__ == "__main__":
    main()
