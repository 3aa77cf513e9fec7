"""The warm-start learns the task: the demo config's SFT on the generated benchmark, held-out questions.

Slow (several minutes on two CPU cores): marked ``slow``, run by ``.ci/run`` after the default suite.
"""

import pytest

from rlad.config import load_config
from rlad.sft import run_sft


@pytest.mark.slow
def test_demo_sft_learns_format_detection_and_answers(tmp_path):
    report = run_sft(load_config("configs/demo.yaml", [f"sft.output_dir={tmp_path}"]))
    before, after, chance = report["rows"]["before"], report["rows"]["after"], report["rows"]["chance"]
    assert after["format"] >= 0.95
    # detection: well above the untrained policy; above always answering "normal" (the chance row's mask),
    # though only just: the tiny model tells defective images apart but does not localise (README)
    assert after["detection"] > before["detection"] + 0.2
    assert after["detection"] > chance["detection"]
    assert after["image_F1"] > 0.5
    # answers: above the untrained policy and above a random letter
    assert after["answer_acc"] > max(before["answer_acc"], chance["answer_acc"]) + 0.1
