"""Where a GRPO run's advantage went: per question kind, image label and what the `<seg>` held.

    python experiments/learning/shortcut.py RUN_DIR [--steps 0 20]

Reads the run's replay store (every sampled completion with its rewards and advantage) and prints, for each
window of steps, one row per (questions asked of both labels or of defective images only, normal or defective
image, `<seg>` empty / a mask / unparseable): how many completions, their mean rewards, mean advantage and the
advantage summed — what GRPO pushed up or down. A policy that cannot tell the labels apart learns "empty" on the
shared questions when the empty rows' summed advantage beats the masks' (README, *Why the policy does not
localise*). With ``grpo.credit: block`` the stored advantage is the completion's total; the `<seg>` tokens got
only the detection and format shares.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rlad import mask_text  # noqa: E402
from rlad.completion import parse_completion  # noqa: E402
from rlad.replay import ReplayStore  # noqa: E402
from rlad.scoring import shared_subtasks  # noqa: E402
from rlad.tables import markdown_table  # noqa: E402


def seg_kind(completion: str, grid: int) -> str:
    """``empty``, ``mask`` or ``unparseable``: what the completion's `<seg>` says, as the detection reward reads it."""
    pred = mask_text.decode_or_none(parse_completion(completion).seg, grid)
    return "unparseable" if pred is None else ("mask" if pred.any() else "empty")


def _window(first: int, end: float) -> str:
    return f"{first}-" if end == math.inf else f"{first}-{int(end) - 1}"


def breakdown(groups, edges: list[int]) -> list[list[str]]:
    """Rows of the table: window of steps (from each edge to the next), questions, label, seg, n, mean rewards,
    mean and summed advantage."""
    shared = shared_subtasks([g.sample for g in groups])
    cells: dict[tuple, list[tuple]] = defaultdict(list)
    for g in groups:
        window = next(_window(a, b) for a, b in itertools.pairwise([*edges, math.inf]) if a <= g.step < b)
        kind = "shared" if g.sample.subtask in shared else "defective-only"
        label = "defective" if g.sample.anomalous else "normal"
        for i, text in enumerate(g.completions):
            values = (g.rewards.get("detection", [0.0])[i], g.rewards.get("answer", [0.0])[i], g.advantages[i])
            cells[(window, kind, label, seg_kind(text, g.sample.grid))].append(values)
    rows = []
    for key in sorted(cells):
        v = cells[key]
        det, ans, adv = (sum(x[k] for x in v) for k in range(3))
        n = len(v)
        rows.append([*key, str(n), f"{det / n:.2f}", f"{ans / n:.2f}", f"{adv / n:+.2f}", f"{adv:+.1f}"])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a `rlad train` run folder (its replay/ store is read)")
    p.add_argument("--steps", type=int, nargs="+", default=[0, 20], help="first step of each window of steps")
    args = p.parse_args()
    store = args.run_dir / "replay"
    if not store.is_dir():
        raise SystemExit(f"{store} is not a replay store (run `rlad train` into {args.run_dir} first)")
    groups = ReplayStore(store).groups()
    if not groups:
        raise SystemExit(f"{store} holds no groups")
    head = ["steps", "questions", "image", "<seg>", "n", "detection", "answer", "advantage", "advantage summed"]
    print(markdown_table(head, breakdown(groups, sorted({0, *args.steps}))))
    print(json.dumps({"run": str(args.run_dir), "completions": sum(len(g.completions) for g in groups)}))


if __name__ == "__main__":
    main()
