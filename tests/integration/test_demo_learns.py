"""The main job learns: ``rlad train configs/demo.yaml`` (SFT warm-start, GRPO on a local Ray, held-out
evaluation) on the generated benchmark, checked on its report.

Slow (about 12 minutes on two CPU cores): marked ``slow``, run by ``.ci/run`` after the default suite.
"""

import json

import pytest

from rlad.config import load_config
from rlad.train import run_train


@pytest.mark.slow
def test_demo_sft_then_grpo_learn(tmp_path):
    report = run_train(load_config("configs/demo.yaml", [f"train.run_dir={tmp_path}"]), show_progress=False)

    sft = json.loads((tmp_path / "sft/report.json").read_text())["rows"]
    before, after, chance = sft["before"], sft["after"], sft["chance"]
    # Margins hold over seeds 0, 1, 2 (README, "What the demo shows, over seeds"; this test runs seed 0).
    assert after["format"] >= 0.95  # 0.97-1.00
    assert after["detection"] > before["detection"] + 0.2
    assert after["detection"] > chance["detection"]  # above always answering "normal" (the chance row's mask)
    assert after["image_F1"] > 0.6  # 0.72-0.80
    # it looks at the image: masks on the questions asked of normal and defective images alike (0.46-0.62;
    # the paper's recipe here wrote none, 0.00 in every seed) and some localisation (patch F1 0.16-0.24)
    assert after["image_F1_shared"] > 0.3
    assert after["patch_F1"] > 0.1
    assert after["answer_acc"] > max(before["answer_acc"], chance["answer_acc"]) + 0.1

    rows = report["rows"]
    assert rows["warm_start"]["total"] == pytest.approx(after["total"])  # the same 128 questions, same policy
    # GRPO raises what it optimises, the expected reward of the sampling policy on held-out questions (total
    # +0.24-0.26, detection +0.21-0.29 over seeds), and its masks: parseable (unparseable 0.31-0.33 -> 0.02-0.07)
    # and better placed (sampled patch F1 +0.05-0.06) ...
    ws, gs = rows["warm_start_sampled"], rows["grpo_sampled"]
    assert gs["total"] > ws["total"] + 0.1
    assert gs["detection"] > ws["detection"] + 0.1
    assert gs["bad_seg"] < ws["bad_seg"] - 0.1
    assert gs["patch_F1"] > ws["patch_F1"] + 0.02
    # ... and leaves the greedy policy well formed and localising as well within noise (patch F1 -0.01..+0.05);
    # its total may fall (seed 2: -0.17) where it gives up masks on shared questions (README: not yet solved)
    w, g = rows["warm_start"], rows["grpo"]
    assert g["format"] >= 0.95
    assert g["patch_F1"] > w["patch_F1"] - 0.05
    assert g["total"] > w["total"] - 0.25
