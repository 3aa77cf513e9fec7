"""experiments/learning/answer_chain.py: where a defect question's answer is lost (seen, carried, letter), by hand."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "learning"))
from answer_chain import answer_chain, look_parts

from rlad.sample import VerifiableSample
from rlad.scoring import ScoredRecord

KINDS = {"A": "a scratch", "B": "a crack"}
REGIONS = {"A": "top", "B": "left", "C": "center"}
LOOKS = {"A": "a small dark line mark", "B": "a large dark line mark"}


def _think(look="a small dark line mark", region="top", kind="a scratch", said="top", letter="A"):
    """A think in sft_target's words (rlad.data.questions), each claim given."""
    return (
        f"This is a photo of a wooden surface. There is {look} in the {region} of the image, covering 3 patches in "
        f"rows 1-2 and columns 0-1. It does not belong to a normal wood: it is {kind}, so the object is anomalous. "
        f"The question asks: What? The answer is {said}, option {letter}."
    )


def _record(subtask, options, think, answer_letter, right="A"):
    sample = VerifiableSample("s", "q", options, right, np.zeros((2, 2), bool), True, defect="scratch",
                              subtask=subtask)  # fmt: skip
    return ScoredRecord(f"<seg></seg><think>{think}</think><answer>{answer_letter}</answer>", sample, "all")


def test_each_step_by_hand():
    loc = "Defect Localization"
    records = [
        # Localization (right: "top", A). 1: all right. 2: saw "left", carried it, lettered it B, answered B.
        _record(loc, REGIONS, _think(region="top", said="top", letter="A"), "A"),
        _record(loc, REGIONS, _think(region="left", said="left", letter="B"), "B"),
        # 3: saw "top", said "center" (not carried), named A for it (wrong letter), answered A (right after all).
        _record(loc, REGIONS, _think(region="top", said="center", letter="A"), "A"),
        # 4: no think claims at all, answered C.
        _record(loc, REGIONS, "no idea", "C"),
        # Classification (right: "a scratch", A): saw it, carried it, lettered it, answered B.
        _record("Defect Classification", KINDS, _think(kind="a scratch", said="a scratch", letter="A"), "B"),
        # Description (right: "a small dark line mark", A): saw the large one, carried it, letter right for it.
        _record("Defect Description", LOOKS, _think(look=LOOKS["B"], said=LOOKS["B"], letter="B"), "A"),
        _record("Anomaly Discrimination", {"A": "Yes.", "B": "No."}, _think(said="Yes", letter="A"), "A"),  # skipped
    ]
    got = answer_chain(records)
    assert got["n"] == 6
    assert (got["loc_seen"], got["loc_carried"], got["loc_letter"], got["loc_acc"]) == (0.5, 0.5, 0.5, 0.5)
    assert (got["cls_seen"], got["cls_carried"], got["cls_letter"], got["cls_acc"]) == (1.0, 1.0, 1.0, 0.0)
    assert (got["des_seen"], got["des_carried"], got["des_letter"], got["des_acc"]) == (0.0, 1.0, 1.0, 1.0)
    # the large dark line mark for the small one: the size wrong, the colour and the shape right
    assert (got["des_size"], got["des_colour"], got["des_shape"]) == (0.0, 1.0, 1.0)


def test_the_parts_of_a_look_by_hand():
    right = "a small blue and yellow round mark"  # a colour of several words
    assert look_parts("a small blue and yellow round mark", right) == {"size": True, "colour": True, "shape": True}
    assert look_parts("a large blue round mark", right) == {"size": False, "colour": False, "shape": True}
    assert look_parts(None, right) == look_parts("a dent", right) == {"size": False, "colour": False, "shape": False}


def test_a_file_without_a_defect_subtask_is_refused_naming_it():
    records = [_record("Defect Localization", REGIONS, _think(), "A")]
    with pytest.raises(ValueError, match="no questions of Defect Classification, Defect Description"):
        answer_chain(records)
