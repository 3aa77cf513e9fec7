"""Text-as-Mask: the patch-grid anomaly mask written as text inside ``<seg>...</seg>``.

The image is cut into a ``grid x grid`` lattice of patches. Only anomalous patches are written; the
anomalous patches of one grid row that touch form one run ``(row, col_start)-(row, col_end)``, indices
0-based. Runs are sorted by (row, col_start), maximal, and joined by ``", "``. A normal image is the
empty string. Example, an L-shaped blob of 8 patches (OmniAD's own example)::

    (14, 8)-(14, 9), (15, 8)-(15, 10), (16, 8)-(16, 10)

``encode`` writes that canonical form. ``decode`` reads it back and is lenient where the variation is
harmless (white space, a single patch written ``(r, c)``, runs unsorted or overlapping: their union, a
trailing comma) and strict where it matters: a run whose rows differ, ``col_start > col_end``, an index
outside the grid, or anything that is not a coordinate raises :class:`MaskTextError`. A malformed mask
is never read as "no anomaly", so junk output cannot earn the normal-image reward.

``mask_to_grid`` and ``grid_to_mask`` move between pixel masks and patch grids. Patch ``i`` of an axis of
length ``n`` spans pixels ``[floor(i*n/grid), floor((i+1)*n/grid))``; the two functions share that
partition, so a grid mask upsampled to the image is exactly the union of the patches it names.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

import numpy as np

__all__ = [
    "Cover",
    "MaskTextError",
    "Run",
    "decode",
    "decode_or_none",
    "encode",
    "grid_to_mask",
    "mask_to_grid",
    "max_text_chars",
    "runs",
]


class MaskTextError(ValueError):
    """The text inside ``<seg>`` is not a valid patch mask for the grid."""


class Cover(str, enum.Enum):
    """When a patch counts as anomalous, given the pixels of the ground-truth mask inside it."""

    any = "any"  # at least one anomalous pixel in the patch
    area = "area"  # anomalous share of the patch >= tau (and at least one patch for a non-empty mask)


# One run or singleton, then its separator: "," or the end of the text. [0-9] rather than \d, which
# also matches other scripts' digits; at most 6 digits, so int() never sees a megabyte of digits.
_ITEM = re.compile(
    r"\s*\(\s*([0-9]{1,6})\s*,\s*([0-9]{1,6})\s*\)"
    r"(?:\s*-\s*\(\s*([0-9]{1,6})\s*,\s*([0-9]{1,6})\s*\))?"
    r"\s*(,|$)"
)


def max_text_chars(grid: int) -> int:
    """Longest ``<seg>`` text decode accepts for a grid: 4x the canonical worst case (a checkerboard)."""
    return 4 * (grid * grid // 2 + 1) * (len(f"({grid}, {grid})-({grid}, {grid}), ")) + 64


def encode(mask: np.ndarray) -> str:
    """Canonical text of a ``grid x grid`` boolean mask: maximal row runs, sorted, ``", "``-joined.

    >>> m = np.zeros((4, 4), bool); m[1, 1:3] = True; m[2, 0] = True
    >>> encode(m)
    '(1, 1)-(1, 2), (2, 0)-(2, 0)'
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        raise MaskTextError(f"encode needs a square 2-D mask, got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    grid = mask.shape[1]
    # Pad each row with a False on both sides: run starts are rising edges, run ends falling edges.
    padded = np.zeros((mask.shape[0], grid + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)  # (rows, grid+1): +1 where a run starts, -1 one past its end
    rows_s, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # row-major order pairs each start with its end
    runs = zip(rows_s.tolist(), starts.tolist(), ends.tolist(), strict=True)
    return ", ".join(f"({r}, {s})-({r}, {e - 1})" for r, s, e in runs)


class Run(NamedTuple):
    """One run (or singleton) of a mask text: its characters ``text[start:end]`` (leading white space included,
    the separator after it not) name patches ``(row, col_start)`` to ``(row, col_end)``."""

    start: int
    end: int
    row: int
    col_start: int
    col_end: int


def runs(text: str, grid: int) -> list[Run]:
    """The runs of ``text`` in the order written, each with its character span; raises :class:`MaskTextError`
    if malformed (``decode`` is their union).

    >>> runs("(0, 1)-(0, 2), (1, 0)", 3)
    [Run(start=0, end=13, row=0, col_start=1, col_end=2), Run(start=14, end=21, row=1, col_start=0, col_end=0)]
    """
    if not isinstance(text, str):
        raise MaskTextError(f"mask text must be a string, got {type(text).__name__}")
    if grid < 1:
        raise MaskTextError(f"grid must be >= 1, got {grid}")
    limit = max_text_chars(grid)
    if len(text) > limit:
        raise MaskTextError(f"mask text of {len(text)} characters exceeds the {limit} allowed for a {grid}x{grid} grid")
    out: list[Run] = []
    if not text.strip():
        return out
    pos = 0
    while True:
        m = _ITEM.match(text, pos)
        if m is None:
            raise MaskTextError(f"not a patch coordinate at character {pos}: {text[pos : pos + 30]!r}")
        r1, c1, r2, c2, sep = m.groups()
        row, col_start = int(r1), int(c1)
        if r2 is None:
            col_end = col_start
        else:
            if int(r2) != row:
                raise MaskTextError(f"run {m.group(0).strip(' ,')!r} spans rows {row} and {r2}; a run stays in one row")
            col_end = int(c2)
        if col_start > col_end:
            raise MaskTextError(f"run {m.group(0).strip(' ,')!r} has col_start {col_start} > col_end {col_end}")
        if row >= grid or col_end >= grid:
            raise MaskTextError(f"patch {m.group(0).strip(' ,')!r} lies outside the {grid}x{grid} grid")
        end = m.start(5)  # the separator's place (or the end), white space before it left out
        while end > pos and text[end - 1].isspace():
            end -= 1
        out.append(Run(pos, end, row, col_start, col_end))
        pos = m.end()
        if sep == "" or not text[pos:].strip():  # end of text, or a harmless trailing comma
            return out


def decode(text: str, grid: int) -> np.ndarray:
    """The ``grid x grid`` boolean mask that ``text`` describes; raises :class:`MaskTextError` if malformed.

    >>> decode("(0, 1)-(0, 2), (1, 0)", 3).astype(int).tolist()
    [[0, 1, 1], [1, 0, 0], [0, 0, 0]]
    """
    found = runs(text, grid)
    mask = np.zeros((grid, grid), dtype=bool)
    for run in found:
        mask[run.row, run.col_start : run.col_end + 1] = True
    return mask


def decode_or_none(text: str | None, grid: int) -> np.ndarray | None:
    """``decode(text, grid)``, or None when the text is missing (None) or malformed: what rewards and metrics read."""
    if text is None:
        return None
    try:
        return decode(text, grid)
    except MaskTextError:
        return None


def _patch_edges(n: int, grid: int) -> np.ndarray:
    """Pixel index where each of the ``grid`` patches along an axis of ``n`` pixels starts, plus ``n``."""
    return (np.arange(grid + 1) * n) // grid


def mask_to_grid(pixel_mask: np.ndarray, grid: int, cover: Cover | str = Cover.any, tau: float = 0.5) -> np.ndarray:
    """The ``grid x grid`` patch mask of an ``H x W`` pixel mask (non-zero = anomalous).

    ``cover="any"``: a patch is anomalous if any of its pixels is. ``cover="area"``: if the anomalous share
    of its pixels is at least ``tau``; a non-empty pixel mask always marks at least its best-covered patch,
    so an anomalous image never becomes normal on the grid because its defect is smaller than a patch.
    """
    cover = Cover(cover)
    pixel_mask = np.asarray(pixel_mask)
    if pixel_mask.ndim == 3 and pixel_mask.shape[2] == 1:
        pixel_mask = pixel_mask[:, :, 0]
    if pixel_mask.ndim != 2:
        raise ValueError(f"pixel mask must be 2-D (H x W), got shape {pixel_mask.shape}")
    h, w = pixel_mask.shape
    if h < grid or w < grid:
        raise ValueError(f"pixel mask {h}x{w} is smaller than the {grid}x{grid} grid")
    ys, xs = _patch_edges(h, grid), _patch_edges(w, grid)
    on = (pixel_mask != 0).astype(np.int64)
    # Anomalous-pixel count per patch: sum rows within each row band, then columns within each column band.
    counts = np.add.reduceat(np.add.reduceat(on, ys[:-1], axis=0), xs[:-1], axis=1)
    if cover is Cover.any:
        return counts > 0
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    areas = np.diff(ys)[:, None] * np.diff(xs)[None, :]
    share = counts / areas
    out = share >= tau
    if not out.any() and counts.any():
        out[np.unravel_index(np.argmax(share), share.shape)] = True
    return out


def grid_to_mask(grid_mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The ``H x W`` boolean pixel mask covered by the patches of ``grid_mask`` (inverse partition of mask_to_grid)."""
    grid_mask = np.asarray(grid_mask, dtype=bool)
    if grid_mask.ndim != 2 or grid_mask.shape[0] != grid_mask.shape[1]:
        raise ValueError(f"grid mask must be square 2-D, got shape {grid_mask.shape}")
    grid = grid_mask.shape[0]
    h, w = int(shape[0]), int(shape[1])
    if h < grid or w < grid:
        raise ValueError(f"target shape {h}x{w} is smaller than the {grid}x{grid} grid")
    rows = np.repeat(np.arange(grid), np.diff(_patch_edges(h, grid)))  # patch row of each pixel row
    cols = np.repeat(np.arange(grid), np.diff(_patch_edges(w, grid)))
    return grid_mask[rows[:, None], cols[None, :]]
