"""``rlad predict``: one question about one image — what an inspection engineer runs first.

The question is shown to the policy verbatim and must list its options as lines ``A. text``; without one, the
policy is asked the discrimination question the paper evaluates detection with ("Is there any defect in the
object?", A. Yes / B. No). A ``reference`` image (a normal part of the same kind) makes it a 1-shot prompt.
The answer is printed with the decoded ``<seg>`` mask as a grid, and drawn as an overlay PNG.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from rlad import mask_text
from rlad.completion import parse_completion
from rlad.config import Config, ConfigError
from rlad.sample import VerifiableSample

__all__ = ["contradictions", "letterbox", "parse_options", "predict"]

DEFAULT_QUESTION = "Is there any defect in the object?\nA. Yes.\nB. No."
_OPTION = re.compile(r"^\s*([A-Z])[.)]\s+(.+?)\s*$")


def parse_options(question: str) -> dict[str, str]:
    """The ``A. text`` lines of a question, in order; ConfigError when there are none."""
    options = {m.group(1): m.group(2) for line in question.splitlines() if (m := _OPTION.match(line))}
    if not options:
        raise ConfigError(
            f"--question {question[:60]!r} lists no options: write them on their own lines, e.g. "
            "'Is there any defect?\\nA. Yes\\nB. No'"
        )
    return options


def predict(
    checkpoint: Path,
    image: str | Path,
    config: Config,
    question: str | None = None,
    reference: str | None = None,
    overlay: str | Path | None = None,
) -> dict[str, Any]:
    """Greedy answer of the policy at ``checkpoint``; returns the completion, its parts, the decoded mask,
    ``warnings`` (contradictions in the answer) and ``notes`` (what was done to the inputs). ``overlay``: a PNG
    of the image as the policy saw it, with its predicted patches.

    The policy was trained on square images, and the input builder resizes every image to a square: a
    non-square image is first padded to a square (letterboxed, with its mean border colour), so that its
    content keeps its aspect and the patch grid covers the padded square."""
    import dataclasses
    import tempfile

    from rlad.data.show import prediction_overlay
    from rollout.worker import make_engine

    for what, p in (("image", image), ("reference image", reference)):
        if p is not None:
            _check_image(what, Path(p))
    question = question or DEFAULT_QUESTION
    options = parse_options(question)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, shots=1 if reference else 0))
    with tempfile.TemporaryDirectory(prefix="rlad-predict-") as tmp:
        notes: list[str] = []
        seen = {}
        for what, p in (("image", image), ("reference", reference)):
            if p is not None:
                seen[what], note = letterbox(Path(p), Path(tmp) / f"{what}.png")
                notes += [f"{what} {p}: {note}"] if note else []
        sample = VerifiableSample(
            sample_id=Path(image).name,
            question=question,
            options=options,
            answer=next(iter(options)),  # unknown; nothing is scored, the overlay shows no "right" answer
            mask=np.zeros((config.mask.grid, config.mask.grid), bool),
            anomalous=False,
            image=str(seen["image"]),
            reference=str(seen["reference"]) if reference else None,
        )
        completion = make_engine(config, str(checkpoint), standalone=True).generate([sample], n=1, greedy=True)[0]
        parsed = parse_completion(completion.text)
        patches = mask_text.decode_or_none(parsed.seg, config.mask.grid) if "seg" in config.output.blocks else None
        if overlay is not None:
            prediction_overlay(sample, parsed, patches, None, overlay, graded=False)
    sample = dataclasses.replace(sample, image=str(image), reference=str(reference) if reference else None)
    warnings = contradictions(parsed.answer_letter, options, patches)
    return {"sample": sample, "completion": completion.text, "parsed": parsed, "patches": patches,
            "warnings": warnings, "notes": notes}  # fmt: skip


def letterbox(path: Path, out: Path) -> tuple[Path, str]:
    """``path`` padded to a square with its mean border colour, centred, written to ``out``; a square image is
    used as it is. Returns the path to use and a note saying what was done (empty when nothing was)."""
    from PIL import Image

    with Image.open(path) as im:
        img = im.convert("RGB")
    w, h = img.size
    if w == h:
        return path, ""
    a = np.asarray(img)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).mean(axis=0).round().astype(int)
    side = max(w, h)
    square = Image.new("RGB", (side, side), tuple(int(c) for c in border))
    square.paste(img, ((side - w) // 2, (side - h) // 2))
    square.save(out)
    return out, f"{w}x{h} letterboxed to {side}x{side} (content keeps its aspect; the grid covers the square)"


def _check_image(what: str, path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ConfigError(f"{what} {path} is not an image PIL can read ({type(err).__name__}: {err})") from err


def contradictions(letter: str | None, options: dict[str, str], patches: np.ndarray | None) -> list[str]:
    """What a reader of one answer should be warned about: no letter, a letter the question does not offer,
    and (for a Yes/No defect question) an answer its own mask contradicts."""
    if letter is None:
        return ["the completion names no answer letter"]
    if letter not in options:
        return [f"answer {letter} is not among the question's options ({', '.join(options)})"]
    if patches is None:
        return []
    said = options[letter].strip().lower()
    marked = int(patches.sum())
    if said.startswith("yes") and marked == 0:
        return [f"answer {letter} ({options[letter]}) says there is a defect, but the mask marks no patch"]
    if said.startswith("no") and marked > 0:
        return [f"answer {letter} ({options[letter]}) says there is no defect, but the mask marks {marked} patches"]
    return []
