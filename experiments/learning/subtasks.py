"""Answer accuracy per MMAD subtask, and which defect kinds the policy takes for which.

    python experiments/learning/subtasks.py COMPLETIONS.jsonl [...] [--against OTHER.jsonl ...]

Reads ``completions.jsonl`` files written by ``rlad eval`` (one per seed, say) and prints per file and as mean ±
95 % CI over files the accuracy of each subtask (MMAD's rule, ``rlad.metrics.mmad_accuracy``: Anomaly
Discrimination balanced over normal and anomalous images), their mean (the answer accuracy of the held-out
tables), and ``cls_worst``: the Defect Classification accuracy of the defect kind answered worst (0 when the
policy never names one kind, e.g. calls every scratch a crack).
``--against``: the same seeds under another recipe, paired.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import per_file  # noqa: E402

from rlad.completion import parse_completion  # noqa: E402
from rlad.metrics import AnswerRecord, mmad_accuracy  # noqa: E402
from rlad.scoring import ScoredRecord  # noqa: E402

SUBTASK_COLUMNS = {
    "Anomaly Discrimination": "discrimination",
    "Defect Classification": "def_cls",
    "Defect Localization": "def_loc",
    "Defect Description": "def_des",
    "Object Classification": "obj_cls",
    "Object Analysis": "obj_ana",
}
COLUMNS = (*SUBTASK_COLUMNS.values(), "mean", "cls_worst")


def subtask_accuracy(records: Iterable[ScoredRecord]) -> dict[str, float]:
    """Each subtask's accuracy, their mean, the worst defect kind's classification accuracy, and ``n``."""
    answers, by_kind = [], {}
    for record in records:
        sample = record.sample
        letter = parse_completion(record.completion).answer_letter
        answers.append(AnswerRecord(sample.subtask or "all", letter, sample.answer, sample.anomalous))
        if sample.subtask == "Defect Classification":
            by_kind.setdefault(sample.defect, []).append(letter == sample.answer)
    accuracy = mmad_accuracy(answers)
    missing = [s for s in SUBTASK_COLUMNS if s not in accuracy]
    if missing:
        raise ValueError(f"no questions of {', '.join(missing)} in these rows")
    out = {column: accuracy[subtask]["accuracy"] for subtask, column in SUBTASK_COLUMNS.items()}
    worst = min(sum(hits) / len(hits) for hits in by_kind.values())
    return {"n": len(answers)} | out | {"mean": accuracy["mean"]["accuracy"], "cls_worst": worst}


if __name__ == "__main__":
    per_file.main(__doc__, subtask_accuracy, COLUMNS)
