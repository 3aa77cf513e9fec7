"""Where one policy's greedy answers differ from another's on the same questions: how much GRPO moved the mode.

    python experiments/learning/flips.py --before SFT.jsonl [...] --after GRPO.jsonl [...]

Reads pairs of ``completions.jsonl`` files written by ``rlad eval`` over the same questions in the same order (one
pair per seed: the SFT policy's and the GRPO policy's from it) and prints per pair, and as mean ± 95 % CI over the
pairs, the share of questions where:

- ``changed``: the completion differs at all;
- ``mask_moved``: the ``<seg>`` text differs, among questions about a defective image;
- ``mask_better`` / ``mask_worse``: its patch F1 against the truth rose / fell (an unparseable mask scores 0), of
  the same questions; ``F1_change`` is the mean change of patch F1 over them;
- ``letter_fixed`` / ``letter_broken``: the answer letter became right / stopped being right, of all questions.

A policy that GRPO left where SFT put it shows small ``changed``; one whose mode GRPO moved at random shows
``mask_better`` ≈ ``mask_worse`` and ``letter_fixed`` ≈ ``letter_broken``, however large ``mask_moved`` is.
A file that cannot be read, or a pair whose questions differ, stops the script naming the files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import per_file  # noqa: E402

from rlad import mask_text  # noqa: E402
from rlad.completion import parse_completion  # noqa: E402
from rlad.metrics import binary_counts  # noqa: E402
from rlad.scoring import ScoredRecord  # noqa: E402
from rlad.stats import mean_ci  # noqa: E402
from rlad.tables import markdown_table  # noqa: E402

COLUMNS = ("changed", "mask_moved", "mask_better", "mask_worse", "F1_change", "letter_fixed", "letter_broken")


def patch_f1(record: ScoredRecord) -> float:
    """Patch F1 of the record's ``<seg>`` against its sample's grid mask (``rlad.metrics``' F1; an unparseable
    mask scores 0). Asked only about defective images here, so the truth is never empty."""
    pred = mask_text.decode_or_none(parse_completion(record.completion).seg, record.sample.grid)
    return 0.0 if pred is None else binary_counts(pred, record.sample.mask).f1()


def flips(before: Sequence[ScoredRecord], after: Sequence[ScoredRecord]) -> dict[str, float]:
    """``COLUMNS`` and ``n`` for two policies' records of the same questions, in the same order."""
    if len(before) != len(after):
        raise ValueError(f"{len(before)} questions against {len(after)}: not the same questions")
    n = len(before)
    changed = fixed = broken = 0
    defect = moved = better = worse = 0
    f1_change = 0.0
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        if (b.sample.sample_id, b.sample.question) != (a.sample.sample_id, a.sample.question):
            raise ValueError(f"question {i + 1} differs: {b.sample.sample_id!r} against {a.sample.sample_id!r}")
        changed += b.completion != a.completion
        parsed_b, parsed_a = parse_completion(b.completion), parse_completion(a.completion)
        right_before = parsed_b.answer_letter == b.sample.answer
        right_after = parsed_a.answer_letter == a.sample.answer
        fixed += right_after and not right_before
        broken += right_before and not right_after
        if not np.any(b.sample.mask):
            continue
        defect += 1
        if parsed_b.seg == parsed_a.seg:
            continue
        moved += 1
        delta = patch_f1(a) - patch_f1(b)
        better += delta > 0
        worse += delta < 0
        f1_change += delta
    if n == 0 or defect == 0:
        raise ValueError("no questions about a defective image in these files")
    return {
        "n": n, "changed": changed / n, "mask_moved": moved / defect, "mask_better": better / defect,
        "mask_worse": worse / defect, "F1_change": f1_change / defect, "letter_fixed": fixed / n,
        "letter_broken": broken / n,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", nargs="+", type=Path, required=True, help="completions.jsonl of the first policy")
    p.add_argument("--after", nargs="+", type=Path, required=True, help="as many, same order: the second policy")
    args = p.parse_args(argv)
    if len(args.before) != len(args.after):
        p.error(f"--after needs one file per --before file ({len(args.before)}), got {len(args.after)}")
    results = []
    for before, after in zip(args.before, args.after, strict=True):
        b, a = per_file.measure_files([before, after], list)
        try:
            results.append(flips(b, a))
        except ValueError as e:
            raise SystemExit(f"{before} against {after}: {e}") from e
    body = [[f"{b} → {a}", str(r["n"]), *(f"{r[c]:.3f}" for c in COLUMNS)]
            for b, a, r in zip(args.before, args.after, results, strict=True)]  # fmt: skip
    if len(results) > 1:
        body.append(["mean ± 95 % CI", "", *(str(mean_ci([r[c] for r in results])) for c in COLUMNS)])
    print(markdown_table(["before → after", "n", *COLUMNS], body))


if __name__ == "__main__":
    main()
