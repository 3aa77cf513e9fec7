"""Reward scoring throughput: the paper's full reward mix on 24x24 grids, one core.

Target (issue "Foundation"): >= 20,000 completions/s for typical outputs, so reward scoring never
matters in a training step. Typical: 1-4 runs in <seg>, ~300 characters of think text, one letter;
a quarter of the completions are for normal images, a tenth are malformed.

    python experiments/bench_rewards.py [--n 20000] [--repeats 5]

Prints completions/s for the mix and each reward alone, best of ``repeats`` (single process, so one core).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rewards import RewardMix
from rlad.config import paper_rewards
from rlad.mask_text import encode
from rlad.sample import VerifiableSample

THINK = (
    "The image shows a metal nut on a dark background. Compared with a normal nut, the upper right rim has a "
    "bright irregular mark that breaks the smooth edge; its texture differs from the machined surface around "
    "it and it is not a reflection, since it keeps its shape. This is a scratch defect on the rim, so the "
    "object is anomalous and the answer follows."
)


def make_batch(n: int, grid: int, seed: int) -> tuple[list[str], list[VerifiableSample]]:
    rng = np.random.default_rng(seed)
    completions, samples = [], []
    for i in range(n):
        truth = np.zeros((grid, grid), bool)
        if rng.random() > 0.25:  # anomalous: a small blob of 1-4 rows
            r, c = rng.integers(0, grid - 4, size=2)
            for dr in range(int(rng.integers(1, 5))):
                truth[r + dr, c : c + int(rng.integers(1, 4))] = True
        pred = truth.copy()
        if rng.random() < 0.5:  # an imperfect prediction: shift by one column
            pred = np.roll(pred, 1, axis=1)
        seg = encode(pred)
        letter = "A" if rng.random() < 0.7 else "B"
        text = f"<seg>{seg}</seg><think>{THINK}</think><answer>{letter}</answer>"
        if rng.random() < 0.1:
            text = text.replace("</think>", "")  # malformed
        completions.append(text)
        samples.append(
            VerifiableSample(
                sample_id=str(i),
                question="Is there any defect in the object?",
                options={"A": "Yes.", "B": "No."},
                answer="A" if truth.any() else "B",
                mask=truth,
                anomalous=bool(truth.any()),
            )
        )
    return completions, samples


def rate(mix: RewardMix, completions: list[str], samples: list, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mix.score(completions, samples)
        best = min(best, time.perf_counter() - start)
    return len(completions) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--grid", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    completions, samples = make_batch(args.n, args.grid, seed=0)
    mean_len = sum(map(len, completions)) / len(completions)
    print(f"{args.n} completions, {args.grid}x{args.grid} grid, mean {mean_len:.0f} chars")
    print(f"{'reward':<12}{'completions/s':>16}{'us/completion':>16}")
    full = rate(RewardMix(paper_rewards()), completions, samples, args.repeats)
    for name, spec in paper_rewards().items():
        r = rate(RewardMix({name: spec}), completions, samples, args.repeats)
        print(f"{name:<12}{r:>16,.0f}{1e6 / r:>16.1f}")
    print(f"{'full mix':<12}{full:>16,.0f}{1e6 / full:>16.1f}")
    print(f"target >= 20,000/s: {'met' if full >= 20000 else 'NOT met'} ({full / 20000:.2f}x the target)")


if __name__ == "__main__":
    main()
