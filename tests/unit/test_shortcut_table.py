"""experiments/learning/shortcut.py: where a run's advantage went, by question kind, label and <seg>, by hand."""

import sys
from pathlib import Path

from conftest import make_sample

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "learning"))
from shortcut import breakdown, seg_kind

from rlad.replay import Group


def _group(gid, step, sample, segs, detection, advantages):
    n = len(segs)
    return Group(
        group_id=gid, step=step, policy_version=0, sample=sample,
        completions=[f"<seg>{s}</seg><think>t</think><answer>A</answer>" for s in segs],
        token_ids=[[1]] * n, logprobs=[[0.0]] * n,
        rewards={"detection": detection, "answer": [1.0] * n}, totals=detection, advantages=advantages,
    )  # fmt: skip


def test_seg_kind():
    assert seg_kind("<seg></seg><answer>A</answer>", 4) == "empty"
    assert seg_kind("<seg>(1, 1)</seg>", 4) == "mask"
    assert seg_kind("<seg>(1, 1)-(0, 0)</seg>", 4) == "unparseable"
    assert seg_kind("no seg at all", 4) == "unparseable"


def test_breakdown_sums_the_advantage_per_kind_label_and_seg():
    # "Discrimination" is asked of both labels (shared); "Localization" of the defective image only
    normal = make_sample(sample_id="n", subtask="Discrimination")
    defective = make_sample([(1, 1)], sample_id="d", subtask="Discrimination")
    where = make_sample([(1, 1)], sample_id="w", subtask="Localization")
    groups = [
        _group("a", 0, normal, ["", "(1, 1)"], [1.0, 0.0], [0.5, -0.5]),
        _group("b", 0, defective, ["", "(1, 1)"], [0.0, 2.0], [-1.0, 1.0]),
        _group("c", 5, where, ["(1, 1)", "(2, 2)-(0, 0)"], [2.0, 0.0], [1.0, -1.0]),
    ]
    rows = {tuple(r[:4]): r[4:] for r in breakdown(groups, [0, 5])}
    assert rows[("0-4", "shared", "normal", "empty")] == ["1", "1.00", "1.00", "+0.50", "+0.5"]
    assert rows[("0-4", "shared", "defective", "mask")] == ["1", "2.00", "1.00", "+1.00", "+1.0"]
    assert rows[("5-", "defective-only", "defective", "unparseable")] == ["1", "0.00", "1.00", "-1.00", "-1.0"]
    assert len(rows) == 6
