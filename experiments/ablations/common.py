"""What the ablation scripts share: train a variant with the ``rlad`` commands, evaluate it, write the tables.

Every variant is the demo recipe (``configs/demo.yaml`` unless ``--config``) plus a few ``key=value``
overrides, trained by ``rlad sft`` / ``rlad train`` and scored by ``rlad eval`` on the held-out split of the
same generated benchmark (images no variant trained on). Runs live under ``--out`` (default
``runs/ablations``), one folder per seed (``seed-S``), by variant name, and are reused: a variant shared by
several tables (SFT+GRPO with the full reward mix and layout is "All" in each) trains once, and a script
stopped half-way continues where it stopped when run again. A run or an evaluation already in place is used as
it is, so earlier runs of the same recipe and seed can be linked in (``seed-S/sft-base``, ``seed-S/grpo-sft-base``,
``seed-S/eval/<run>``) instead of trained again.

``--seeds 0 1 2`` (the default) runs every variant at each seed — ``seed=S`` and, for the tiny model,
``model.tiny.seed=S``, as ``experiments/learning/seeds.py`` does — and the tables give each cell as the mean ±
the half-width of its 95 % Student-t interval over the seeds, then every variant's difference from the last
one (the full recipe) paired by seed, ``*`` where its interval excludes 0: an ordering beyond the noise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rlad.logbook import read_metrics  # noqa: E402
from rlad.stats import mean_ci, paired_difference  # noqa: E402
from rlad.tables import detection_table, markdown_table, understanding_table  # noqa: E402

sys.path.insert(0, str(ROOT / "experiments" / "learning"))
from seeds import reward_rise, seed_overrides  # noqa: E402

# Quiet, fixed-size runs: the scripts evaluate every policy themselves, on the whole held-out split.
COMMON = ["sft.eval_samples=0", "train.eval_samples=0"]


@dataclass(frozen=True)
class Variant:
    name: str  # row label in the table
    sft: bool = True
    grpo: bool = True
    overrides: tuple[str, ...] = field(default_factory=tuple)  # applied to both stages


def parse_args(doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/demo.yaml"), help="the recipe every variant starts from")
    p.add_argument("--out", default=str(ROOT / "runs/ablations"), help="runs, evaluations and tables go here")
    p.add_argument("--limit", type=int, default=0, help="held-out questions scored per variant (0: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="every variant runs at each seed; "
                   "intervals need 2 or more (3 to be worth reading)")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="key=value overrides for every variant, e.g. grpo.steps=20")
    return p.parse_args()


def _rlad(*args: str) -> None:
    exe = shutil.which("rlad", path=str(Path(sys.executable).parent)) or shutil.which("rlad")
    command = [exe, *args] if exe else [sys.executable, "-m", "rlad.cli", *args]
    print("$ " + " ".join(command[:1] + [a if " " not in a else repr(a) for a in command[1:]]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def _slug(overrides: Sequence[str]) -> str:
    """A folder name for a set of overrides, e.g. ``rewards.answer.weight=0`` -> ``answer_weight=0``."""
    text = "-".join(o.removeprefix("rewards.").removeprefix("output.").replace(".", "_") for o in overrides) or "base"
    return "".join(ch if ch.isalnum() or ch in "-_=" else "_" for ch in text)


def train(variant: Variant, args: argparse.Namespace, seed: int) -> Path:
    """The variant's final policy at ``seed``, trained now unless an earlier run left it."""
    out = Path(args.out) / f"seed-{seed}"
    base = [*COMMON, *variant.overrides, *args.overrides]
    base += seed_overrides(seed, args.config, base)
    warm = "base"  # GRPO alone starts from the model itself
    if variant.sft:
        # The reward mix is GRPO's business: variants that differ only in it share one SFT run.
        layout = [o for o in variant.overrides if not o.startswith("rewards.")]
        sft_dir = out / f"sft-{_slug(layout)}"
        if not (sft_dir / "report.json").is_file():  # the mix rides along: a layout without <seg> needs it valid
            _rlad("sft", args.config, *base, f"sft.output_dir={sft_dir}")
        warm = str(sft_dir / "final")
        if not variant.grpo:
            return sft_dir / "final"
    run_dir = out / f"grpo-{'sft' if variant.sft else 'base'}-{_slug(variant.overrides)}"
    if not (run_dir / "final" / "config.json").is_file():
        resume = [f"resume={run_dir}"] if (run_dir / "config.yaml").is_file() else []
        _rlad("train", args.config, *base, f"train.run_dir={run_dir}", f"train.warm_start={warm}", *resume)
    return run_dir / "final"


def evaluate(policy: Path, args: argparse.Namespace, seed: int) -> dict:
    """``rlad eval`` of the policy on its held-out split; its overall metrics (reused when already there)."""
    out = Path(args.out) / f"seed-{seed}" / "eval" / policy.parent.name
    if not (out / "eval.json").is_file():
        limit = ["--limit", str(args.limit)] if args.limit else []  # rlad eval refuses 0; left out, it scores all
        _rlad("eval", str(policy), "held-out", "--out", str(out), *limit, "--overlays", "8")
    return json.loads((out / "eval.json").read_text())["overall"]


def over_seeds(per_seed: Sequence[dict]) -> dict:
    """One variant's ``rlad eval`` metrics at each seed -> the same shape with every number an ``Interval`` over
    the seeds (``rlad.tables`` prints those as mean ± half-width); ``n`` stays a count (a range if seeds differ)."""
    first = per_seed[0]
    if isinstance(first, dict):
        return {k: over_seeds([m[k] for m in per_seed]) if k != "n" else _count([m[k] for m in per_seed])
                for k in first if all(isinstance(m, dict) and k in m for m in per_seed)}  # fmt: skip
    if first is None:  # a layout without <seg> has no detection metrics
        return None
    return mean_ci([float(m) for m in per_seed])


