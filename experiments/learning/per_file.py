"""One table over ``completions.jsonl`` files: a measure per file and its mean ± 95 % CI over them.

The shape of ``where_ceiling.py`` and ``mask_sizes.py``: each reads files written by ``rlad eval`` (one per seed,
say), computes ``measure(records) -> {"n": ..., column: value}`` per file, and prints a row per file plus the
mean row. A file that cannot be read or parsed stops the script naming the file (and the line).
``--against OTHER.jsonl ...`` (as many files, in the same order: the same seeds under another recipe) adds the
other files' mean row and the difference paired by position, ``*`` where its interval excludes 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rlad.scoring import CompletionFileError, ScoredRecord, read_completions  # noqa: E402
from rlad.stats import mean_ci, paired_difference  # noqa: E402
from rlad.tables import markdown_table  # noqa: E402

Measure = Callable[[Iterable[ScoredRecord]], dict[str, float]]


def measure_files(paths: Sequence[Path], measure: Measure) -> list[dict[str, float]]:
    """``measure`` of each file; a file that cannot be read or parsed stops the script naming it."""
    results = []
    for path in paths:
        try:
            results.append(measure(read_completions(path)))
        except CompletionFileError as e:  # names the file and line
            raise SystemExit(str(e)) from e
        except OSError as e:
            raise SystemExit(f"{path}: cannot read ({e.strerror})") from e
        except ValueError as e:
            raise SystemExit(f"{path}: {e}") from e
    return results


def main(description: str, measure: Measure, columns: Sequence[str], argv: Sequence[str] | None = None) -> None:
    """Parse ``COMPLETIONS.jsonl ... [--against OTHER.jsonl ...]`` from the command line, print the table."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("completions", nargs="+", type=Path, help="completions.jsonl files written by rlad eval")
    p.add_argument(
        "--against",
        nargs="+",
        type=Path,
        default=[],
        help="as many files of another recipe, in the same (seed) order: adds the paired difference",
    )
    args = p.parse_args(argv)
    if args.against and len(args.against) != len(args.completions):
        p.error(f"--against needs one file per completions file ({len(args.completions)}), got {len(args.against)}")
    results = measure_files(args.completions, measure)
    rows = zip(args.completions, results, strict=True)
    body = [[str(path), str(r["n"]), *(f"{r[c]:.3f}" for c in columns)] for path, r in rows]
    if len(results) > 1:
        body.append(["mean ± 95 % CI", "", *(str(mean_ci([r[c] for r in results])) for c in columns)])
    if args.against:
        others = measure_files(args.against, measure)
        body.append(["--against: mean ± 95 % CI", "", *(str(mean_ci([r[c] for r in others])) for c in columns)])
        diffs = [paired_difference([r[c] for r in results], [o[c] for o in others]) for c in columns]
        body.append(["− --against, paired", "", *(d.marked() for d in diffs)])
    print(markdown_table(["completions", "n", *columns], body))
