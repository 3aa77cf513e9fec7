"""MMAD-style multiple-choice questions from an image's metadata, and the dense SFT target for each.

The subtasks are those the generated metadata can verify: Anomaly Discrimination (every image),
Defect Classification, Defect Localization, Defect Description (anomalous images), Object Classification
and Object Analysis (every image). Options are shuffled per question with the caller's RNG.

:func:`sft_target` writes the warm-start target ``<seg>…</seg><think>…</think><answer>X</answer>``: the
seg is the sample's ground-truth patch mask, the think text says where the anomaly is, what it is and why
it is a defect, from the same metadata (grounded, never free text).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from rlad import mask_text
from rlad.completion import BLOCKS
from rlad.data.render import DEFECT_COLOURS, DEFECT_SHAPES
from rlad.sample import VerifiableSample

__all__ = ["LOOK", "NORMAL_DESCRIPTIONS", "look_of", "make_questions", "region_of", "sft_target", "size_of",
           "think_claims"]  # fmt: skip

# Per-class normal descriptions, in the manner of AnomalyGPT's appendix.
NORMAL_DESCRIPTIONS = {
    "woven_fabric": "a woven fabric, which should have an even criss-cross weave without holes or stains",
    "wood": "a wooden surface, which should show continuous grain lines without cracks, holes or spots",
    "metal_grid": "a metal grid, which should have straight, evenly spaced bars without breaks or foreign matter",
    "pill": "a round white pill, which should be intact and clean, with only its fine natural speckles",
    "capsule": "a blue and yellow capsule, which should be smooth, whole and evenly coloured",
    "metal_nut": "a hexagonal metal nut, which should be complete with a clean round hole and no scratches",
    "pcb": "a printed circuit board, which should have intact copper traces and a clean chip",
    "bottle_top": "a green bottle seen from the top, which should have a complete rim and clean glass",
}
DEFECT_WORDS = {
    "scratch": "a scratch",
    "hole": "a hole",
    "stain": "a stain",
    "crack": "a crack",
    "contamination": "contamination by foreign matter",
    "missing_part": "a missing or broken part",
}
REGIONS = [["top left", "top", "top right"], ["left", "center", "right"], ["bottom left", "bottom", "bottom right"]]
SIZES = ("small", "medium", "large")

YES_NO = ("Yes.", "No.")


def region_of(mask: np.ndarray, blobs: int = 1) -> str:
    """One of the 3x3 regions (AnomalyGPT) holding the mask's centre of mass, or "scattered"."""
    ys, xs = np.nonzero(mask)
    if blobs > 1 and (np.ptp(ys) > mask.shape[0] / 3 or np.ptp(xs) > mask.shape[1] / 3):
        return "scattered"
    r = min(2, int(3 * ys.mean() / mask.shape[0]))
    c = min(2, int(3 * xs.mean() / mask.shape[1]))
    return REGIONS[r][c]


def look_of(size: str, colour: str, shape: str) -> str:
    """A defect's look in words: a Defect Description's answer and the think's claim (``LOOK`` reads it back)."""
    return f"a {size} {colour} {shape} mark"


LOOK = re.compile(rf"a (?P<size>{'|'.join(SIZES)}) (?P<colour>.+) (?P<shape>{'|'.join(DEFECT_SHAPES)}) mark")
"""``look_of``'s words, its three parts by name."""


def size_of(mask: np.ndarray) -> str:
    share = mask.mean()
    return SIZES[0] if share < 0.005 else SIZES[1] if share < 0.03 else SIZES[2]


def _choice(
    question: str, right: str, candidates: list[str], rng: np.random.Generator, n: int = 4, fixed: bool = False
) -> dict[str, Any]:
    """A multiple-choice entry: ``right`` and other ``candidates`` (a list that holds ``right``). Shuffled (MMAD's
    way): ``n`` options, the right one at a random letter. ``fixed``: every candidate of a short list (<= 10) in
    its listed order, so a letter always means the same answer; long lists keep ``n`` options, in listed order.
    ``right`` missing from ``candidates`` is refused: no distractor could look like it, so its words (or, fixed,
    its place after the listed ones) would give it away."""
    if right not in candidates:
        raise ValueError(f"{question!r}: the answer {right!r} is not among the candidates {candidates}")
    canonical = list(dict.fromkeys(candidates))
    picked = [w for w in canonical if w != right]
    if fixed and len(canonical) <= 10:
        opts = canonical
    else:
        picked = [picked[i] for i in rng.permutation(len(picked))[: n - 1]]
        opts = [right, *picked]
        opts = sorted(opts, key=canonical.index) if fixed else [opts[i] for i in rng.permutation(len(opts))]
    letters = "ABCDEFGHIJ"[: len(opts)]
    return {
        "Question": question,
        "Options": dict(zip(letters, opts, strict=True)),
        "Answer": letters[opts.index(right)],
    }


