"""``rlad data show``: a PNG contact sheet of samples, ground-truth mask outlined, patch grid drawn.

So a user sees what the model is trained on: each tile is the query image with the patch grid, the
ground-truth pixel mask outlined in red, the anomalous patches of the grid mask shaded, and a caption
(class / defect, the Text-as-Mask string's length in runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from rlad.sample import VerifiableSample

__all__ = ["contact_sheet"]


def _tile(sample: VerifiableSample, pixel_mask: np.ndarray | None, size: int) -> Image.Image:
    img = Image.open(sample.image).convert("RGB").resize((size, size), Image.BILINEAR)
    grid = sample.grid
    shade = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(shade)
    edges = (np.arange(grid + 1) * size) // grid
    for r, c in zip(*np.nonzero(sample.mask), strict=True):
        d.rectangle([edges[c], edges[r], edges[c + 1] - 1, edges[r + 1] - 1], fill=(255, 200, 0, 70))
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
        arr[outline] = (255, 0, 0, 255)
        img = Image.fromarray(arr)
    canvas = Image.new("RGB", (size, size + 28), (20, 20, 20))
    canvas.paste(img.convert("RGB"), (0, 0))
    cd = ImageDraw.Draw(canvas)
    cd.text((4, size + 2), f"{sample.class_name} / {sample.defect}", fill=(255, 255, 255))
    cd.text((4, size + 14), f"{int(sample.mask.sum())} patches of {grid}x{grid}", fill=(180, 180, 180))
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
