"""experiments/ablations/common.py: the tables over seeds, checked against hand-computed intervals."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "ablations"))
from common import difference_table, over_seeds

from rlad.stats import Interval
from rlad.tables import detection_table, percent, understanding_table

T2 = 4.303  # Student t, 0.975 quantile, 2 degrees of freedom (rlad.stats keeps 4 digits)


def metrics(acc: float, dis: float, pixel: float | None, n: int = 100) -> dict:
    detection = None if pixel is None else {
        "pixel_f1": pixel, "pixel_accuracy": 0.9, "image_f1": 0.8, "image_accuracy": 0.8, "iou_ano": 0.3,
        "iou_nor": 1.0, "unparseable_rate": 0.0,
    }  # fmt: skip
    return {"n": n, "mmad_mean": acc, "format_rate": 1.0, "detection": detection,
            "subtasks": {"Anomaly Discrimination": dis, "Defect Localization": 0.3}}  # fmt: skip


def test_every_number_becomes_its_interval_over_seeds():
    rows = over_seeds([metrics(0.50, 0.9, 0.40), metrics(0.52, 0.9, 0.41), metrics(0.54, 0.9, 0.42, n=101)])
    acc = rows["mmad_mean"]
    assert acc.mean == pytest.approx(0.52) and acc.n == 3
    assert acc.half_width == pytest.approx(T2 * 0.02 / math.sqrt(3))  # sd 0.02 over 3 seeds
    assert rows["subtasks"]["Anomaly Discrimination"].half_width == pytest.approx(0.0)
    assert rows["detection"]["pixel_f1"].mean == pytest.approx(0.41)
    assert rows["n"] == "100-101"  # held-out sizes differ by seed: the range, not a mean
    assert over_seeds([metrics(0.5, 0.9, None)] * 3)["detection"] is None  # a layout without <seg>
    assert percent(acc) == f"52.0 ± {100 * T2 * 0.02 / math.sqrt(3):.1f}" == "52.0 ± 5.0"
    assert percent(Interval(0.25, float("nan"), 1)) == "25.0"  # one seed: no interval
    table = understanding_table({"SFT": rows}, "Variant") + detection_table({"SFT": rows}, "Variant")
    assert "| SFT | 90.0 ± 0.0 | 30.0 ± 0.0 | 52.0 ± 5.0 | 100.0 ± 0.0 | 100-101 |" in table
    assert "41.0 ± 2.5, 90.0 ± 0.0" in table  # pixel F1 over seeds: sd 0.01 -> 4.30 * 0.01 / sqrt(3)


def test_differences_are_paired_by_seed_and_marked_beyond_noise():
    per_seed = {
        "w/o X": [metrics(0.50, 0.9, 0.40), metrics(0.52, 0.8, 0.41), metrics(0.54, 0.7, 0.42)],
        "w/o V": [metrics(0.41, 0.9, None)] * 3,
        "All": [metrics(0.40, 0.8, 0.41), metrics(0.41, 0.8, 0.40), metrics(0.42, 0.8, 0.43)],
    }
    lines = difference_table(per_seed, "All").splitlines()
    assert lines[0].startswith("|  | Avg. | Anom Dis. |")
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[0] == "w/o X − All"
    assert cells[1] == f"+11.0 ± {T2 * 1 / math.sqrt(3):.1f} *" == "+11.0 ± 2.5 *"  # 10, 11, 12 points: sd 1
    assert cells[2] == "+0.0 ± 24.8"  # +10, 0, -10 points: sd 10, no star
    assert cells[5] == "-0.3 ± 2.9"  # pixel F1 -1, +1, -1 points
    cells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert cells[0] == "w/o V − All" and cells[5] == "—"  # no <seg>, no pixel F1 to compare
    assert len(lines) == 4  # the reference is not compared with itself