def make_questions(
    meta: dict[str, Any], all_classes: list[str], rng: np.random.Generator, fixed_options: bool = False
) -> list[dict[str, Any]]:
    """MMAD ``conversation`` entries for one image; ``meta`` is the image's ``rlad_meta`` (see synth.py).
    ``fixed_options``: see ``_choice``."""
    cls, defect = meta["class_name"], meta["defect"]
    anomalous = defect != "good"
    qs = []
    yes_no = _choice(
        "Is there any defect in the object?", YES_NO[0] if anomalous else YES_NO[1], list(YES_NO), rng, 2, fixed_options
    )
    qs.append(yes_no | {"type": "Anomaly Detection"})
    names = [c.replace("_", " ") for c in all_classes]
    qs.append(
        _choice("What is the object in the image?", cls.replace("_", " "), names, rng, fixed=fixed_options)
        | {"type": "Object Classification"}
    )
    colours = ["white", "grey", "green", "brown", "beige", "silver", "blue and yellow", "red", "black"]
    qs.append(
        _choice("What is the main colour of the object?", meta["object_colour"], colours, rng, fixed=fixed_options)
        | {"type": "Object Analysis"}
    )
    if anomalous:
        qs.append(
            _choice(
                "What type of defect is present?",
                DEFECT_WORDS[defect],
                list(DEFECT_WORDS.values()),
                rng,
                fixed=fixed_options,
            )
            | {"type": "Defect Classification"}
        )
        regions = [r for row in REGIONS for r in row] + ["scattered"]
        qs.append(
            _choice("Where is the defect located?", meta["region"], regions, rng, fixed=fixed_options)
            | {"type": "Defect Localization"}
        )
        desc = look_of(meta["size"], meta["colour"], meta["shape"])
        looks = [look_of(s, c, sh) for s in SIZES for c in DEFECT_COLOURS for sh in DEFECT_SHAPES]
        qs.append(
            _choice("What does the defect look like?", desc, looks, rng, fixed=fixed_options)
            | {"type": "Defect Description"}
        )
    return qs


def sft_target(sample: VerifiableSample, blocks: Sequence[str] = BLOCKS) -> str:
    """The dense warm-start target for a sample, grounded in its metadata and ground-truth mask; only the
    ``blocks`` asked for (``output.blocks``), in order."""
    meta = sample.extra.get("rlad_meta", {})
    cls = sample.class_name or meta.get("class_name", "object")
    normal = NORMAL_DESCRIPTIONS.get(cls, f"a {cls.replace('_', ' ')}, which should look like the normal samples")
    seg = mask_text.encode(sample.mask)
    if sample.mask.any():
        rows, cols = np.nonzero(sample.mask)
        where = meta.get("region") or region_of(sample.mask)
        what = DEFECT_WORDS.get(sample.defect, sample.defect.replace("_", " "))
        look = look_of(meta["size"], meta["colour"], meta["shape"]) if "size" in meta else "an irregular mark"
        think = (
            f"This is a photo of {normal}. There is {look} in the {where} of the image, covering {len(rows)} "
            f"patches in rows {rows.min()}-{rows.max()} and columns {cols.min()}-{cols.max()}. It does not belong "
            f"to a normal {cls.replace('_', ' ')}: it is {what}, so the object is anomalous."
        )
    else:
        think = f"This is a photo of {normal}. Every part of it looks as it should; no patch is anomalous."
    answer_text = sample.options[sample.answer].rstrip(".")
    # The letter is named after the answer's text, so the reasoning says what the letter stands for.
    think += (
        f" The question asks: {sample.question.splitlines()[0]} The answer is {answer_text}, option {sample.answer}."
    )
    content = {"seg": seg, "think": think, "answer": sample.answer}
    return "".join(f"<{b}>{content[b]}</{b}>" for b in blocks)


# What sft_target's think text states, in its own words (think_claims reads them back).
_CLAIMS = (
    re.compile(r"There is (?P<look>.+?) in the (?P<region>.+?) of the image, covering"),
    re.compile(r": it is (?P<kind>.+?), so the object is anomalous"),
    re.compile(r"The answer is (?P<answer_text>.+?), option (?P<answer_letter>[A-J])\."),
)


def think_claims(think: str) -> dict[str, str]:
    """What a think text in ``sft_target``'s form claims, by name: ``look`` (the Defect Description words),
    ``region`` (Defect Localization's), ``kind`` (Defect Classification's), ``answer_text`` and ``answer_letter``
    (what "The answer is …, option X." names). Only the claims the text states: a policy's think may leave some
    out or garble them. ``experiments/learning/answer_chain.py`` follows them to the answer."""
    claims: dict[str, str] = {}
    for pattern in _CLAIMS:
        if match := pattern.search(think):
            claims |= match.groupdict()
    return claims
