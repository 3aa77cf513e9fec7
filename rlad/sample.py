"""The verifiable sample: one question about one image, with what every reward needs to check an answer.

Every reader (generated benchmark, MVTec-AD, VisA, MVTec-LOCO, MMAD) produces this one type, and the
replay store keeps it beside each completion so rewards can be recomputed offline. The ground-truth mask
is kept on the patch grid (the only resolution rewards compare at); ``to_record`` writes it as its
Text-as-Mask string, so a stored sample is plain JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlad import mask_text

__all__ = ["VerifiableSample"]


@dataclass(frozen=True, eq=False)
class VerifiableSample:
    sample_id: str  # unique within a dataset, stable across runs (replay store key)
    question: str  # question text with its options, as shown to the policy
    options: dict[str, str]  # option letter -> option text
    answer: str  # the correct option letter
    mask: np.ndarray  # (grid, grid) bool ground-truth patch mask; all False for a normal image
    anomalous: bool  # image-level label; True for a defect the grid mask may not show (logical anomalies)
    image: str = ""  # path of the query image
    reference: str | None = None  # path of a normal image of the same class (1-shot), or None
    class_name: str = ""
    defect: str = "good"  # defect type, "good" for a normal image
    subtask: str = ""  # MMAD subtask, e.g. "Anomaly Discrimination"
    extra: dict[str, Any] = field(default_factory=dict)  # free metadata (think-text grounding, source)

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask, dtype=bool)
        if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
            raise ValueError(f"sample {self.sample_id!r}: mask must be square (grid, grid), got {mask.shape}")
        if self.answer not in self.options:
            raise ValueError(
                f"sample {self.sample_id!r}: answer {self.answer!r} is not among the options {sorted(self.options)}"
            )
        mask.setflags(write=False)  # samples are shared between rewards and workers: never edited in place
        object.__setattr__(self, "mask", mask)

    @property
    def grid(self) -> int:
        return int(self.mask.shape[0])

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_record` reads it back."""
        return {
            "sample_id": self.sample_id,
            "question": self.question,
            "options": dict(self.options),
            "answer": self.answer,
            "grid": self.grid,
            "mask": mask_text.encode(self.mask),
            "anomalous": self.anomalous,
            "image": self.image,
            "reference": self.reference,
            "class_name": self.class_name,
            "defect": self.defect,
            "subtask": self.subtask,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> VerifiableSample:
        fields = dict(record)
        grid = fields.pop("grid")
        fields["mask"] = mask_text.decode(fields["mask"], grid)
        return cls(**fields)