def _count(values: Sequence[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else f"{min(values)}-{max(values)}"


# the paired-difference table: the headline of each table, in points
DIFFERENCES = {
    "Avg.": lambda m: m["mmad_mean"],
    "Anom Dis.": lambda m: m["subtasks"].get("Anomaly Discrimination"),
    "Def Loc.": lambda m: m["subtasks"].get("Defect Localization"),
    "Format": lambda m: m["format_rate"],
    "Pixel F1": lambda m: (m.get("detection") or {}).get("pixel_f1"),
    "Image F1": lambda m: (m.get("detection") or {}).get("image_f1"),
    "IoU_ano": lambda m: (m.get("detection") or {}).get("iou_ano"),
    "Bad <seg>": lambda m: (m.get("detection") or {}).get("unparseable_rate"),
}


def difference_table(per_seed: dict[str, list[dict]], reference: str) -> str:
    """Every variant minus ``reference``, paired by seed, in percentage points; ``*`` where the 95 % interval
    of the mean difference excludes 0; ``—`` where either side has no such number (a layout without <seg>)."""
    rows = []
    for name, metrics in per_seed.items():
        if name == reference:
            continue
        cells = []
        for pick in DIFFERENCES.values():
            a, b = [pick(m) for m in metrics], [pick(m) for m in per_seed[reference]]
            if None in a or None in b:
                cells.append("—")
                continue
            d = paired_difference([100 * x for x in a], [100 * x for x in b])
            cells.append(f"{d.mean:+.1f} ± {d.half_width:.1f}{' *' if d.excludes_zero() else ''}")
        rows.append([f"{name} − {reference}", *cells])
    return markdown_table(["", *DIFFERENCES], rows)


def run_table(title: str, caption: str, variants: Sequence[Variant], args: argparse.Namespace, name: str) -> dict:
    """Train and evaluate every variant at every seed, write ``<out>/<name>.md``; returns ``{label: metrics}``
    with each number an ``Interval`` over the seeds."""
    per_seed: dict[str, list[dict]] = {v.name: [] for v in variants}
    policies: dict[str, list[Path]] = {v.name: [] for v in variants}
    for seed in args.seeds:
        for v in variants:
            policies[v.name].append(train(v, args, seed))
            per_seed[v.name].append(evaluate(policies[v.name][-1], args, seed))
    rows = {label: over_seeds(metrics) for label, metrics in per_seed.items()}
    seeds = " ".join(map(str, args.seeds))
    md = (
        f"# {title}\n\n{caption}\n\nRecipe: `{Path(args.config).name}` {' '.join(args.overrides)}; seeds {seeds} "
        f"(mean ± 95 % CI over seeds); held-out questions of the generated benchmark per seed: "
        f"{next(iter(rows.values()))['n']}.\n\n"
        f"## Understanding (accuracy, %)\n\n{understanding_table(rows, 'Variant')}\n"
        f"## Detection (%)\n\n{detection_table(rows, 'Variant')}"
    )
    if len(args.seeds) > 1:
        reference = variants[-1].name
        md += (f"\n## Each variant − {reference}, paired by seed (points; `*`: the 95 % interval excludes 0)\n\n"
               + difference_table(per_seed, reference))  # fmt: skip
    rises = {v.name: [reward_rise(read_metrics(p.parent / "metrics.jsonl"))[0] for p in policies[v.name]]
             for v in variants if v.grpo}  # fmt: skip
    if rises:
        md += (
            "\nTraining reward, mean of the last fifth of GRPO steps − the first fifth (its own mix): "
            + "; ".join(
                f"{label} {mean_ci(r)}{' *' if len(r) > 1 and mean_ci(r).excludes_zero() else ''}"
                for label, r in rises.items()
            )
            + ".\n"
        )
    path = Path(args.out) / f"{name}.md"
    path.write_text(md)
    print(md, flush=True)
    print(f"table written to {path}", flush=True)
    curves = {v.name: [p.parent / "metrics.jsonl" for p in policies[v.name]] for v in variants if v.grpo}
    if curves:
        print(f"reward curves: {reward_curves(curves, Path(args.out) / f'{name}_rewards.png', title)}")
    return rows


def reward_curves(runs: dict[str, Sequence[Path]], out: Path, title: str, smooth: int = 5) -> Path:
    """A PNG of each variant's training reward per step (total and each component), the mean over its runs (one
    per seed) at each step, as a moving average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    series = {name: _mean_by_step([read_metrics(p) for p in paths]) for name, paths in runs.items()}
    keys = sorted({k for rows in series.values() for r in rows for k in r if k.startswith("reward/")} - {
        "reward/std_in_group"})  # fmt: skip
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for name, rows in series.items():
            steps = [r["step"] for r in rows if key in r]
            values = np.array([r[key] for r in rows if key in r])
            if len(values) >= smooth:
                values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
                steps = steps[smooth - 1 :]
            ax.plot(steps, values, label=name)
        ax.set_title(key)
        ax.set_xlabel("GRPO step")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{title}: training reward ({smooth}-step moving average)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _mean_by_step(runs: Sequence[list[dict]]) -> list[dict]:
    """Metrics rows of several runs -> one row per step holding the mean of each key over the runs that logged it."""
    by_step: dict[int, dict[str, list[float]]] = {}
    for rows in runs:
        for r in rows:
            if "step" in r:
                for k, v in r.items():
                    if isinstance(v, int | float):
                        by_step.setdefault(r["step"], {}).setdefault(k, []).append(v)
    return [{k: sum(v) / len(v) for k, v in by_step[step].items()} | {"step": step} for step in sorted(by_step)]
