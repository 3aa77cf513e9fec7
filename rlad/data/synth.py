"""``rlad data synth``: write the generated benchmark in the MVTec-AD layout plus an MMAD-style mmad.json.

    OUT/<class>/train/good/000.png                 normal images (1-shot references)
    OUT/<class>/test/good/000.png                  normal test images
    OUT/<class>/test/<defect>/000.png              anomalous test images
    OUT/<class>/ground_truth/<defect>/000_mask.png exact masks (255 = anomalous)
    OUT/mmad.json                                  questions, keyed by image path (MMAD's format)

The same readers that load real MVTec-AD and MMAD folders load this one. Test images are half normal,
half anomalous, the defect types taking turns. Every image is a pure function of (seed, class, index), so
generation can run in any order or in parallel and always gives the same files.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rlad.data.questions import make_questions, region_of, size_of
from rlad.data.render import CLASSES, DEFECTS, inject_defect, render_normal

__all__ = ["SYNTH_FORMAT", "SynthSpec", "synthesize"]

SYNTH_FORMAT = 2
"""The generator's output format, part of the cache key (``rlad.data.sources.synth_cache_name``): raise it when the
same spec would now write other images, masks or questions. 2: every defect colour among the Defect Description
distractors (1 let a blue or yellow stain's and a missing part's answer stand out, and come last when fixed)."""


@dataclass(frozen=True)
class SynthSpec:
    classes: tuple[str, ...] = tuple(CLASSES)
    images_per_class: int = 40  # test images per class; half of them normal
    references_per_class: int = 4  # train/good images per class, the 1-shot references
    size: int = 256
    seed: int = 0
    defects: tuple[str, ...] = field(default=tuple(DEFECTS))
    fixed_options: bool = False  # True: every option in a fixed order (questions.make_questions); else shuffled
    visibility: float = 1.0  # defect thickness (and a stain's opacity) x this; 1.0: the benchmark's realism
    draw: int = 0  # 0: the benchmark; n > 0: another draw of it, every image new (data.grpo_fresh_images)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.classes) - set(CLASSES))
        if unknown:
            raise ValueError(f"unknown classes {unknown}; known: {', '.join(CLASSES)}")
        unknown = sorted(set(self.defects) - set(DEFECTS))
        if unknown:
            raise ValueError(f"unknown defects {unknown}; known: {', '.join(DEFECTS)}")
        if self.size < 32:
            raise ValueError(f"image size must be >= 32, got {self.size}")
        if self.images_per_class < 2 or self.references_per_class < 1:
            raise ValueError("need images_per_class >= 2 and references_per_class >= 1")
        if not self.visibility > 0:
            raise ValueError(f"visibility must be > 0, got {self.visibility}")
        if self.draw < 0:
            raise ValueError(f"draw must be >= 0, got {self.draw}")

    def seeds(self, *parts: int) -> list[int]:
        """The seed sequence of one random stream; draw 0 keeps the benchmark's streams as they always were."""
        return [self.seed, *parts] if self.draw == 0 else [self.seed, 1_000_003, self.draw, *parts]


def _job_list(spec: SynthSpec) -> list[tuple[str, int, str, int]]:
    """(class, class index, defect or "good", image index within its folder) for every test image."""
    jobs = []
    for ci, cls in enumerate(spec.classes):
        counts: dict[str, int] = {}
        for i in range(spec.images_per_class):
            defect = "good" if i % 2 == 0 else spec.defects[(i // 2 + ci) % len(spec.defects)]
            jobs.append((cls, ci, defect, counts.get(defect, 0)))
            counts[defect] = counts.get(defect, 0) + 1
    return jobs


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)  # a killed run never leaves a half-written PNG under the real name


def _make_test_image(args: tuple[SynthSpec, Path, str, int, str, int]) -> tuple[str, dict[str, Any]]:
    spec, out, cls, ci, defect, idx = args
    rng = np.random.default_rng(spec.seeds(ci, 1 + list(DEFECTS).index(defect) if defect != "good" else 0, idx))
    obj = render_normal(cls, rng, spec.size)
    rel = f"{cls}/test/{defect}/{idx:03d}.png"
    meta: dict[str, Any] = {"class_name": cls, "defect": defect, "object_colour": obj.colour}
    image, mask_rel = obj.image, None
    if defect != "good":
        for _ in range(64):  # a defect whose mask covers no pixel (thin lines on small images) is drawn again
            image, d = inject_defect(obj, defect, rng, spec.visibility)
            if d.mask.any():
                break
        else:
            raise ValueError(
                f"{rel}: 64 draws of a {defect} left no pixel of its mask at {spec.size} px and "
                f"visibility {spec.visibility}: use larger images (data.synth.size) or visibility"
            )
        mask_rel = f"{cls}/ground_truth/{defect}/{idx:03d}_mask.png"
        _save((d.mask * 255).astype(np.uint8), out / mask_rel)
        meta |= {"colour": d.colour, "shape": d.shape, "size": size_of(d.mask), "region": region_of(d.mask, d.blobs)}
    _save((image * 255).round().astype(np.uint8), out / rel)
    return rel, {"mask_path": mask_rel, "rlad_meta": meta}


def _make_reference(args: tuple[SynthSpec, Path, str, int, int]) -> str:
    spec, out, cls, ci, idx = args
    rng = np.random.default_rng(spec.seeds(ci, 999, idx))
    rel = f"{cls}/train/good/{idx:03d}.png"
    _save((render_normal(cls, rng, spec.size).image * 255).round().astype(np.uint8), out / rel)
    return rel


def synthesize(spec: SynthSpec, out: str | Path, workers: int | None = None) -> dict[str, Any]:
    """Write the benchmark under ``out``; returns the mmad.json content. ``workers`` processes (default: cores)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    refs_jobs = [
        (spec, out, cls, ci, i) for ci, cls in enumerate(spec.classes) for i in range(spec.references_per_class)
    ]
    test_jobs = [(spec, out, *job) for job in _job_list(spec)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            refs = list(pool.map(_make_reference, refs_jobs, chunksize=8))
            tests = list(pool.map(_make_test_image, test_jobs, chunksize=8))
    else:
        refs = [_make_reference(j) for j in refs_jobs]
        tests = [_make_test_image(j) for j in test_jobs]

    refs_by_class: dict[str, list[str]] = {}
    for rel in refs:
        refs_by_class.setdefault(rel.split("/")[0], []).append(rel)
    mmad: dict[str, Any] = {}
    for ci, (rel, entry) in enumerate(tests):
        rng = np.random.default_rng(spec.seeds(7777, ci))
        same_class = refs_by_class[entry["rlad_meta"]["class_name"]]
        mmad[rel] = {
            "image_path": rel,
            "mask_path": entry["mask_path"],
            "similar_templates": same_class,  # all normal references of the class
            "random_templates": [same_class[i] for i in rng.permutation(len(same_class))],
            "conversation": make_questions(entry["rlad_meta"], list(spec.classes), rng, spec.fixed_options),
            "rlad_meta": entry["rlad_meta"],
        }
    tmp = out / "mmad.json.tmp"
    tmp.write_text(json.dumps(mmad, indent=1))
    os.replace(tmp, out / "mmad.json")
    return mmad
