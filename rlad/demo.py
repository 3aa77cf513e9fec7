"""The main job on this machine, as far as rlad goes today: verify completions of known quality.

Until the GRPO loop lands, the demo exercises the verifiable core end to end: it draws anomaly masks on
the configured grid, writes completions as policies of known quality would (an oracle, one that shifts
the mask by a patch, one that finds the defect but misses half of it, one that always says "normal",
one that answers without a <seg>, one that writes junk), stores them as a completions JSONL, and scores
that file with the config's reward mix and the evaluation metrics, exactly as ``rlad score`` does. It
then checks what must hold of any sound mix: the oracle earns the most, on the total and on every
reward; junk earns nothing; a missing <seg> earns no detection reward.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rewards import RewardMix
from rlad.cli import print_summary
from rlad.config import Config
from rlad.mask_text import encode
from rlad.sample import VerifiableSample
from rlad.scoring import read_completions, score_records, summarise

OPTIONS = {"A": "Yes.", "B": "No."}


def _blob(rng: np.random.Generator, grid: int) -> np.ndarray:
    """A random connected blob of patches: a short random walk from a random start."""
    mask = np.zeros((grid, grid), bool)
    r, c = rng.integers(0, grid, size=2)
    for _ in range(int(rng.integers(1, max(2, grid)))):
        mask[r, c] = True
        dr, dc = [(0, 1), (1, 0), (0, -1), (-1, 0)][int(rng.integers(4))]
        r, c = int(np.clip(r + dr, 0, grid - 1)), int(np.clip(c + dc, 0, grid - 1))
    return mask


def _policies(truth: np.ndarray, answer: str, rng: np.random.Generator) -> dict[str, str]:
    wrong = "B" if answer == "A" else "A"
    think = "The surface is compared with a normal part of the same class; "
    half = truth.copy()
    rows = np.flatnonzero(truth.any(axis=1))
    half[rows[: (len(rows) + 1) // 2]] = False
    return {
        "1 oracle": f"<seg>{encode(truth)}</seg><think>{think}findings as marked.</think><answer>{answer}</answer>",
        "2 shifted": f"<seg>{encode(np.roll(truth, 1, axis=1))}</seg><think>{think}close.</think>"
        f"<answer>{answer}</answer>",
        "3 half": f"<seg>{encode(half)}</seg><think>{think}part of it.</think><answer>{answer}</answer>",
        "4 no-seg": f"<think>{think}no mask given.</think><answer>{answer}</answer>",
        "5 says-normal": f"<seg></seg><think>{think}nothing found.</think><answer>B</answer>",
        "6 junk": f"I think the answer is {wrong} {rng.integers(100)}",
    }


def run_demo(out: Path, config: Config, n_images: int = 400) -> dict[str, dict[str, float]]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    grid = config.mask.grid
    path = out / "completions.jsonl"
    with path.open("w") as f:
        for i in range(n_images):
            anomalous = rng.random() < 0.6
            truth = _blob(rng, grid) if anomalous else np.zeros((grid, grid), bool)
            answer = "A" if anomalous else "B"
            sample = VerifiableSample(
                sample_id=f"demo-{i}",
                question="Is there any defect in the object?\nA. Yes.\nB. No.",
                options=OPTIONS,
                answer=answer,
                mask=truth,
                anomalous=anomalous,
                subtask="Anomaly Discrimination",
            )
            for policy, text in _policies(truth, answer, rng).items():
                f.write(json.dumps({"completion": text, "sample": sample.to_record(), "group": policy}) + "\n")
    records = list(read_completions(path))
    scores = score_records(records, RewardMix(config.rewards))
    summary = summarise(records, scores)
    print(f"{len(records)} completions of 6 simulated policies on {n_images} images ({grid}x{grid} grid): {path}")
    print_summary(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    others = [g for g in summary if g not in ("1 oracle", "all")]
    checks = {
        "oracle earns the most on the total and on each reward": all(
            summary["1 oracle"][k] > summary[g][k] or summary["1 oracle"][k] == summary[g][k] == 1.0
            for g in others
            for k in summary["1 oracle"]
            if k in ("total", *config.rewards)
        ),
        "junk earns nothing": summary["6 junk"]["total"] == 0.0,
        "no <seg>, no detection reward": summary["4 no-seg"]["detection"] == 0.0,
    }
    for claim, holds in checks.items():
        print(f"{'ok  ' if holds else 'FAIL'} {claim}")
    if not all(checks.values()):
        raise SystemExit("demo: the reward mix fails a sanity check above")
    return summary
