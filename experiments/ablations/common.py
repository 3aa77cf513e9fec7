"""What the ablation scripts share: train a variant with the ``rlad`` commands, evaluate it, write the tables.

Every variant is the demo recipe (``configs/demo.yaml`` unless ``--config``) plus a few ``key=value``
overrides, trained by ``rlad sft`` / ``rlad train`` and scored by ``rlad eval`` on the held-out split of the
same generated benchmark (images no variant trained on). Runs live under ``--out`` (default
``runs/ablations``) by variant name and are reused: a variant shared by several tables (SFT+GRPO with the
full reward mix and layout is "All" in each) trains once, and a script stopped half-way continues where it
stopped when run again.
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

from rlad.tables import detection_table, understanding_table  # noqa: E402

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


def train(variant: Variant, args: argparse.Namespace) -> Path:
    """The variant's final policy, trained now unless an earlier run left it."""
    out, base = Path(args.out), [*COMMON, *variant.overrides, *args.overrides]
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


def evaluate(variant: Variant, policy: Path, args: argparse.Namespace) -> dict:
    """``rlad eval`` of the policy on the held-out split; its overall metrics (reused when already there)."""
    out = Path(args.out) / "eval" / policy.parent.name
    if not (out / "eval.json").is_file():
        _rlad("eval", str(policy), "held-out", "--out", str(out), "--limit", str(args.limit), "--overlays", "8")
    return json.loads((out / "eval.json").read_text())["overall"]


def run_table(title: str, caption: str, variants: Sequence[Variant], args: argparse.Namespace, name: str) -> dict:
    """Train and evaluate every variant, write ``<out>/<name>.md`` and return ``{label: metrics}``."""
    rows, policies = {}, {}
    for v in variants:
        policies[v.name] = train(v, args)
        rows[v.name] = evaluate(v, policies[v.name], args)
    md = (
        f"# {title}\n\n{caption}\n\nRecipe: `{Path(args.config).name}` {' '.join(args.overrides)}; held-out "
        f"questions of the generated benchmark: {next(iter(rows.values()))['n']}.\n\n"
        f"## Understanding (accuracy, %)\n\n{understanding_table(rows, 'Variant')}\n"
        f"## Detection (%)\n\n{detection_table(rows, 'Variant')}"
    )
    path = Path(args.out) / f"{name}.md"
    path.write_text(md)
    print(md, flush=True)
    print(f"table written to {path}", flush=True)
    curves = {v.name: policies[v.name].parent / "metrics.jsonl" for v in variants if v.grpo}
    if curves:
        print(f"reward curves: {reward_curves(curves, Path(args.out) / f'{name}_rewards.png', title)}")
    return rows


def reward_curves(runs: dict[str, Path], out: Path, title: str, smooth: int = 5) -> Path:
    """A PNG of each GRPO run's mean training reward per step (total and each component), moving average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from rlad.logbook import read_metrics

    series = {name: read_metrics(path) for name, path in runs.items()}
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
