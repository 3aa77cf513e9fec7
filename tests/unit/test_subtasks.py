"""experiments/learning/subtasks.py: answer accuracy per subtask and the worst-named defect kind, by hand; and
per_file's ``--against`` (the same seeds under another recipe, paired) through it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "learning"))
from subtasks import subtask_accuracy

from rlad.sample import VerifiableSample
from rlad.scoring import ScoredRecord

LEARNING = Path(__file__).resolve().parents[2] / "experiments" / "learning"

OPTIONS = {"A": "one", "B": "two"}


def _record(subtask, letter, answer="A", anomalous=True, defect="scratch"):
    sample = VerifiableSample("s", "q", OPTIONS, answer, np.zeros((2, 2), bool), anomalous,
                              defect=defect if anomalous else "good", subtask=subtask)  # fmt: skip
    return ScoredRecord(f"<seg></seg><think>t</think><answer>{letter}</answer>", sample, "all")


def _one_of_each(letter="A"):
    return [_record(s, letter) for s in ("Defect Localization", "Defect Description", "Object Classification",
                                         "Object Analysis")]  # fmt: skip


def test_subtask_accuracy_by_hand():
    records = [
        _record("Anomaly Discrimination", "A", anomalous=True),  # anomalous images: 1 of 1
        _record("Anomaly Discrimination", "A", answer="B", anomalous=False),  # normal images: 0 of 2
        _record("Anomaly Discrimination", "A", answer="B", anomalous=False),
        _record("Defect Classification", "B", defect="scratch"),  # scratch: 0 of 2 (called the other kind)
        _record("Defect Classification", "B", defect="scratch"),
        _record("Defect Classification", "A", defect="crack"),  # crack: 2 of 2
        _record("Defect Classification", "A", defect="crack"),
        *_one_of_each("A"),
        _record("Object Analysis", "B"),  # 1 of 2
    ]
    got = subtask_accuracy(records)
    assert got["n"] == len(records)
    assert got["discrimination"] == pytest.approx(0.5)  # balanced: (1 + 0) / 2, not 1 of 3
    assert got["def_cls"] == pytest.approx(0.5) and got["cls_worst"] == 0.0
    assert (got["def_loc"], got["def_des"], got["obj_cls"], got["obj_ana"]) == (1.0, 1.0, 1.0, 0.5)
    assert got["mean"] == pytest.approx((0.5 + 0.5 + 1 + 1 + 1 + 0.5) / 6)


def test_a_file_without_a_subtask_is_refused_naming_it():
    with pytest.raises(ValueError, match="no questions of Anomaly Discrimination, Defect Classification"):
        subtask_accuracy(_one_of_each())


def _write(path: Path, records) -> Path:
    path.write_text("".join(json.dumps({"completion": r.completion, "sample": r.sample.to_record()}) + "\n"
                            for r in records))  # fmt: skip
    return path


def _file(tmp_path: Path, name: str, right: int) -> Path:
    """Six subtasks, every answer right except Object Classification's, right ``right`` of 4 times."""
    records = [_record("Anomaly Discrimination", "A"), _record("Defect Classification", "A"), *_one_of_each()]
    records += [_record("Object Classification", "A" if i < right else "B") for i in range(3)]
    return _write(tmp_path / f"{name}.jsonl", records)


def test_against_pairs_the_files_by_position(tmp_path):
    mine = [_file(tmp_path, f"mine{i}", right) for i, right in enumerate((3, 3, 2))]
    other = [_file(tmp_path, f"other{i}", right) for i, right in enumerate((0, 1, 1))]
    run = [sys.executable, str(LEARNING / "subtasks.py"), *map(str, mine), "--against", *map(str, other)]
    out = subprocess.run(run, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split(" | ")[0].lstrip("| ") for line in lines[-3:]] == [
        "mean ± 95 % CI", "--against: mean ± 95 % CI", "− --against, paired"]  # fmt: skip
    # Object Classification: mine 4/4, 4/4, 3/4; other 1/4, 2/4, 2/4 -> differences 3/4, 2/4, 1/4: mean 0.5
    # ± t(2) * 0.25 / sqrt(3) = 0.621, which holds 0: no star
    assert lines[-1].split(" | ")[6] == "0.500 ± 0.621"
    short = subprocess.run([*run[:-1]], capture_output=True, text=True)
    assert short.returncode != 0 and "--against needs one file per completions file (3), got 2" in short.stderr
