"""experiments/learning/per_file.py through its scripts: a table row per completions file and the mean row; a bad
file refused naming it (and the line)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlad.sample import VerifiableSample
from rlad.scoring import ScoredRecord

LEARNING = Path(__file__).resolve().parents[2] / "experiments/learning"
OPTIONS = {"A": "top left", "B": "center", "C": "bottom right", "D": "scattered"}


def _line(seg: str) -> str:
    mask = np.zeros((3, 3), bool)
    mask[0, 0] = True
    sample = VerifiableSample("s", "Where is the defect located?", OPTIONS, "A", mask, True,
                              subtask="Defect Localization")  # fmt: skip
    record = ScoredRecord(f"<seg>{seg}</seg><think>t</think><answer>A</answer>", sample, "all")
    return json.dumps({"completion": record.completion, "sample": sample.to_record()}) + "\n"


def _run(script: str, *paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LEARNING / script), *map(str, paths)], capture_output=True, text=True)


@pytest.mark.parametrize("script", ["where_ceiling.py", "mask_sizes.py"])
def test_a_row_per_file_and_the_mean(tmp_path, script):
    right, wrong = tmp_path / "right.jsonl", tmp_path / "wrong.jsonl"
    right.write_text(_line("(0, 0)"))
    wrong.write_text(_line("(2, 2)"))
    out = _run(script, right, wrong)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split(" | ")[0].lstrip("| ") for line in lines[2:]] == [str(right), str(wrong), "mean ± 95 % CI"]
    if script == "mask_sizes.py":  # cells, truth, precision, recall, unparseable
        assert "| 1 | 1.000 | 1.000 | 1.000 | 1.000 | 0.000 |" in lines[2]
        assert "| 1 | 1.000 | 1.000 | 0.000 | 0.000 | 0.000 |" in lines[3]


@pytest.mark.parametrize("script", ["where_ceiling.py", "mask_sizes.py"])
def test_a_bad_file_is_refused_naming_it(tmp_path, script):
    bad = tmp_path / "completions.jsonl"
    bad.write_text(_line("(0, 0)") + "{not json\n")
    missing = tmp_path / "missing.jsonl"
    for path, message in ((bad, f"{bad}:2: not valid JSON"), (missing, f"{missing}: cannot read")):
        out = _run(script, path)
        assert out.returncode != 0
        assert message in out.stderr
