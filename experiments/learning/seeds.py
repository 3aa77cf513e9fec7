"""The demo recipe over several seeds: every held-out row as mean ± 95 % CI, and GRPO − SFT paired by seed.

    python experiments/learning/seeds.py [--config configs/demo.yaml] [--seeds 0 1 2] [--out runs/seeds] [key=value ...]

``{seed}`` in an override is replaced by each seed's number: ``train.warm_start=runs/sft-levers/x/seed-{seed}``
runs GRPO from SFT checkpoints made earlier (e.g. by ``sft_levers.py``), one per seed.

Each seed is one ``rlad train`` (SFT warm start, GRPO, held-out evaluation) with ``seed=S`` — the generated
benchmark, the held-out split, the sampling and the learner's shuffling — and ``model.tiny.seed=S`` (the tiny
model's initialisation and tokenizer corpus) when the policy is the tiny model. A seed whose run finished
(``report.json``) is not run again; a stopped sweep continues where it stopped (``rlad train resume=``).

Printed and written to ``<out>/seeds.md``:

- for the greedy rows (``warm_start``, ``grpo``) and the sampled ones (the expected reward GRPO optimises),
  every column as mean ± half-width of the 95 % Student-t interval over seeds;
- ``grpo − warm_start``: the difference paired by seed (same held-out questions, same seed), with its interval.
  Marked ``*`` where the interval excludes 0: a difference beyond the noise of these seeds;
- the training reward's rise: the mean total reward of the last fifth of GRPO steps minus the first fifth,
  per seed, against the spread of the per-step rewards (their standard deviation) in those steps.

``--heldout-all`` also scores the warm start and the final policy greedily on the *whole* held-out split
(``rlad eval CHECKPOINT held-out``: 3,315 questions for today's demo instead of the run's ``train.eval_samples``)
into ``<run>/eval-all/``, as the rows ``warm_start_all`` and ``grpo_all`` and their paired difference: each seed's
number without the luck of which questions were drawn (on the demo the intervals hardly narrowed: the spread is
between seeds; README).

``--against OTHER`` compares two recipes seed by seed: another sweep's folder (same seeds, its ``--heldout-all``
evaluations in place or run now) whose final policy's row is added as ``OTHER:grpo_all``, with ``grpo_all −
OTHER:grpo_all`` paired by seed — a lever against the demo's GRPO, not only against the SFT policy. When the two
sweeps' warm starts differ (this one trained its own: an SFT or model lever), their rows are paired too
(``OTHER:warm_start_all``, ``warm_start_all − OTHER:warm_start_all``).

Float results differ between machines: compare rows of one sweep, never across machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rlad.logbook import read_metrics  # noqa: E402
from rlad.stats import mean_ci, paired_difference  # noqa: E402
from rlad.tables import markdown_table  # noqa: E402

COLUMNS = [
    "total", "format", "detection", "answer", "image_F1", "image_F1_shared", "patch_F1", "IoU_ano", "bad_seg",
    "answer_acc", "discrimination",
]  # fmt: skip
PAIRS = [("grpo", "warm_start"), ("grpo_sampled", "warm_start_sampled"), ("grpo_all", "warm_start_all")]


def seed_overrides(seed: int, config_path: str, overrides: list[str]) -> list[str]:
    """What makes a run seed ``seed``: the config's seed and, for the tiny model, its initialisation."""
    from rlad.config import load_config

    out = [f"seed={seed}"]
    if load_config(config_path, overrides).model.path == "tiny":
        out.append(f"model.tiny.seed={seed}")
    return out


def per_seed(overrides: list[str], seed: int) -> list[str]:
    """``overrides`` with ``{seed}`` replaced by ``seed``: e.g. each seed's own SFT checkpoint as its warm start."""
    return [o.replace("{seed}", str(seed)) for o in overrides]


