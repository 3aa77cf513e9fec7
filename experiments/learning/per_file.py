"""One table over ``completions.jsonl`` files: a measure per file and its mean ± 95 % CI over them.

The shape of ``where_ceiling.py`` and ``mask_sizes.py``: each reads files written by ``rlad eval`` (one per seed,
say), computes ``measure(records) -> {"n": ..., column: value}`` per file, and prints a row per file plus the
mean row. A file that cannot be read or parsed stops the script naming the file (and the line).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rlad.scoring import CompletionFileError, ScoredRecord, read_completions  # noqa: E402
from rlad.stats import mean_ci  # noqa: E402
from rlad.tables import markdown_table  # noqa: E402

Measure = Callable[[Iterable[ScoredRecord]], dict[str, float]]


def main(description: str, measure: Measure, columns: Sequence[str], argv: Sequence[str] | None = None) -> None:
    """Parse ``COMPLETIONS.jsonl ...`` from the command line, print the table."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("completions", nargs="+", type=Path, help="completions.jsonl files written by rlad eval")
    args = p.parse_args(argv)
    results = []
    for path in args.completions:
        try:
            results.append(measure(read_completions(path)))
        except CompletionFileError as e:  # names the file and line
            raise SystemExit(str(e)) from e
        except OSError as e:
            raise SystemExit(f"{path}: cannot read ({e.strerror})") from e
        except ValueError as e:
            raise SystemExit(f"{path}: {e}") from e
    pairs = zip(args.completions, results, strict=True)
    body = [[str(path), str(r["n"]), *(f"{r[c]:.3f}" for c in columns)] for path, r in pairs]
    if len(results) > 1:
        body.append(["mean ± 95 % CI", "", *(str(mean_ci([r[c] for r in results])) for c in columns)])
    print(markdown_table(["completions", "n", *columns], body))
