"""experiments/learning/flips.py: where two policies' greedy answers to the same questions differ, by hand."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "learning"))
import flips

from rlad.sample import VerifiableSample
from rlad.scoring import ScoredRecord


def _sample(sample_id, true_cells, answer="A"):
    mask = np.zeros((4, 4), bool)
    for r, c in true_cells:
        mask[r, c] = True
    return VerifiableSample(sample_id, "Is there a defect?", {"A": "Yes.", "B": "No."}, answer, mask, bool(true_cells))


def _record(sample, seg, letter):
    return ScoredRecord(f"<seg>{seg}</seg><think>t</think><answer>{letter}</answer>", sample, "all")


SAMPLES = [_sample("a", [(0, 0), (0, 1)]), _sample("b", [(2, 2)]), _sample("c", [(3, 3)]), _sample("d", [], "B")]
BEFORE = [
    _record(SAMPLES[0], "(0, 0)", "B"),  # F1 2/3, wrong letter
    _record(SAMPLES[1], "(2, 2)", "A"),  # F1 1, right
    _record(SAMPLES[2], "(3, 3)-(3, 9)", "A"),  # unparseable: F1 0, right
    _record(SAMPLES[3], "", "B"),  # a normal image: right
]
AFTER = [
    _record(SAMPLES[0], "(0, 0)-(0, 1)", "A"),  # F1 1 (+1/3), fixed
    _record(SAMPLES[1], "(2, 1)-(2, 2)", "A"),  # F1 2/3 (-1/3), still right
    _record(SAMPLES[2], "(3, 3)-(3, 9)", "B"),  # the same mask, broken
    _record(SAMPLES[3], "", "B"),  # unchanged
]


def test_flips_by_hand():
    got = flips.flips(BEFORE, AFTER)
    assert got == pytest.approx({"n": 4, "changed": 3 / 4, "mask_moved": 2 / 3, "mask_better": 1 / 3,
                                 "mask_worse": 1 / 3, "F1_change": 0.0, "letter_fixed": 1 / 4,
                                 "letter_broken": 1 / 4})  # fmt: skip
    assert flips.patch_f1(BEFORE[0]) == pytest.approx(2 / 3) and flips.patch_f1(BEFORE[2]) == 0.0


def test_the_same_policy_moves_nothing():
    got = flips.flips(BEFORE, BEFORE)
    assert got["changed"] == got["mask_moved"] == got["letter_fixed"] == got["letter_broken"] == 0.0


def test_different_questions_are_refused():
    with pytest.raises(ValueError, match="question 2 differs"):
        flips.flips(BEFORE, [AFTER[0], AFTER[2], AFTER[1], AFTER[3]])
    with pytest.raises(ValueError, match="4 questions against 3"):
        flips.flips(BEFORE, AFTER[:3])


def _write(path, records):
    rows = [{"completion": r.completion, "sample": r.sample.to_record()} for r in records]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_the_table_from_files(tmp_path, capsys):
    before, after = _write(tmp_path / "sft.jsonl", BEFORE), _write(tmp_path / "grpo.jsonl", AFTER)
    flips.main(["--before", before, before, "--after", after, before])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| before → after | n | changed | mask_moved")
    assert "| 4 | 0.750 | 0.667 | 0.333 | 0.333 | 0.000 | 0.250 | 0.250 |" in lines[2]
    assert lines[-1].startswith("| mean ± 95 % CI |")


def test_a_file_whose_questions_differ_is_named(tmp_path):
    before, after = _write(tmp_path / "sft.jsonl", BEFORE), _write(tmp_path / "grpo.jsonl", AFTER[:3])
    with pytest.raises(SystemExit, match=r"sft\.jsonl against .*grpo\.jsonl: 4 questions against 3"):
        flips.main(["--before", before, "--after", after])


def test_the_trained_questions_are_the_replay_stores_once_each(tmp_path):
    from conftest import make_sample
    from trained_questions import trained_samples

    from rlad.replay import Group, ReplayStore

    def group(gid, sample_id, step):
        sample = make_sample(patches=[(1, 1)], sample_id=sample_id)
        return Group(gid, step, step, sample, ["c"], [[1]], [[-0.5]], {"format": [1.0]}, [1.0], [0.0])

    store = ReplayStore(tmp_path / "run" / "replay")
    store.append([group("g0", "b", 0), group("g1", "a", 0)])
    store.append([group("g2", "b", 1), group("g3", "c", 1)])  # "b" sampled again at step 1
    assert [s.sample_id for s in trained_samples(tmp_path / "run")] == ["b", "a", "c"]
    (tmp_path / "empty" / "replay").mkdir(parents=True)
    with pytest.raises(SystemExit, match="empty/replay: no stored groups"):
        trained_samples(tmp_path / "empty")


def test_a_run_without_a_warm_start_checkpoint_is_refused_naming_it(tmp_path):
    from trained_questions import answer

    from rlad.config import load_config, save_config

    for warm in ("base", str(tmp_path / "gone")):
        run = tmp_path / "run"
        run.mkdir(exist_ok=True)
        save_config(load_config(None, [f"train.warm_start={warm}"]), run / "config.yaml")
        with pytest.raises(SystemExit, match=r"run/config\.yaml: train\.warm_start=.* is not a checkpoint folder"):
            answer(run)
    assert not (tmp_path / "run" / "eval-trained").exists()  # nothing written
