"""Detection and MMAD metrics against hand-computed values and against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from rlad.mask_text import grid_to_mask
from rlad.metrics import AnswerRecord, DetectionMetrics, binary_counts, canonical_subtask, mmad_accuracy


def test_binary_counts_hand_computed():
    pred = np.array([1, 1, 0, 0, 1], bool)
    true = np.array([1, 0, 1, 0, 1], bool)
    c = binary_counts(pred, true)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 1)
    assert c.f1() == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # 0.667
    assert c.accuracy() == pytest.approx(3 / 5)


@pytest.mark.parametrize("seed", range(5))
def test_f1_and_accuracy_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    pred, true = rng.random(1000) < 0.3, rng.random(1000) < 0.2
    c = binary_counts(pred, true)
    assert c.f1() == pytest.approx(f1_score(true, pred, zero_division=0))
    assert c.accuracy() == pytest.approx(accuracy_score(true, pred))


def test_detection_metrics_hand_computed():
    m = DetectionMetrics()
    # Image 1, anomalous: truth = left half of an 8x8 image; prediction (2x2 grid) = top-left patch.
    truth1 = np.zeros((8, 8), bool)
    truth1[:, :4] = True
    m.add(np.array([[1, 0], [0, 0]], bool), truth1)  # pixels: tp 16, fp 0, fn 16, tn 32; IoU 16/32
    # Image 2, normal, predicted empty: tn 64.
    m.add(np.zeros((2, 2), bool), np.zeros((8, 8), bool))
    # Image 3, normal, false alarm bottom-right: fp 16, tn 48.
    m.add(np.array([[0, 0], [0, 1]], bool), np.zeros((8, 8), bool))
    # Image 4, anomalous, unparseable seg: image-level wrong (fn), pixels predicted empty: fn 4, tn 60; IoU 0.
    truth4 = np.zeros((8, 8), bool)
    truth4[0, :4] = True
    m.add(None, truth4)
    s = m.summary()
    # image level: tp 1 (img1), tn 1 (img2), fp 1 (img3), fn 1 (img4)
    assert s["image_f1"] == pytest.approx(2 / 4) and s["image_accuracy"] == pytest.approx(2 / 4)
    # pixel level: tp 16, fp 16, fn 20, tn 32+64+48+60 = 204
    assert (m.pixel.tp, m.pixel.fp, m.pixel.fn, m.pixel.tn) == (16, 16, 20, 204)
    assert s["pixel_f1"] == pytest.approx(32 / (32 + 16 + 20))
    assert s["pixel_accuracy"] == pytest.approx((16 + 204) / 256)
    assert s["iou_ano"] == pytest.approx((0.5 + 0.0) / 2)
    assert s["iou_nor"] == pytest.approx(1 / 2)
    assert s["unparseable_rate"] == pytest.approx(1 / 4)


def test_unparseable_normal_image_counts_wrong():
    m = DetectionMetrics()
    m.add(None, np.zeros((4, 4), bool))
    assert m.image.fp == 1 and m.summary()["iou_nor"] == 0.0


def test_pixel_level_matches_sklearn_on_random_masks():
    rng = np.random.default_rng(0)
    m = DetectionMetrics()
    all_pred, all_true = [], []
    for _ in range(20):
        grid_pred = rng.random((6, 6)) < 0.2
        truth = rng.random((30, 45)) < 0.1
        m.add(grid_pred, truth)
        all_pred.append(grid_to_mask(grid_pred, truth.shape).ravel())
        all_true.append(truth.ravel())
    p, t = np.concatenate(all_pred), np.concatenate(all_true)
    assert m.summary()["pixel_f1"] == pytest.approx(f1_score(t, p))
    assert m.summary()["pixel_accuracy"] == pytest.approx(accuracy_score(t, p))


def test_mmad_accuracy_hand_computed():
    records = [
        # Anomaly Discrimination: normal 2/2 right, anomalous 1/4 right -> (1.0 + 0.25) / 2 = 0.625
        AnswerRecord("Anomaly Detection", "A", "A", anomalous=False),
        AnswerRecord("Anomaly Detection", "A", "A", anomalous=False),
        AnswerRecord("Anomaly Discrimination", "B", "B", anomalous=True),
        AnswerRecord("anomaly discrimination", "A", "B", anomalous=True),
        AnswerRecord("Anomaly Discrimination", None, "B", anomalous=True),  # unparseable: wrong
        AnswerRecord("Anomaly Discrimination", "A", "B", anomalous=True),
        # Defect Classification: 1/2
        AnswerRecord("Defect Classification", "C", "C", anomalous=True),
        AnswerRecord("Defect Classification", "D", "C", anomalous=True),
    ]
    acc = mmad_accuracy(records)
    assert acc["Anomaly Discrimination"] == {"accuracy": 0.625, "n": 6.0}
    assert acc["Defect Classification"]["accuracy"] == 0.5
    assert acc["mean"]["accuracy"] == pytest.approx((0.625 + 0.5) / 2)
    assert list(acc) == ["Anomaly Discrimination", "Defect Classification", "mean"]


def test_canonical_subtask():
    assert canonical_subtask("Anomaly Detection") == "Anomaly Discrimination"
    assert canonical_subtask(" object analysis ") == "Object Analysis"
    assert canonical_subtask("Object Structure") == canonical_subtask("object details") == "Object Analysis"
    assert canonical_subtask("Counting") == "Counting"
