"""The first half of ``rlad demo`` (the main job; ``rlad.cli`` then runs ``rlad train``): the benchmark and
its scoring checks, in seconds.

It writes the generated
anomaly benchmark (8 classes, 6 defect types, MVTec-AD layout + mmad.json), draws a contact sheet of it,
reads it back through the MMAD reader at the config's grid, and writes completions for every question as
policies of known quality would: the grounded SFT target (what the warm-start trains on), the same with
the mask shifted by one patch, with half the defect, without <seg>, one that always says "normal", and
junk. It stores them as a completions JSONL and scores that file with the config's reward mix and the
evaluation metrics, exactly as ``rlad score`` does, then checks what must hold of any sound mix: the SFT
target earns the most, on the total and on every reward; junk earns nothing; no <seg>, no detection reward.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rewards import RewardMix
from rlad.completion import parse_completion
from rlad.config import Config
from rlad.data.questions import sft_target
from rlad.data.readers import load_pixel_mask, read_mmad, read_mvtec
from rlad.data.show import contact_sheet
from rlad.data.synth import SynthSpec, synthesize
from rlad.mask_text import encode
from rlad.sample import VerifiableSample
from rlad.scoring import print_summary, read_completions, score_records, summarise


def _policies(sample: VerifiableSample, rng: np.random.Generator) -> dict[str, str]:
    target = sft_target(sample)
    seg = parse_completion(target).seg
    truth = sample.mask
    half = truth.copy()
    rows = np.flatnonzero(truth.any(axis=1))
    half[rows[: (len(rows) + 1) // 2]] = False
    normal_letter = next((k for k, v in sample.options.items() if v == "No."), "A")  # no looking at the answer
    wrong = rng.choice([k for k in sample.options if k != sample.answer] or [sample.answer])
    return {
        "1 sft-target": target,
        "2 shifted": target.replace(f"<seg>{seg}</seg>", f"<seg>{encode(np.roll(truth, 1, axis=1))}</seg>"),
        "3 half": target.replace(f"<seg>{seg}</seg>", f"<seg>{encode(half)}</seg>"),
        "4 no-seg": target.replace(f"<seg>{seg}</seg>", ""),
        "5 says-normal": f"<seg></seg><think>Nothing looks wrong.</think><answer>{normal_letter}</answer>",
        "6 junk": f"I think the answer is {wrong} {rng.integers(100)}",
    }


def run_demo(out: Path, config: Config, images_per_class: int = 24) -> dict[str, dict[str, float]]:
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    spec = SynthSpec(
        images_per_class=images_per_class,
        references_per_class=2,
        size=256,
        seed=config.seed,
        visibility=config.data.synth.visibility,
    )
    synthesize(spec, data)
    grid = config.mask.grid
    images, _ = read_mvtec(data, grid, config.mask.cover, config.mask.tau)
    pick = [s for s in images if s.anomalous][:20] + [s for s in images if not s.anomalous][:4]
    sheet = contact_sheet(pick, [load_pixel_mask(s) for s in pick], out / "contact_sheet.png")
    samples, _ = read_mmad(data / "mmad.json", grid=grid, cover=config.mask.cover, tau=config.mask.tau)
    print(f"generated benchmark: {len(images)} test images, {len(samples)} questions in {data}; contact sheet {sheet}")

    rng = np.random.default_rng(config.seed)
    path = out / "completions.jsonl"
    with path.open("w") as f:
        for sample in samples:
            for policy, text in _policies(sample, rng).items():
                f.write(json.dumps({"completion": text, "sample": sample.to_record(), "group": policy}) + "\n")
    records = list(read_completions(path))
    scores = score_records(records, RewardMix(config.rewards))
    summary = summarise(records, scores)
    print(f"{len(records)} completions of 6 simulated policies ({grid}x{grid} grid): {path}")
    print_summary(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    others = [g for g in summary if g not in ("1 sft-target", "all")]
    best = summary["1 sft-target"]
    checks = {
        "the SFT target earns the most on the total and on each reward": all(
            best[k] > summary[g][k] or best[k] == summary[g][k] == 1.0
            for g in others
            for k in best
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