def run_seed(seed: int, args: argparse.Namespace) -> Path:
    run_dir = Path(args.out) / f"seed-{seed}"
    if (run_dir / "report.json").is_file() and (run_dir / "final" / "config.json").is_file():
        return run_dir
    overrides = per_seed(args.overrides, seed)
    extra = [*overrides, *seed_overrides(seed, args.config, overrides), f"train.run_dir={run_dir}"]
    resume = [f"resume={run_dir}"] if (run_dir / "config.yaml").is_file() else []
    command = [sys.executable, "-m", "rlad.cli", "train", args.config, *extra, *resume]
    print("$ " + " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return run_dir


def rescored_row(completions: Path, config: Path, paper: bool = False) -> dict:
    """The held-out row of a saved completions file, scored now under the run's own config (its reward mix), or
    the paper's mix: runs made before a column existed get it too, with the same code for every row of a table."""
    from rewards import RewardMix
    from rlad.config import load_config, paper_rewards
    from rlad.scoring import read_completions, score_records, summarise

    records = list(read_completions(completions))
    if not records:
        raise SystemExit(f"{completions} holds no completions")
    mix = paper_rewards() if paper else load_config(config).rewards
    rows = summarise(records, score_records(records, RewardMix(mix)))
    # one group (a run's held-out row), or rlad eval's groups by class with summarise's overall row among them
    return rows["all"] if len(rows) > 1 else next(iter(rows.values()))


def run_rows(run_dir: Path, paper: bool = False) -> dict[str, dict]:
    """Every held-out row of a finished ``rlad train`` run, rescored from ``<run_dir>/eval/<row>.jsonl`` under
    the run's own reward mix, or the paper's (``rlad.config.paper_rewards``)."""
    report = json.loads((run_dir / "report.json").read_text())
    config = run_dir / "config.yaml"
    return {name: rescored_row(run_dir / "eval" / f"{name}.jsonl", config, paper) for name in report["rows"]}


def heldout_all_rows(
    run_dir: Path, paper: bool = False, names: tuple[str, ...] = ("warm_start_all", "grpo_all")
) -> dict[str, dict]:
    """The warm start and the final policy of a finished run (rows ``warm_start_all`` and ``grpo_all``, or those of
    ``names``), each scored greedily on the whole held-out split of the run's own data (``rlad eval``, under the
    run's config)."""
    report = json.loads((run_dir / "report.json").read_text())
    config = run_dir / "config.yaml"
    checkpoints = {"warm_start_all": Path(report["warm_start"]), "grpo_all": run_dir / "final"}
    rows = {}
    for name in names:
        checkpoint = checkpoints[name]
        out = run_dir / "eval-all" / name
        if not (out / "eval.json").is_file():
            command = [sys.executable, "-m", "rlad.cli", "eval", str(checkpoint), "held-out", "--config", str(config),
                       "--out", str(out), "--overlays", "0"]  # fmt: skip
            print("$ " + " ".join(command[2:]), flush=True)
            subprocess.run(command, check=True, cwd=ROOT)
        rows[name] = rescored_row(out / "completions.jsonl", config, paper)
    return rows


def same_warm_start(run_dir: Path, other: Path) -> bool:
    """Whether two finished runs started GRPO from the same checkpoint (their ``report.json``)."""

    def start(run: Path) -> Path:
        return Path(json.loads((run / "report.json").read_text())["warm_start"]).resolve()

    return start(run_dir) == start(other)


def reward_rise(metrics: list[dict]) -> tuple[float, float]:
    """(mean reward of the last fifth of steps − mean of the first fifth, the larger per-step std of the two)."""
    totals = [m["reward/total"] for m in metrics]
    k = max(1, len(totals) // 5)
    first, last = totals[:k], totals[-k:]
    spread = max(statistics.stdev(first) if k > 1 else 0.0, statistics.stdev(last) if k > 1 else 0.0)
    return statistics.mean(last) - statistics.mean(first), spread


def paired_cells(after: list[dict], before: list[dict]) -> list[str]:
    """Per column, ``after − before`` paired by seed with its 95 % interval, ``*`` where it excludes 0."""
    return [paired_difference([r[c] for r in after], [r[c] for r in before]).marked() for c in COLUMNS]


def write_report(path: Path, text: str) -> None:
    """Write a sweep's Markdown to ``path`` and print it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text + f"\nwritten to {path}")


def sweep_table(
    reports: dict[int, dict], rises: dict[int, tuple[float, float]], pairs: list[tuple[str, str]] = PAIRS
) -> str:
    """The sweep as Markdown: rows over seeds with intervals, the ``pairs`` (after, before) as paired differences
    where both rows exist, the training reward's rise."""
    seeds = sorted(reports)
    names = dict.fromkeys(name for s in seeds for name in reports[s]["rows"])  # a row some seed lacks is left out
    rows_by_name = {name: [reports[s]["rows"].get(name) for s in seeds] for name in names}
    body = []
    for name, rows in rows_by_name.items():
        if rows and all(rows):
            body.append([name, str(int(rows[0]["n"])), *(str(mean_ci([r[c] for r in rows])) for c in COLUMNS)])
    for after, before in pairs:
        if after in rows_by_name and before in rows_by_name and all(rows_by_name[after] + rows_by_name[before]):
            body.append([f"{after} − {before}", "paired", *paired_cells(rows_by_name[after], rows_by_name[before])])
    text = markdown_table(["row", "n", *COLUMNS], body)
    rise = mean_ci([rises[s][0] for s in seeds])
    each = ", ".join(f"seed {s}: {rises[s][0]:+.3f} (step spread {rises[s][1]:.3f})" for s in seeds)
    text += (f"\nTraining reward, last fifth of GRPO steps − first fifth: {rise.marked()}"
             f" ({each}).\n")  # fmt: skip
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/demo.yaml"), help="the recipe every seed runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="at least 3 for an interval worth reading")
    p.add_argument("--out", default=str(ROOT / "runs/seeds"), help="one run folder per seed, and seeds.md")
    p.add_argument("--paper-rewards", action="store_true", help="score every held-out row under the paper's "
                   "reward mix, not each run's own (which may pay `found` or weigh rewards otherwise)")  # fmt: skip
    p.add_argument("--heldout-all", action="store_true", help="also score the warm start and the final policy "
                   "greedily on the whole held-out split (rows warm_start_all, grpo_all)")  # fmt: skip
    p.add_argument("--against", help="another sweep's folder (same seeds and warm starts): its final policies' "
                   "whole held-out rows, and this sweep's paired against them (needs --heldout-all)")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="key=value overrides for every seed, e.g. grpo.steps=80; "
                   "{seed} is replaced by the seed (train.warm_start=runs/sft-levers/x/seed-{seed})")  # fmt: skip
    args = p.parse_args()
    if len(args.seeds) < 2:
        p.error("an interval needs at least 2 seeds (3 or more to be worth reading)")
    if args.against and not args.heldout_all:
        p.error("--against compares the whole held-out rows: add --heldout-all")
    missing = [f"seed-{s}" for s in args.seeds if args.against and not (Path(args.against) / f"seed-{s}" /
               "report.json").is_file()]  # fmt: skip
    if missing:  # before any run starts: a finished sweep of the same seeds is what --against pairs with
        p.error(f"--against {args.against} holds no finished run for {', '.join(missing)} (no report.json)")
    reports, rises = {}, {}
    for seed in args.seeds:
        run_dir = run_seed(seed, args)
        reports[seed] = {"rows": run_rows(run_dir, args.paper_rewards)}
        if args.heldout_all:
            reports[seed]["rows"] |= heldout_all_rows(run_dir, args.paper_rewards)
        if args.against:
            theirs = Path(args.against) / f"seed-{seed}"
            names = ("grpo_all",) if same_warm_start(run_dir, theirs) else ("warm_start_all", "grpo_all")
            for name, row in heldout_all_rows(theirs, args.paper_rewards, names).items():
                reports[seed]["rows"][f"{Path(args.against).name}:{name}"] = row
        rises[seed] = reward_rise(read_metrics(run_dir / "metrics.jsonl"))
    scored = ["--paper-rewards"] * args.paper_rewards + ["--heldout-all"] * args.heldout_all
    scored += ["--against", args.against] if args.against else []
    command = " ".join(["python experiments/learning/seeds.py", "--seeds", *map(str, args.seeds), *scored,
                        *args.overrides])  # fmt: skip
    mix = "; rows scored under the paper's reward mix" if args.paper_rewards else ""
    text = (f"# The demo recipe over {len(args.seeds)} seeds\n\n`{command}` (config {args.config}{mix}); mean ± 95 % "
            "CI over seeds; `*`: the interval excludes 0.\n\n")  # fmt: skip
    other = (
        [(name, f"{Path(args.against).name}:{name}") for name in ("warm_start_all", "grpo_all")] if args.against else []
    )
    text += sweep_table(reports, rises, PAIRS + other)
    write_report(Path(args.out) / "seeds.md", text)


if __name__ == "__main__":
    main()
