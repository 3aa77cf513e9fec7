"""Evaluation metrics of the papers, as accumulators over a dataset (pure numpy, no model).

Anomaly detection, threshold-free (OmniAD 4.1, AG-VAS appendix):
- image level: an image is predicted anomalous iff its decoded ``<seg>`` mask is non-empty; F1, accuracy;
- pixel level: the patch mask upsampled to the ground truth's size (``mask_text.grid_to_mask``), with
  TP/FP/FN/TN summed over the whole dataset before F1 and accuracy are taken;
- IoU_ano: mean pixel IoU over images whose ground-truth mask is non-empty;
- IoU_nor: share of normal images whose prediction is empty.
An unparseable ``<seg>`` (missing or malformed) is counted wrong: at image level as the opposite of the
truth, at pixel level as predicting nothing, for IoU_nor as not empty; ``unparseable`` counts them.

Anomaly understanding (MMAD): accuracy per subtask; Anomaly Discrimination is the mean of its accuracy
on normal and on anomalous images; the overall figure is the mean over the subtasks present. A missing
or unparseable answer letter is wrong.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from rlad.mask_text import grid_to_mask

__all__ = [
    "SUBTASKS",
    "AnswerRecord",
    "BinaryCounts",
    "DetectionMetrics",
    "binary_counts",
    "canonical_subtask",
    "mmad_accuracy",
]

SUBTASKS = (
    "Anomaly Discrimination",
    "Defect Classification",
    "Defect Localization",
    "Defect Description",
    "Defect Analysis",
    "Object Classification",
    "Object Analysis",
)
# MMAD's mmad.json calls the first subtask "Anomaly Detection", and asks object questions as "Object Structure"
# and "Object Details", which its scorer (evaluation/examples/helper/summary.py) merges into "Object Analysis".
_SUBTASK_ALIASES = {
    "anomaly detection": "Anomaly Discrimination",
    "object structure": "Object Analysis",
    "object details": "Object Analysis",
} | {s.lower(): s for s in SUBTASKS}


def canonical_subtask(name: str) -> str:
    """The subtask's name as in SUBTASKS, whatever its case or MMAD alias; other names pass unchanged."""
    return _SUBTASK_ALIASES.get(name.strip().lower(), name.strip())


@dataclass
class BinaryCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __iadd__(self, other: BinaryCounts) -> BinaryCounts:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.tn += other.tn
        return self

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def f1(self) -> float:
        """2TP / (2TP + FP + FN); 0 when there is no positive at all (sklearn's zero_division=0)."""
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 0.0

    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.total if self.total else 0.0


def binary_counts(pred: np.ndarray, target: np.ndarray) -> BinaryCounts:
    """Confusion counts of two boolean arrays of one shape."""
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} != target shape {target.shape}")
    tp = int(np.count_nonzero(pred & target))
    n_pred, n_target = int(np.count_nonzero(pred)), int(np.count_nonzero(target))
    return BinaryCounts(tp=tp, fp=n_pred - tp, fn=n_target - tp, tn=pred.size - n_pred - n_target + tp)


@dataclass
class DetectionMetrics:
    """Accumulates image- and pixel-level detection figures, one image at a time."""

    image: BinaryCounts = field(default_factory=BinaryCounts)
    pixel: BinaryCounts = field(default_factory=BinaryCounts)
    iou_sum: float = 0.0
    n_with_mask: int = 0  # images whose ground-truth mask is non-empty (IoU_ano's denominator)
    n_normal: int = 0
    n_normal_empty: int = 0  # normal images predicted empty (IoU_nor's numerator)
    n_images: int = 0
    n_unparseable: int = 0

    def __iadd__(self, other: DetectionMetrics) -> DetectionMetrics:
        """Merge another accumulator's images into this one (per-image figures summed once, grouped later)."""
        self.image += other.image
        self.pixel += other.pixel
        self.iou_sum += other.iou_sum
        for name in ("n_with_mask", "n_normal", "n_normal_empty", "n_images", "n_unparseable"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def add(self, pred_grid: np.ndarray | None, truth_pixels: np.ndarray, anomalous: bool | None = None) -> None:
        """One image: ``pred_grid`` the decoded (G, G) patch mask or None if unparseable; ``truth_pixels``
        the (H, W) ground-truth mask; ``anomalous`` the image label (default: truth mask non-empty)."""
        truth = np.asarray(truth_pixels, dtype=bool)
        label = bool(truth.any()) if anomalous is None else bool(anomalous)
        self.n_images += 1
        if pred_grid is None:
            self.n_unparseable += 1
            pred = np.zeros_like(truth)
            predicted_anomalous = not label
        else:
            pred = grid_to_mask(pred_grid, truth.shape)
            predicted_anomalous = bool(np.asarray(pred_grid).any())
        self.image += BinaryCounts(
            tp=int(label and predicted_anomalous),
            fp=int(not label and predicted_anomalous),
            fn=int(label and not predicted_anomalous),
            tn=int(not label and not predicted_anomalous),
        )
        counts = binary_counts(pred, truth)
        self.pixel += counts
        if truth.any():
            self.n_with_mask += 1
            self.iou_sum += counts.tp / (counts.tp + counts.fp + counts.fn)
        if not label:
            self.n_normal += 1
            self.n_normal_empty += int(pred_grid is not None and not predicted_anomalous)

    def summary(self) -> dict[str, float]:
        return {
            "image_f1": self.image.f1(),
            "image_accuracy": self.image.accuracy(),
            "pixel_f1": self.pixel.f1(),
            "pixel_accuracy": self.pixel.accuracy(),
            "iou_ano": self.iou_sum / self.n_with_mask if self.n_with_mask else float("nan"),
            "iou_nor": self.n_normal_empty / self.n_normal if self.n_normal else float("nan"),
            "unparseable_rate": self.n_unparseable / self.n_images if self.n_images else 0.0,
            "images": float(self.n_images),
        }


@dataclass(frozen=True)
class AnswerRecord:
    subtask: str
    predicted: str | None  # the letter read from <answer>, None if unparseable
    correct: str
    anomalous: bool  # image label; Anomaly Discrimination averages over both labels


def mmad_accuracy(records: Iterable[AnswerRecord]) -> dict[str, dict[str, float]]:
    """Per-subtask ``{"accuracy", "n"}`` plus ``"mean"``: the mean accuracy over subtasks present.

    Anomaly Discrimination's accuracy is the mean of its accuracy on normal and on anomalous images (the
    one present if only one is).
    """
    hits: dict[tuple[str, bool], list[int]] = defaultdict(list)
    for r in records:
        hits[(canonical_subtask(r.subtask), r.anomalous)].append(
            int(r.predicted is not None and r.predicted == r.correct)
        )
    out: dict[str, dict[str, float]] = {}
    for subtask in sorted({s for s, _ in hits}, key=lambda s: (SUBTASKS.index(s) if s in SUBTASKS else 99, s)):
        per_label = [hits[(subtask, lab)] for lab in (False, True) if hits.get((subtask, lab))]
        if subtask == "Anomaly Discrimination":
            accuracy = float(np.mean([np.mean(h) for h in per_label]))
        else:
            accuracy = float(np.mean([x for h in per_label for x in h]))
        out[subtask] = {"accuracy": accuracy, "n": float(sum(len(h) for h in per_label))}
    if out:
        out["mean"] = {"accuracy": float(np.mean([v["accuracy"] for v in out.values()])), "n": float(len(out))}
    return out
