"""A GRPO run's warm start and its final policy, greedy, on the questions the run trained on: does GRPO move the
greedy policy where it learned, and does that carry to questions it never saw?

    python experiments/learning/trained_questions.py RUN [RUN ...]

For each run folder of ``rlad train``: the questions its replay store holds (every prompt GRPO sampled, once each,
in the order it first sampled them), answered greedily by the run's
``train.warm_start`` and by its ``final`` policy, written to ``RUN/eval-trained/warm_start.jsonl`` and
``grpo.jsonl`` (the files ``rlad eval`` writes; reused when present). Then ``flips.py``'s table over the runs:
where the two policies' answers differ and which way. Put it beside the same table on the held-out questions
(``flips.py --before .../warm_start_all/completions.jsonl --after .../grpo_all/completions.jsonl``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import flips  # noqa: E402

from rewards import RewardMix  # noqa: E402
from rlad.config import load_config  # noqa: E402
from rlad.evaluate import generate_all, write_completions  # noqa: E402
from rlad.replay import ReplayStore  # noqa: E402
from rlad.sample import VerifiableSample  # noqa: E402
from rlad.scoring import ScoredRecord, score_records  # noqa: E402
from rollout.worker import make_engine  # noqa: E402


def trained_samples(run: Path) -> list[VerifiableSample]:
    """Every question the run's replay store holds, once, in the order GRPO first sampled it."""
    seen: dict[str, VerifiableSample] = {}
    for group in ReplayStore(run / "replay").groups():
        seen.setdefault(group.sample.sample_id, group.sample)
    if not seen:
        raise SystemExit(f"{run}/replay: no stored groups (did the run take a step?)")
    return list(seen.values())


def answer(run: Path) -> tuple[Path, Path]:
    """Write (or reuse) the warm start's and the final policy's greedy completions of the trained questions."""
    config = load_config(run / "config.yaml")
    warm = config.train.warm_start
    if warm in ("", "base") or not Path(warm).exists():
        raise SystemExit(f"{run}/config.yaml: train.warm_start={warm!r} is not a checkpoint folder here")
    out = run / "eval-trained"
    files = (out / "warm_start.jsonl", out / "grpo.jsonl")
    samples: list[VerifiableSample] = []
    for checkpoint, path in zip((warm, run / "final"), files, strict=True):
        if path.is_file():
            continue
        samples = samples or trained_samples(run)
        engine = make_engine(config, str(checkpoint), standalone=True)
        completions = generate_all(engine, samples, config.rollout.batch_size, show_progress=True)
        records = [ScoredRecord(c.text, s, "trained") for c, s in zip(completions, samples, strict=True)]
        out.mkdir(exist_ok=True)
        part = path.with_suffix(".part")  # a stopped run leaves no half file to be reused
        write_completions(records, score_records(records, RewardMix(config.rewards)), part)
        part.replace(path)
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders of rlad train (config.yaml, replay/, final/)")
    args = p.parse_args()
    pairs = [answer(run) for run in args.runs]
    flips.main(["--before", *(str(b) for b, _ in pairs), "--after", *(str(a) for _, a in pairs)])


if __name__ == "__main__":
    main()
