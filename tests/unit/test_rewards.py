"""Built-in rewards against hand-computed values, and the reward mix."""

import numpy as np
import pytest
from conftest import make_sample

from rewards import RewardMix, RewardSpecError, UnknownRewardError, get_reward, known_rewards
from rewards.builtin import answer, detection, detection_score, format_reward


def completion(seg="", think="looks fine", ans="A"):
    return f"<seg>{seg}</seg><think>{think}</think><answer>{ans}</answer>"


# Ground truth for the detection cases: patches (1,1), (1,2), (2,1) of a 4x4 grid -> |G| = 3.
ANOMALY = [(1, 1), (1, 2), (2, 1)]


@pytest.mark.parametrize(
    "seg, want",
    [
        # P = G: F1 = 1 -> alpha * 1 = 2
        ("(1, 1)-(1, 2), (2, 1)", 2.0),
        # P = {(1,1),(1,2)}: hits 2, F1 = 2*2/(2+3) = 0.8 -> 1.6
        ("(1, 1)-(1, 2)", 1.6),
        # P = {(1,1),(1,2),(1,3),(2,1),(3,3)}: hits 3, F1 = 6/(5+3) = 0.75 -> 1.5
        ("(1, 1)-(1, 3), (2, 1), (3, 3)", 1.5),
        # P disjoint: F1 = 0
        ("(0, 0)", 0.0),
        # P empty on an anomalous image: F1 = 0
        ("", 0.0),
        # malformed seg: 0 even though it "contains" the right patches
        ("(1, 1)-(1, 2), (2, 1) crack", 0.0),
        ("(1, 1)-(2, 2)", 0.0),
    ],
)
def test_detection_on_anomalous_image(seg, want):
    assert detection(completion(seg), make_sample(ANOMALY)) == pytest.approx(want)


def test_detection_on_normal_image():
    normal = make_sample([])
    assert detection(completion(""), normal) == 1.0  # both empty
    assert detection(completion("  "), normal) == 1.0
    assert detection(completion("(0, 0)"), normal) == 0.0  # false alarm
    assert detection(completion("none"), normal) == 0.0  # junk is never "no anomaly"
    assert detection("<think>x</think><answer>A</answer>", normal) == 0.0  # no seg at all
    assert detection(completion("(9, 9)"), normal) == 0.0  # outside the grid


def test_detection_alpha_scales_only_anomalous_images():
    assert detection(completion("(1, 1)-(1, 2)"), make_sample(ANOMALY), alpha=1.0) == pytest.approx(0.8)
    assert detection(completion(""), make_sample([]), alpha=5.0) == 1.0


def test_detection_found_pays_a_mask_on_anomalous_images_only():
    anomalous, normal = make_sample(ANOMALY), make_sample([])
    # P = {(1,1),(1,2)} against G of 3 patches: F1 = 0.8 -> 2 * 0.8 + 1 = 2.6
    assert detection(completion("(1, 1)-(1, 2)"), anomalous, found=1.0) == pytest.approx(2.6)
    # disjoint: F1 = 0, the mask still found the anomaly -> 0 + 1
    assert detection(completion("(0, 0)"), anomalous, found=1.0) == pytest.approx(1.0)
    # empty on an anomalous image, junk, a false alarm and a right "normal" are as in the paper
    assert detection(completion(""), anomalous, found=1.0) == 0.0
    assert detection(completion("(1, 1) crack"), anomalous, found=1.0) == 0.0
    assert detection(completion("(0, 0)"), normal, found=1.0) == 0.0
    assert detection(completion(""), normal, found=1.0) == 1.0


def test_detection_score_is_the_f1_rule():
    g = np.zeros((3, 3), bool)
    g[0, :] = True
    p = np.zeros((3, 3), bool)
    p[0, 0] = p[1, 1] = True  # hits 1, |P| 2, |G| 3 -> F1 = 2/5
    assert detection_score(p, g, alpha=2.0) == pytest.approx(0.8)


