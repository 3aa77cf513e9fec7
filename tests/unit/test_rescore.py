"""``rlad rescore``'s maths by hand: rank correlation, and the side-by-side comparison of mixes."""

import json
import math

import numpy as np
import pytest
from conftest import make_sample
from test_replay import group

from rewards import RewardMix
from rlad.config import paper_rewards
from rlad.rescore import (
    compare_mixes,
    mix_signal,
    per_completion_rows,
    signal_scores,
    spearman,
    stored_signal,
    write_rows,
)

RIGHT = "<seg>(1, 1)-(1, 1)</seg><think>t</think><answer>A</answer>"  # format 1, detection 2*F1=2, answer 1
NO_MASK = "<seg></seg><think>t</think><answer>A</answer>"  # format 1, detection 0 (defect missed), answer 1
WRONG = "<seg>(1, 1)-(1, 1)</seg><think>t</think><answer>B</answer>"  # format 1, detection 2, answer 0.1


def test_spearman_by_hand():
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    # ties take their mean rank: a = ranks (0.5, 0.5, 2), b = (0, 1, 2); corr of centred (-0.5,-0.5,1), (-1,0,1)
    # = (0.5 + 0 + 1) / sqrt(1.5 * 2) = 1.5 / sqrt(3)
    assert spearman(np.array([0.0, 0.0, 5.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(1.5 / math.sqrt(3))
    assert math.isnan(spearman(np.array([1.0, 1.0]), np.array([1.0, 2.0])))


def test_mixes_compared_with_what_the_run_stored(tmp_path):
    sample = make_sample(patches=[(1, 1)], answer="A")
    g = group("g", sample=sample, totals=(0.0, 0.0, 0.0))
    g.completions = [RIGHT, NO_MASK, WRONG]
    paper = RewardMix(paper_rewards())
    # stored as the paper's mix trained on it: totals 4, 2, 3.1 -> advantages centred (scale none)
    stored_scores = paper.score(g.completions, [sample] * 3)
    g.totals = stored_scores.total.tolist()
    g.rewards = {k: v.tolist() for k, v in stored_scores.components.items()}
    g.advantages = (stored_scores.total - stored_scores.total.mean()).tolist()
    flat = group("flat", sample=sample, totals=(0.0, 0.0, 0.0))  # a second prompt: three identical completions
    flat.completions = [RIGHT] * 3
    flat.totals, flat.advantages = [4.0] * 3, [0.0] * 3
    flat.rewards = {"format": [1.0] * 3, "detection": [2.0] * 3, "answer": [1.0] * 3}
    groups = [g, flat]

    stored = stored_signal(groups)
    same = mix_signal("paper", groups, paper, "none")
    no_detection = mix_signal("no-det", groups, RewardMix({**paper_rewards(), "detection": {"weight": 0.0}}), "none")
    rows = compare_mixes([stored, same, no_detection], stored)
    assert rows[0]["total"] == pytest.approx((4 + 2 + 3.1 + 12) / 6)
    assert rows[1] == pytest.approx(rows[0], nan_ok=True)  # the run's own mix gives back what it stored
    assert rows[1]["rank_corr"] == pytest.approx(1.0) and rows[1]["sign_flips"] == 0.0
    # without detection: totals 2, 2, 1.1 -> advantages (0.3, 0.3, -0.6) against the stored (0.97, -1.03, 0.07):
    # NO_MASK flips from - to +, WRONG from + to -: 2 of 6; the flat group has no signal under either mix
    assert rows[2]["total"] == pytest.approx((2 + 2 + 1.1 + 6) / 6)
    assert rows[2]["detection"] == pytest.approx(rows[0]["detection"])  # weight 0: still computed, still shown
    assert rows[2]["sign_flips"] == pytest.approx(2 / 6)
    assert rows[2]["no_signal_groups"] == rows[0]["no_signal_groups"] == 0.5

    # the per-step table's scores come from the signal, in store order, as score_records gives them
    from rlad.replay import completions_of
    from rlad.scoring import score_records

    for got, want in zip(signal_scores(same), score_records(completions_of(groups), paper), strict=True):
        assert got == pytest.approx(want)
    table = list(per_completion_rows(groups, [stored, no_detection]))
    assert len(table) == 6 and table[1]["no-det/advantage"] == pytest.approx(0.3)
    assert table[1]["stored/total"] == pytest.approx(2.0) and table[1]["completion"] == NO_MASK
    out = write_rows(table, tmp_path / "t.jsonl")
    assert json.loads(out.read_text().splitlines()[2])["no-det/total"] == pytest.approx(1.1)
    csv_text = write_rows(table, tmp_path / "new" / "t.csv").read_text()  # its folder made on the way
    assert csv_text.splitlines()[0].startswith("step,group_id,sample_id,index,completion,stored/total")
