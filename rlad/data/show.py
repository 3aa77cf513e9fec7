"""Pictures of samples and predictions: the patch grid, masks and text drawn on the image.

- ``rlad data show``: a contact sheet, so a user sees what the model is trained on — each tile the query
  image with the patch grid, the ground-truth pixel mask outlined in red, the anomalous patches of the grid
  mask shaded, and a caption (class / defect, the mask's size in patches);
- ``rlad eval`` and ``rlad predict``: :func:`prediction_overlay`, the image with the ground truth outlined
  (green) and the predicted patches shaded (red), beside the question, the answer and the think text.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from rlad.completion import ParsedCompletion
from rlad.sample import VerifiableSample

__all__ = ["annotated_image", "contact_sheet", "grid_text", "prediction_overlay"]


def annotated_image(
    image: str | Path,
    size: int,
    grid: int,
    patches: np.ndarray | None = None,
    pixel_mask: np.ndarray | None = None,
    patch_colour: tuple[int, int, int, int] = (255, 200, 0, 70),
    outline_colour: tuple[int, int, int] = (255, 0, 0),
) -> Image.Image:
    """The image at ``size`` x ``size`` with the ``grid`` drawn faintly, ``patches`` (a (grid, grid) bool mask)
    shaded and ``pixel_mask`` (any resolution) outlined."""
    img = Image.open(image).convert("RGB").resize((size, size), Image.BILINEAR)
    shade = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(shade)
    edges = (np.arange(grid + 1) * size) // grid
    if patches is not None:
        for r, c in zip(*np.nonzero(patches), strict=True):
            d.rectangle([edges[c], edges[r], edges[c + 1] - 1, edges[r + 1] - 1], fill=patch_colour)
    for e in edges:
        d.line([(e, 0), (e, size)], fill=(255, 255, 255, 60))
        d.line([(0, e), (size, e)], fill=(255, 255, 255, 60))
    img = Image.alpha_composite(img.convert("RGBA"), shade)
    if pixel_mask is not None and pixel_mask.any():
        m = Image.fromarray((pixel_mask * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)
        outline = np.asarray(m.filter(ImageFilter.MaxFilter(3)), bool) & ~np.asarray(
            m.filter(ImageFilter.MinFilter(3)), bool
        )
        arr = np.asarray(img).copy()
        arr[outline] = (*outline_colour, 255)
        img = Image.fromarray(arr)
    return img.convert("RGB")


def _tile(sample: VerifiableSample, pixel_mask: np.ndarray | None, size: int) -> Image.Image:
    img = annotated_image(sample.image, size, sample.grid, sample.mask, pixel_mask)
    canvas = Image.new("RGB", (size, size + 28), (20, 20, 20))
    canvas.paste(img, (0, 0))
    cd = ImageDraw.Draw(canvas)
    cd.text((4, size + 2), f"{sample.class_name} / {sample.defect}", fill=(255, 255, 255))
    cd.text((4, size + 14), f"{int(sample.mask.sum())} patches of {sample.grid}x{sample.grid}", fill=(180, 180, 180))
    return canvas


def contact_sheet(
    samples: Sequence[VerifiableSample],
    pixel_masks: Sequence[np.ndarray | None],
    out: str | Path,
    tile: int = 192,
    cols: int = 6,
) -> Path:
    """Write a grid of tiles to ``out`` (PNG) and return its path."""
    if not samples:
        raise ValueError("no samples to show")
    rows = (len(samples) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * tile, rows * (tile + 28)), (0, 0, 0))
    for i, (s, m) in enumerate(zip(samples, pixel_masks, strict=True)):
        sheet.paste(_tile(s, m, tile), ((i % cols) * tile, (i // cols) * (tile + 28)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def grid_text(patches: np.ndarray | None) -> str:
    """A decoded patch mask as text, one line per row: ``#`` anomalous, ``.`` normal (``?`` if unparseable)."""
    if patches is None:
        return "? (the <seg> block is missing or malformed)"
    return "\n".join("".join("#" if v else "." for v in row) for row in np.asarray(patches, bool))


def prediction_overlay(
    sample: VerifiableSample,
    parsed: ParsedCompletion,
    predicted: np.ndarray | None,
    pixel_mask: np.ndarray | None,
    out: str | Path,
    size: int = 384,
    title: str = "",
    graded: bool = True,
) -> Path:
    """One PNG: the image with the ground truth outlined in green and the predicted patches shaded in red,
    and a text panel with the question, the answer (and, when ``graded``, the right one) and the think text."""
    img = annotated_image(sample.image, size, sample.grid, predicted, pixel_mask, (255, 0, 0, 90), (0, 255, 0))
    panel_w, line_h = 420, 13
    lines = [title] if title else []
    lines += [f"{sample.class_name} / {sample.defect}".strip(" /")] if sample.class_name else []
    lines += textwrap.wrap(sample.question.replace("\n", "  "), 68)[:6]
    letter = parsed.answer_letter or "?"
    lines += ["", f"answer: {letter} {sample.options.get(letter, '')}".rstrip()]
    if graded:
        lines += [f"right:  {sample.answer} {sample.options.get(sample.answer, '')}".rstrip()]
    n = "unparseable" if predicted is None else f"{int(np.count_nonzero(predicted))} patches"
    truth = "; ground truth: green outline" if pixel_mask is not None else ""
    lines += [f"<seg>: {n} (red){truth}", "", "<think>:"]
    lines += textwrap.wrap(parsed.think or "(none)", 68)[: max(1, (size + 40) // line_h - len(lines) - 1)]
    canvas = Image.new("RGB", (size + panel_w, max(size, (len(lines) + 1) * line_h)), (20, 20, 20))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((size + 8, 4 + i * line_h), line, fill=(235, 235, 235))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
