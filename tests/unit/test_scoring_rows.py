"""The held-out row's columns that say whether the policy looks at the image, against hand-computed values."""

import math

import numpy as np

from rlad.sample import VerifiableSample
from rlad.scoring import ScoredRecord, shared_subtasks, summarise

GRID = 4
DEFECT = np.zeros((GRID, GRID), bool)
DEFECT[1, 1] = True
NONE = np.zeros((GRID, GRID), bool)


def sample(subtask: str, anomalous: bool, answer: str) -> VerifiableSample:
    return VerifiableSample(
        sample_id=f"{subtask}-{anomalous}-{answer}",
        question="?",
        options={"A": "Yes", "B": "No"},
        answer=answer,
        mask=DEFECT if anomalous else NONE,
        anomalous=anomalous,
        subtask=subtask,
    )


def reply(seg: str, letter: str) -> str:
    return f"<seg>{seg}</seg><think>x</think><answer>{letter}</answer>"


def test_a_policy_that_reads_the_question_scores_image_f1_but_not_the_shared_columns():
    # It writes a mask exactly when the question is about a defect, and answers "No" to "is there a defect?":
    # image F1 over all questions looks good, over the shared questions it is 0, discrimination is chance.
    records = [
        ScoredRecord(reply("", "B"), sample("Anomaly Discrimination", False, "B"), "g"),  # right: normal
        ScoredRecord(reply("", "B"), sample("Anomaly Discrimination", True, "A"), "g"),  # wrong: missed
        ScoredRecord(reply("(1, 1)", "A"), sample("Defect Localization", True, "A"), "g"),  # only on defects
        ScoredRecord(reply("(1, 1)", "A"), sample("Defect Localization", True, "A"), "g"),
    ]
    assert shared_subtasks([r.sample for r in records]) == {"Anomaly Discrimination"}
    row = summarise(records, [{"total": 1.0}] * 4)["g"]
    # all questions: TP 2 (the localisation ones), FN 1, FP 0 -> F1 = 2*2 / (2*2 + 1) = 0.8
    assert math.isclose(row["image_F1"], 0.8)
    assert row["image_F1_shared"] == 0.0  # on the one shared subtask: TP 0, FN 1
    assert math.isclose(row["discrimination"], 0.5)  # normal 1/1, anomalous 0/1: mean 0.5


def test_a_policy_that_looks_scores_the_shared_columns_and_they_are_nan_without_shared_questions():
    records = [
        ScoredRecord(reply("", "B"), sample("Anomaly Discrimination", False, "B"), "g"),
        ScoredRecord(reply("(1, 1)", "A"), sample("Anomaly Discrimination", True, "A"), "g"),
        ScoredRecord(reply("(1, 1)", "A"), sample("Defect Localization", True, "A"), "h"),
    ]
    rows = summarise(records, [{"total": 1.0}] * 3)
    assert rows["g"]["image_F1_shared"] == 1.0 and rows["g"]["discrimination"] == 1.0
    assert math.isnan(rows["h"]["image_F1_shared"]) and math.isnan(rows["h"]["discrimination"])
    assert rows["all"]["image_F1_shared"] == 1.0  # "all" pools the groups: the localisation question is not shared
