"""The base stage's data: generic visual questions about the generated objects, in the output format, with no
defect, no anomaly mask and no anomaly label anywhere.

A pretrained instruct model (the paper's start) already reads images and writes grounded answers; a tiny model
built from random weights does neither, and the probe of ``experiments/learning/localise.py`` shows why the
defect task alone does not teach it: the defects are small and faint, and the model must first learn to carry
*where* it sees something into the ``(row, col)`` it writes. This set teaches that on things that are never
subtle. Each image is one of the generated classes (``render.CLASSES``, normal: no defect is ever injected) with
0-3 plain spots of one named colour pasted on (discs and ellipses, 10-32 px, in a colour that stands out from
the image). Its question is about the image:

- "How many <colour> spots are there?" (0, 1, 2, 3), or
- "What is the object in the image?" (the class, as the benchmark's Object Classification asks it).

The target is ``<seg>`` the cells the spots cover on the grid (empty when there are none), ``<think>`` a grounded
sentence naming the object, the spots' number, colour and region, and ``<answer>`` the letter. The file is an SFT
JSONL (``rlad.data.sources.read_sft_jsonl``), so the base stage is an ordinary SFT run on it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rlad import mask_text
from rlad.data.questions import region_of
from rlad.data.render import CLASSES, render_normal

__all__ = ["SPOT_COLOURS", "BaseSetSpec", "write_base_set"]

SPOT_COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "blue": (0.1, 0.2, 0.95),
    "yellow": (0.95, 0.9, 0.1),
    "magenta": (0.9, 0.1, 0.8),
    "cyan": (0.1, 0.85, 0.9),
    "orange": (1.0, 0.55, 0.05),
    "black": (0.02, 0.02, 0.02),
    "white": (0.98, 0.98, 0.98),
}
COUNTS = ("no", "one", "two", "three")


@dataclass(frozen=True)
class BaseSetSpec:
    images: int = 4000
    """Images in the set (one question each); a fifth is held out by the SFT stage's split."""
    size: int = 224
    """Image side in pixels."""
    grid: int = 8
    """The patch grid of the ``<seg>`` masks (the run's ``mask.grid``)."""
    seed: int = 0


def _spots(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, str, int]:
    """Paste 0-3 spots of one colour; returns (image, pixel mask, colour name, count)."""
    size = img.shape[0]
    far = [n for n, c in SPOT_COLOURS.items() if np.abs(np.array(c) - img.mean((0, 1))).sum() > 0.6]
    name = far[rng.integers(len(far))] if far else "red"
    count = int(rng.integers(0, 4))
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), bool)
    placed = 0
    for _ in range(50 * count):  # spots never touch, so the count is what the image shows
        if placed == count:
            break
        r = rng.uniform(10, 32) * size / 224
        cy, cx = rng.uniform(r, size - r, 2)
        spot = ((yy - cy) / (r * rng.uniform(0.6, 1.4))) ** 2 + ((xx - cx) / r) ** 2 < 1
        grown = ((yy - cy) / (r * 1.6 + 4)) ** 2 + ((xx - cx) / (r + 4)) ** 2 < 1.6
        if (grown & mask).any():
            continue
        mask |= spot
        placed += 1
    img = np.where(mask[..., None], np.array(SPOT_COLOURS[name], np.float32)[None, None], img)
    return img, mask, name, placed


def _row(rng: np.random.Generator, spec: BaseSetSpec, index: int, folder: Path) -> dict:
    classes = list(CLASSES)
    cls = classes[index % len(classes)]
    img, pixels, colour, count = _spots(rng, render_normal(cls, rng, spec.size).image)
    name = f"images/{index:05d}.png"
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / name)
    grid = mask_text.mask_to_grid(pixels, spec.grid)
    seg = mask_text.encode(grid)
    what = cls.replace("_", " ")
    region = region_of(pixels, count) if count else ""
    where = "scattered over the image" if region == "scattered" else f"in the {region} of the image"
    seen = (
        f"There {'is' if count == 1 else 'are'} {COUNTS[count]} {colour} spot{'s' if count != 1 else ''} "
        f"{where}, covering {int(grid.sum())} patches."
        if count
        else "There are no spots on it."
    )
    if rng.random() < 0.5:
        options = dict(zip("ABCD", COUNTS, strict=True))
        question, answer = f"How many {colour} spots are there?", "ABCD"[count]
    else:
        names = [c.replace("_", " ") for c in classes]
        options = dict(zip("ABCDEFGH", names, strict=True))
        question, answer = "What is the object in the image?", "ABCDEFGH"[names.index(what)]
    shown = question + "\n" + "\n".join(f"{k}. {v}" for k, v in options.items())  # as the MMAD reader writes it
    # the object by its name only: the benchmark's descriptions of a normal part name the defects it lacks
    think = f"This is a photo of a {what}. {seen} The answer is {options[answer]}, option {answer}."
    return {
        "id": f"base-{index:05d}",
        "image": name,
        "question": shown,
        "options": options,
        "answer": answer,
        "mask": seg,
        "anomalous": False,  # spots are things to point at, not defects: nothing here is labelled anomalous
        "type": "Base",
        "target": f"<seg>{seg}</seg><think>{think}</think><answer>{answer}</answer>",
    }


def write_base_set(spec: BaseSetSpec, folder: str | Path) -> Path:
    """Write the images and ``base.jsonl`` into ``folder``; returns the JSONL's path. A pure function of the
    spec: the same seed writes the same files."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    rows = [_row(rng, spec, i, folder) for i in range(spec.images)]
    out = folder / "base.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "base_set.json").write_text(json.dumps(asdict(spec), indent=2))
    return out