def test_format_reward():
    assert format_reward(completion(), None) == 1.0
    assert format_reward("x" + completion(), None) == 0.0
    assert format_reward("<think>x</think><answer>A</answer>", None, blocks=("think", "answer")) == 1.0
    assert format_reward(completion(), None, blocks=["think", "answer"]) == 0.0


@pytest.mark.parametrize(
    "text, want",
    [
        (completion(ans="A"), 1.0),
        (completion(ans=" A "), 1.0),
        (completion(ans="B"), 0.1),  # another option: the paper's 0.1
        (completion(ans="C"), 0.0),  # not an option of this question
        (completion(ans=""), 0.0),  # empty answer is never rewarded
        (completion(ans="A B"), 0.0),
        (completion(think="A", ans=""), 0.0),  # the letter in think does not count
        ("A", 0.0),
        (completion(ans="A") + "<answer>B</answer>", 0.0),  # two answers: unread
    ],
)
def test_answer_reward(text, want):
    assert answer(text, make_sample([], answer="A", options="AB")) == want


def test_answer_values_configurable():
    s = make_sample([], answer="A")
    assert answer(completion(ans="B"), s, correct=2.0, wrong=0.0) == 0.0
    assert answer(completion(ans="A"), s, correct=2.0, wrong=0.0) == 2.0


def test_mix_total_and_components():
    mix = RewardMix({"format": {"weight": 0.5}, "detection": {"weight": 1.0, "alpha": 2.0}, "answer": {"weight": 2.0}})
    samples = [make_sample(ANOMALY, answer="A"), make_sample([], answer="B")]
    texts = [completion("(1, 1)-(1, 2)", ans="A"), "garbage <answer>A</answer>"]
    s = mix.score(texts, samples)
    # 1st: format 1, detection 1.6, answer 1   -> 0.5 + 1.6 + 2   = 4.1
    # 2nd: format 0, detection 0 (no seg), answer 0.1 (A is the other option) -> 0.2
    assert s.components["format"].tolist() == [1.0, 0.0]
    assert s.components["detection"].tolist() == pytest.approx([1.6, 0.0])
    assert s.components["answer"].tolist() == pytest.approx([1.0, 0.1])
    assert s.total.tolist() == pytest.approx([4.1, 0.2])
    means = s.means()
    assert means["total"] == pytest.approx(2.15) and set(means) == {"total", "format", "detection", "answer"}


def test_zero_weight_reward_is_still_computed():
    mix = RewardMix({"answer": {"weight": 1.0}, "detection": {"weight": 0.0}})
    s = mix.score([completion("(1, 1)-(1, 2), (2, 1)")], [make_sample(ANOMALY)])
    assert s.components["detection"].tolist() == [2.0] and s.total.tolist() == [1.0]


def test_mix_rejects_bad_specs():
    with pytest.raises(UnknownRewardError, match="known rewards: answer, detection, format"):
        RewardMix({"formatt": {}})
    with pytest.raises(RewardSpecError, match=r"rewards.detection: unknown parameter\(s\) \['alhpa'\]"):
        RewardMix({"detection": {"alhpa": 2}})
    with pytest.raises(RewardSpecError, match="weight must be a finite number"):
        RewardMix({"format": {"weight": "high"}})
    with pytest.raises(RewardSpecError, match="weight must be a finite number"):
        RewardMix({"format": {"weight": float("nan")}})
    with pytest.raises(RewardSpecError, match="must be a number"):
        RewardMix({"answer": {"wrong": "0.1"}})
    with pytest.raises(RewardSpecError, match="blocks must be distinct names"):
        RewardMix({"format": {"blocks": ["seg", "seg"]}})
    with pytest.raises(RewardSpecError, match="empty"):
        RewardMix({})


def test_builtins_are_registered():
    assert {"format", "detection", "answer"} <= set(known_rewards())
    assert get_reward("detection").params == {"alpha": 2.0, "found": 0.0}
    assert get_reward("answer").params == {"correct": 1.0, "wrong": 0.1}
