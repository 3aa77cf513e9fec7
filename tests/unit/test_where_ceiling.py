"""experiments/learning/where_ceiling.py: Defect Localization answers against the region of the policy's own mask
and of the true grid mask, by hand."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "learning"))
from where_ceiling import where_hits

from rlad.sample import VerifiableSample
from rlad.scoring import ScoredRecord

OPTIONS = {"A": "top left", "B": "center", "C": "bottom right", "D": "scattered"}


def _record(true_cells, seg, letter, answer="A", subtask="Defect Localization"):
    mask = np.zeros((3, 3), bool)
    for r, c in true_cells:
        mask[r, c] = True
    sample = VerifiableSample("s", "Where is the defect located?", OPTIONS, answer, mask, True, subtask=subtask)
    return ScoredRecord(f"<seg>{seg}</seg><think>t</think><answer>{letter}</answer>", sample, "all")


def test_where_hits_by_hand():
    records = [
        _record([(0, 0)], "(0, 0)", "A"),  # answered right, own mask right, true grid right
        _record([(0, 0)], "(2, 2)", "A"),  # answered right, own mask says bottom right
        _record([(1, 1)], "(1, 1)", "A", answer="B"),  # answered wrong, own mask right
        _record([(0, 0)], "(0, 0)-(0, 9)", "C"),  # unparseable mask: wrong; answer wrong
        _record([(1, 1)], "", "B", answer="A"),  # the true grid names center, the benchmark says top left
        _record([(0, 0)], "(0, 0)", "A", subtask="Defect Classification"),  # not counted
    ]
    got = where_hits(records)
    assert got["n"] == 5
    assert got["answered"] == pytest.approx(2 / 5)
    assert got["own_mask"] == pytest.approx(2 / 5)
    assert got["true_grid"] == pytest.approx(4 / 5)  # all but the last


def test_spread_pieces_are_scattered():
    records = [_record([(0, 0), (2, 2)], "(0, 0), (2, 2)", "D", answer="D")]
    assert where_hits(records) == {"n": 1, "answered": 1.0, "own_mask": 1.0, "true_grid": 1.0}


def test_no_localization_questions_is_an_error():
    with pytest.raises(ValueError, match="no Defect Localization questions"):
        where_hits([_record([(0, 0)], "(0, 0)", "A", subtask="Defect Classification")])
