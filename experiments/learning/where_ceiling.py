"""How far a policy's own mask could carry its "Where is the defect located?" answers.

    python experiments/learning/where_ceiling.py COMPLETIONS.jsonl [COMPLETIONS.jsonl ...]

Reads ``completions.jsonl`` files written by ``rlad eval`` (one per seed, say) and, over their Defect
Localization questions, prints per file and as mean ± 95 % CI over files:

- ``answered``: the share the policy's letter got right (its answer accuracy on this subtask);
- ``own_mask``: the share the region of the policy's *own* ``<seg>`` mask would get right (the 3x3 region
  holding the mask's centre of mass, "scattered" for spread pieces, by the generator's rule
  ``rlad.data.questions.region_of``); an empty or unparseable mask counts as wrong;
- ``true_grid``: the same rule applied to the *true* mask on the patch grid: the ceiling of any answer read
  off a grid mask, since the benchmark names the region from the pixel mask.

``own_mask`` above ``answered`` means the policy does not use what it wrote; ``own_mask`` far below
``true_grid`` means its masks are what holds the answer back.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import per_file  # noqa: E402

from rlad import mask_text  # noqa: E402
from rlad.completion import parse_completion  # noqa: E402
from rlad.data.questions import region_of  # noqa: E402
from rlad.scoring import ScoredRecord  # noqa: E402

SUBTASK = "Defect Localization"
COLUMNS = ("answered", "own_mask", "true_grid")


def grid_region(mask: np.ndarray | None) -> str | None:
    """The region ``region_of`` names for a grid mask (its connected pieces as blobs); None for no mask."""
    if mask is None or not mask.any():
        return None
    return region_of(mask, ndimage.label(mask)[1])


def where_hits(records: Iterable[ScoredRecord]) -> dict[str, float]:
    """Shares of the Defect Localization questions among ``records`` that the answer, the own mask's region and
    the true grid mask's region get right, and ``n``."""
    hits = dict.fromkeys(COLUMNS, 0)
    n = 0
    for record in records:
        sample = record.sample
        if sample.subtask != SUBTASK:
            continue
        n += 1
        truth = sample.options[sample.answer].rstrip(".")
        parsed = parse_completion(record.completion)
        hits["answered"] += parsed.answer_letter == sample.answer
        hits["own_mask"] += grid_region(mask_text.decode_or_none(parsed.seg, sample.grid)) == truth
        hits["true_grid"] += grid_region(sample.mask) == truth
    if n == 0:
        raise ValueError(f"no {SUBTASK} questions in these rows")
    return {"n": n} | {c: hits[c] / n for c in COLUMNS}


if __name__ == "__main__":
    per_file.main(__doc__, where_hits, COLUMNS)
