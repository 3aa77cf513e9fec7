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
    # detection: above the untrained policy and above always answering "normal" (the chance row's mask)
    assert after["detection"] > max(before["detection"], chance["detection"]) + 0.05
    assert after["image_F1"] > 0.5
    # answers: above the untrained policy and above a random letter
    assert after["answer_acc"] > max(before["answer_acc"], chance["answer_acc"]) + 0.1
