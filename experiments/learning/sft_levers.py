"""SFT levers over seeds: the demo's SFT stage alone, with and without each lever, paired by seed.

    python experiments/learning/sft_levers.py \
        --lever 'grounded=sft.grounding_position_weight=1 sft.grounding_mask_weight=1' \
        [--seeds 0 1 2] [--out runs/sft-levers] [--paper-rewards] [key=value ...]

Each seed runs ``rlad sft`` on the recipe (``--config``, the demo's by default) with ``seed=S`` and, for the
tiny model, ``model.tiny.seed=S`` — once as it is (``baseline``) and once per ``--lever NAME=OVERRIDES``. A run
whose ``report.json`` exists is not run again. The held-out row after SFT (greedy, ``sft.eval_samples``
questions, the same questions for every lever of a seed) is printed per lever as mean ± 95 % CI over seeds, and
each lever − baseline paired by seed (``*``: the interval excludes 0). Written to ``<out>/levers.md`` too.

Compare rows of one sweep, on one machine: float results differ between machines.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from seeds import COLUMNS, paired_cells, rescored_row, seed_overrides, write_report  # noqa: E402

from rlad.stats import mean_ci  # noqa: E402
from rlad.tables import markdown_table  # noqa: E402


def parse_lever(text: str) -> tuple[str, list[str]]:
    """``'name=key=value key=value'`` -> (name, overrides)."""
    name, _, overrides = text.partition("=")
    if not name or not overrides or "=" not in overrides:
        raise SystemExit(f"--lever {text!r}: expected NAME=key=value [key=value ...]")
    return name, overrides.split()


def run_sft(name: str, seed: int, overrides: list[str], args: argparse.Namespace) -> dict:
    out = Path(args.out) / name / f"seed-{seed}"
    report = out / "report.json"
    if not report.is_file():
        everything = [*args.overrides, *overrides]
        words = [*everything, *seed_overrides(seed, args.config, everything), f"sft.output_dir={out}"]
        command = [sys.executable, "-m", "rlad.cli", "sft", args.config, *words]
        print("$ " + " ".join(command[2:]), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    # the columns of today's code, old runs too; under the paper's mix when levers were trained under others
    row = rescored_row(out / "eval_after.jsonl", out / "rlad.yaml", args.paper_rewards)
    print(f"  {name} seed {seed}: " + "  ".join(f"{c} {row[c]:.3f}" for c in COLUMNS), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/demo.yaml"), help="the recipe every run starts from")
    p.add_argument("--lever", action="append", required=True, help="NAME=key=value [key=value ...]; repeatable")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="at least 3 for an interval worth reading")
    p.add_argument("--out", default=str(ROOT / "runs/sft-levers"), help="<out>/<lever>/seed-S per run, and levers.md")
    p.add_argument("--paper-rewards", action="store_true", help="score every row under the paper's reward mix, "
                   "not each run's own (runs made under configs with different mixes stay comparable)")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = p.parse_args()
    if len(args.seeds) < 2:
        p.error("an interval needs at least 2 seeds (3 or more to be worth reading)")
    levers = [("baseline", []), *map(parse_lever, args.lever)]
    rows: dict[str, list[dict]] = {name: [] for name, _ in levers}
    for seed in args.seeds:  # seed-major: a stopped sweep has whole seeds to pair
        for name, overrides in levers:
            rows[name].append(run_sft(name, seed, overrides, args))
    body = [[name, *(str(mean_ci([r[c] for r in rs])) for c in COLUMNS)] for name, rs in rows.items()]
    for name, _ in levers[1:]:
        body.append([f"{name} − baseline", *paired_cells(rows[name], rows["baseline"])])
    command = " ".join(["python experiments/learning/sft_levers.py", *(f"--lever '{x}'" for x in args.lever),
                        "--seeds", *map(str, args.seeds), *["--paper-rewards"] * args.paper_rewards,
                        *args.overrides])  # fmt: skip
    text = (f"# SFT levers over {len(args.seeds)} seeds\n\n`{command}` (config {args.config}); held-out greedy "
            "after SFT, mean ± 95 % CI over seeds; `*`: the paired interval excludes 0.\n\n"
            + "\n".join(f"- {name}: {' '.join(o) or 'the recipe as it is'}" for name, o in levers) + "\n\n"
            + markdown_table(["lever", *COLUMNS], body))  # fmt: skip
    write_report(Path(args.out) / "levers.md", text)


if __name__ == "__main__":
    main()
