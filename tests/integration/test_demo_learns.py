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
    assert after["format"] >= 0.95
    # detection: well above the untrained policy; above always answering "normal" (the chance row's mask),
    # though only just, and from the question, not the image: it writes a mask on the questions asked of
    # defective images only and none elsewhere (image_F1_shared 0, discrimination 0.5; README)
    assert after["detection"] > before["detection"] + 0.2
    assert after["detection"] > chance["detection"]
    assert after["image_F1"] > 0.5
    # answers: above the untrained policy and above a random letter
    assert after["answer_acc"] > max(before["answer_acc"], chance["answer_acc"]) + 0.1

    rows = report["rows"]
    assert rows["warm_start"]["total"] == pytest.approx(after["total"])  # the same 128 questions, same policy
    # GRPO raises what it optimises, the expected reward of the sampling policy on held-out questions ...
    assert rows["grpo_sampled"]["total"] > rows["warm_start_sampled"]["total"] + 0.05
    assert rows["grpo_sampled"]["detection"] > rows["warm_start_sampled"]["detection"] + 0.03
    assert rows["grpo_sampled"]["bad_seg"] < rows["warm_start_sampled"]["bad_seg"]
    # ... and leaves the greedy policy well formed and as good within noise (README: why not better yet)
    assert rows["grpo"]["format"] >= 0.95
    assert rows["grpo"]["total"] > rows["warm_start"]["total"] - 0.1
