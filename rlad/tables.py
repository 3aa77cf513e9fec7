"""Markdown tables shaped like the paper's: understanding (MMAD subtasks and their mean) and detection
(pixel- and image-level ``F1, Acc``, IoU_ano, IoU_nor), in percent with one decimal.

Rows are any ``{name: metrics}`` mapping where ``metrics`` is what :func:`rlad.evaluate.evaluation_metrics`
returns; ``rlad eval`` writes one row per class, the ablation scripts one row per variant (each number an
``rlad.stats.Interval`` over seeds, printed as mean ± half-width).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rlad.metrics import SUBTASKS
from rlad.stats import Interval

__all__ = ["SHORT_SUBTASKS", "detection_table", "markdown_table", "percent", "text_table", "understanding_table"]

SHORT_SUBTASKS = dict(
    zip(SUBTASKS, ("Anom Dis.", "Def Cls.", "Def Loc.", "Def Des.", "Def Ana.", "Obj Cls.", "Obj Ana."), strict=True)
)


def percent(x: float | Interval | None) -> str:
    """A share in percent with one decimal; an ``Interval`` (a mean over seeds) as ``mean ± half-width``."""
    if isinstance(x, Interval):
        return percent(x.mean) if math.isnan(x.half_width) else f"{percent(x.mean)} ± {100 * x.half_width:.1f}"
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def text_table(header: list[str], rows: list[list[str]], min_width: int = 11) -> str:
    """A fixed-width table for the console: the first column left-aligned, the others right-aligned, every
    column as wide as its longest cell plus a space (at least ``min_width``), so long names never run together."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    first = widths[0] + 2
    rest = [max(min_width, w + 1) for w in widths[1:]]
    lines = [f"{h:<{first}}" + "".join(f"{c:>{w}}" for c, w in zip(cells, rest, strict=True))
             for h, *cells in [header, *rows]]  # fmt: skip
    return "\n".join(lines) + "\n"


def understanding_table(rows: Mapping[str, Mapping[str, Any]], first: str = "") -> str:
    """Accuracy per MMAD subtask present in any row, then their mean (``Avg.``) and the format rate."""
    present = [s for s in SUBTASKS if any(s in r["subtasks"] for r in rows.values())]
    header = [first, *(SHORT_SUBTASKS[s] for s in present), "Avg.", "Format", "n"]
    body = [
        [name, *(percent(r["subtasks"].get(s)) for s in present), percent(r["mmad_mean"]),
         percent(r["format_rate"]), str(r["n"])]
        for name, r in rows.items()
    ]  # fmt: skip
    return markdown_table(header, body)


def detection_table(rows: Mapping[str, Mapping[str, Any]], first: str = "") -> str:
    """Pixel-level and image-level ``F1, Acc``, IoU_ano, IoU_nor and the unparseable-<seg> rate."""
    header = [first, "Pixel-level (F1, Acc)", "Image-level (F1, Acc)", "IoU_ano", "IoU_nor", "Bad <seg>"]
    body = []
    for name, r in rows.items():
        d = r.get("detection")
        if d is None:  # a layout without <seg> detects nothing
            body.append([name, "—", "—", "—", "—", "—"])
            continue
        body.append([
            name,
            f"{percent(d['pixel_f1'])}, {percent(d['pixel_accuracy'])}",
            f"{percent(d['image_f1'])}, {percent(d['image_accuracy'])}",
            percent(d["iou_ano"]),
            percent(d["iou_nor"]),
            percent(d["unparseable_rate"]),
        ])  # fmt: skip
    return markdown_table(header, body)
