"""experiments/learning/where_ceiling.py: Defect Localization answers against the region of the policy's own mask
and of the true grid mask, by hand."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "learning"))
from where_ceiling import where_hits

OPTIONS = {"A": "top left", "B": "center", "C": "bottom right", "D": "scattered"}


def _row(true_mask, seg, letter, answer="A", subtask="Defect Localization"):
    sample = {"subtask": subtask, "options": OPTIONS, "answer": answer, "grid": 3, "mask": true_mask}
    return {"sample": sample, "completion": f"<seg>{seg}</seg><think>t</think><answer>{letter}</answer>"}


def test_where_hits_by_hand():
    rows = [
        _row("(0, 0)", "(0, 0)", "A"),  # answered right, own mask right, true grid right
        _row("(0, 0)", "(2, 2)", "A"),  # answered right, own mask says bottom right
        _row("(1, 1)", "(1, 1)", "A", answer="B"),  # answered wrong, own mask right
        _row("(0, 0)", "(0, 0)-(0, 9)", "C"),  # unparseable mask: wrong; answer wrong
        _row("(1, 1)", "", "B", answer="A"),  # the true grid names center, the benchmark says top left
        _row("(0, 0)", "(0, 0)", "A", subtask="Defect Classification"),  # not counted
    ]
    got = where_hits(rows)
    assert got["n"] == 5
    assert got["answered"] == pytest.approx(2 / 5)
    assert got["own_mask"] == pytest.approx(2 / 5)
    assert got["true_grid"] == pytest.approx(4 / 5)  # all but the last


def test_spread_pieces_are_scattered():
    rows = [_row("(0, 0), (2, 2)", "(0, 0), (2, 2)", "D", answer="D")]
    assert where_hits(rows) == {"n": 1, "answered": 1.0, "own_mask": 1.0, "true_grid": 1.0}


def test_no_localization_questions_is_an_error():
    with pytest.raises(ValueError, match="no Defect Localization questions"):
        where_hits([_row("(0, 0)", "(0, 0)", "A", subtask="Defect Classification")])
