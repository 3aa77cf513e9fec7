"""experiments/learning/mask_sizes.py: mask size, precision and recall against the truth, by hand."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "learning"))
from mask_sizes import mask_sizes

from rlad.sample import VerifiableSample
from rlad.scoring import ScoredRecord


def _record(true_cells, seg):
    mask = np.zeros((4, 4), bool)
    for r, c in true_cells:
        mask[r, c] = True
    sample = VerifiableSample("s", "Is there a defect?", {"A": "Yes.", "B": "No."}, "A", mask, bool(true_cells))
    return ScoredRecord(f"<seg>{seg}</seg><think>t</think><answer>A</answer>", sample, "all")


def test_mask_sizes_by_hand():
    records = [
        _record([(0, 0), (0, 1)], "(0, 0)-(0, 2)"),  # 3 named, 2 right, 2 true
        _record([(1, 1), (2, 2)], "(2, 2)"),  # 1 named, 1 right, 2 true
        _record([(3, 3)], "(3, 3)-(3, 9)"),  # off the grid: unparseable, none named, 1 true
        _record([], "(0, 0)"),  # a normal image: not counted
    ]
    got = mask_sizes(records)
    # wrong: (0, 2) touches (0, 1); missed: (1, 1) touches the named (2, 2), (3, 3) touches nothing named
    assert got == pytest.approx({"n": 3, "cells": 4 / 3, "truth": 5 / 3, "precision": 3 / 4, "recall": 3 / 5,
                                 "unparseable": 1 / 3, "fp_near": 1.0, "fn_near": 1 / 2,
                                 # rows: {0} vs {0}, {2} vs {1, 2}, {} vs {3}: 2 hits, 2 named, 4 true
                                 "row_F1": 4 / 6,
                                 # columns: {0, 1, 2} vs {0, 1}, {2} vs {1, 2}, {} vs {3}: 3 hits, 4 named, 5 true
                                 "col_F1": 6 / 9})  # fmt: skip


def test_near_misses_are_the_eight_neighbours():
    from mask_sizes import touching

    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    assert touching(mask).sum() == 4 and touching(mask)[1, 1] and not touching(mask)[2, 2]
    far = mask_sizes([_record([(0, 0)], "(3, 3)")])
    assert far["fp_near"] == 0.0 and far["fn_near"] == 0.0 and far["precision"] == 0.0


def test_no_defect_questions_is_an_error():
    with pytest.raises(ValueError, match="no questions about a defect"):
        mask_sizes([_record([], "")])
