"""Scoring a policy: generate on a dataset, verify with the reward mix, compute the papers' metrics.

- :func:`evaluate_policy`: greedy completions for held-out samples with a model in memory (the SFT stage's
  before/after check); the summary row of ``rlad.scoring.summarise``.
- :func:`run_eval` (``rlad eval CHECKPOINT DATA``): any checkpoint on any dataset the readers load, through the
  rollout engine interface (so the backend that serves rollout serves evaluation), with the full metrics of
  :func:`evaluation_metrics` overall and per class, written as ``eval.json``, ``eval.md`` (tables shaped like
  the paper's), ``completions.jsonl`` (re-scorable with ``rlad score``) and PNG overlays of hits and misses.

Detection is scored per question: every completion's ``<seg>`` is a prediction for its image, so an image asked
k questions counts k times (MVTec-AD, VisA and MVTec-LOCO ask one question per image, as the paper's tables do).
Pixel-level figures compare the patch mask upsampled to the ground-truth mask's own resolution.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rewards import RewardMix
from rlad import mask_text
from rlad.completion import parse_completion
from rlad.config import Config
from rlad.console import progress
from rlad.inputs import InputBuilder
from rlad.metrics import AnswerRecord, DetectionMetrics, mmad_accuracy
from rlad.run_dir import write_text_atomic
from rlad.sample import VerifiableSample
from rlad.scoring import ScoredRecord, score_records, score_records_on_ray, summarise
from rollout.transformers_engine import TransformersEngine

__all__ = [
    "evaluate_policy",
    "evaluation_metrics",
    "evaluation_report",
    "generate_all",
    "run_eval",
    "save_and_summarise",
]


def evaluate_policy(
    model: Any,
    builder: InputBuilder,
    samples: Sequence[VerifiableSample],
    config: Config,
    group: str,
    out: str | Path | None = None,
    batch_size: int = 16,
) -> dict[str, float]:
    """Greedy completions for ``samples``; returns the summary row (mean rewards, F1s, answer accuracy)."""
    was_training = model.training
    model.eval()
    engine = TransformersEngine(model, builder, config.generation, batch_size=batch_size)
    completions = engine.generate(samples, n=1, greedy=True)
    model.train(was_training)
    records = [ScoredRecord(c.text, s, group) for c, s in zip(completions, samples, strict=True)]
    return save_and_summarise(records, score_records(records, RewardMix(config.rewards)), group, out)


def save_and_summarise(
    records: Sequence[ScoredRecord], scores: Sequence[dict[str, float]], group: str, out: str | Path | None
) -> dict[str, float]:
    """Write the scored completions as a completions JSONL (re-scorable with ``rlad score``); the summary row."""
    if out is not None:
        write_completions(records, scores, out)
    return summarise(list(records), list(scores))[group]


def write_completions(records: Sequence[ScoredRecord], scores: Sequence[dict[str, float]], out: str | Path) -> None:
    with Path(out).open("w", encoding="utf-8") as f:
        for r, s in zip(records, scores, strict=True):
            f.write(json.dumps({"completion": r.completion, "sample": r.sample.to_record(), "group": r.group,
                                "scores": s}) + "\n")  # fmt: skip


# -- the full metrics -----------------------------------------------------------------------------------------


class PixelTruth:
    """Full-resolution ground-truth masks (a normal image's: all False at its size). Only the last few images
    are kept: a dataset's questions about one image come together, and real masks are megapixels each."""

    def __init__(self, keep: int = 8) -> None:
        self._cache: dict[str, np.ndarray] = {}
        self._keep = keep

    def __call__(self, sample: VerifiableSample) -> np.ndarray:
        from PIL import Image

        from rlad.data.readers import load_pixel_mask

        if sample.image not in self._cache:
            mask = load_pixel_mask(sample) if sample.image else None
            if mask is None:
                if sample.image and Path(sample.image).is_file():
                    with Image.open(sample.image) as img:
                        mask = np.zeros((img.height, img.width), bool)
                else:  # no image on disk (a stored record): the patch mask is the finest truth there is
                    mask = np.asarray(sample.mask, bool)
            if len(self._cache) >= self._keep:
                self._cache.pop(next(iter(self._cache)))
            self._cache[sample.image] = mask
        return self._cache[sample.image]


@dataclass
class _Judged:
    """One completion, judged once: what every group it belongs to sums."""

    answer: AnswerRecord
    well_formed: bool
    pixel: DetectionMetrics | None  # None when the layout has no <seg>
    patch: DetectionMetrics | None


def _judge(records: Sequence[ScoredRecord], blocks: Sequence[str]) -> list[_Judged]:
    truth, out = PixelTruth(), []
    for r in records:
        parsed = parse_completion(r.completion)
        answer = AnswerRecord(r.sample.subtask or "all", parsed.answer_letter, r.sample.answer, r.sample.anomalous)
        pixel = patch = None
        if "seg" in blocks:
            pred = mask_text.decode_or_none(parsed.seg, r.sample.grid)
            pixel, patch = DetectionMetrics(), DetectionMetrics()
            pixel.add(pred, truth(r.sample), r.sample.anomalous)
            patch.add(pred, r.sample.mask, r.sample.anomalous)
        out.append(_Judged(answer, parsed.is_well_formed(tuple(blocks)), pixel, patch))
    return out


def _aggregate(judged: Sequence[_Judged], scores: Sequence[dict[str, float]]) -> dict[str, Any]:
    n = len(judged)
    mmad = mmad_accuracy(j.answer for j in judged)
    out: dict[str, Any] = {
        "n": n,
        "subtasks": {k: v["accuracy"] for k, v in mmad.items() if k != "mean"},
        "mmad_mean": mmad["mean"]["accuracy"] if mmad else float("nan"),
        "format_rate": float(np.mean([j.well_formed for j in judged])) if n else float("nan"),
        "answer_unparseable_rate": float(np.mean([j.answer.predicted is None for j in judged])) if n else float("nan"),
        "rewards": {k: float(np.mean([s[k] for s in scores])) for k in (scores[0] if scores else {})},
        "detection": None,
    }
    if judged and judged[0].pixel is not None:
        pixel, patch = DetectionMetrics(), DetectionMetrics()
        for j in judged:
            pixel += j.pixel
            patch += j.patch
        out["detection"] = pixel.summary() | {"patch_f1": patch.summary()["pixel_f1"]}
    return out


def evaluation_metrics(
    records: Sequence[ScoredRecord], scores: Sequence[dict[str, float]], blocks: Sequence[str]
) -> dict[str, Any]:
    """The papers' figures for one set of scored completions: MMAD subtask accuracies and their mean, the
    format rate (layout ``blocks``), the unparseable-answer rate, reward means and — when the layout has a
    ``<seg>`` block — image-level, pixel-level and patch-level detection with IoU_ano and IoU_nor."""
    return _aggregate(_judge(records, blocks), scores)


def evaluation_report(
    records: Sequence[ScoredRecord], scores: Sequence[dict[str, float]], blocks: Sequence[str]
) -> dict[str, Any]:
    """``{"overall": metrics, "per_class": {class: metrics}}`` (see :func:`evaluation_metrics`); each
    completion is judged once (ground-truth masks read once) and summed into its groups."""
    judged = _judge(records, blocks)
    by_class: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_class.setdefault(r.sample.class_name or "(none)", []).append(i)
    per_class = {
        name: _aggregate([judged[i] for i in idx], [scores[i] for i in idx]) for name, idx in sorted(by_class.items())
    }
    return {"overall": _aggregate(judged, scores), "per_class": per_class}


# -- rlad eval ------------------------------------------------------------------------------------------------


def generate_all(engine: Any, samples: Sequence[VerifiableSample], batch_size: int, show_progress: bool) -> list:
    """Greedy completions for every sample, ``batch_size`` at a time, with a progress bar (rate and ETA)."""
    out = []
    with progress(len(samples), "eval", "q", disable=not show_progress) as bar:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            out += engine.generate(chunk, n=1, greedy=True)
            bar.update(len(chunk))
    return out


def _is_hit(record: ScoredRecord, blocks: Sequence[str]) -> bool:
    """Right answer letter and, when the layout has <seg>, the right image-level call (empty iff normal)."""
    parsed = parse_completion(record.completion)
    if parsed.answer_letter != record.sample.answer:
        return False
    if "seg" not in blocks:
        return True
    pred = mask_text.decode_or_none(parsed.seg, record.sample.grid)
    return pred is not None and bool(pred.any()) == record.sample.anomalous


def pick_examples(
    records: Sequence[ScoredRecord], blocks: Sequence[str], k: int, seed: int
) -> list[tuple[str, ScoredRecord]]:
    """Up to ``k`` records worth showing, half of them hits and half misses (seeded choice), as (kind, record)."""
    hits = [r for r in records if _is_hit(r, blocks)]
    misses = [r for r in records if not _is_hit(r, blocks)]
    rng = random.Random(seed)
    n_miss = min(len(misses), max(k - min(len(hits), k // 2), 0))
    chosen = [("hit", r) for r in rng.sample(hits, min(len(hits), k - n_miss))]
    return chosen + [("miss", r) for r in rng.sample(misses, n_miss)]


def write_overlays(chosen: Sequence[tuple[str, ScoredRecord]], blocks: Sequence[str], folder: Path) -> list:
    """One PNG per (kind, record) of :func:`pick_examples`, in its order; their paths."""
    from rlad.data.show import prediction_overlay

    truth, paths = PixelTruth(), []
    for i, (kind, r) in enumerate(chosen):
        parsed = parse_completion(r.completion)
        pred = mask_text.decode_or_none(parsed.seg, r.sample.grid) if "seg" in blocks else None
        name = f"{kind}-{i:03d}-{r.sample.class_name or 'image'}-{r.sample.defect}.png".replace("/", "_")
        paths.append(prediction_overlay(r.sample, parsed, pred, truth(r.sample), folder / name, title=kind.upper()))
    return paths


def _finite(value: Any) -> Any:
    """``value`` with every NaN float replaced by None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def load_eval_samples(data: str, config: Config, fmt: str = "auto") -> tuple[list[VerifiableSample], str]:
    """The samples ``rlad eval`` scores, and a name for them: ``held-out`` is the held-out split of the
    config's own dataset (what a run never trained on); anything else is a dataset path for the readers."""
    from rlad.data.readers import DataError, read_dataset

    if data == "held-out":
        from rlad.data.sources import rl_samples

        held = rl_samples(config)[1]
        if not held:
            raise DataError(
                f"the config's dataset has no held-out questions (data.eval_fraction={config.data.eval_fraction})"
            )
        return held, "held-out"
    m = config.mask
    samples, report = read_dataset(data, m.grid, m.cover, m.tau, config.data.shots, config.data.on_bad, fmt)
    if report.skipped:
        print(report.summary(), flush=True)
    return samples, Path(data).stem if Path(data).is_file() else Path(data).name


def run_eval(
    checkpoint: str | Path,
    data: str,
    out: str | Path,
    config: Config,
    *,
    fmt: str = "auto",
    limit: int = 0,
    overlays: int = 12,
    show_progress: bool = True,
) -> dict[str, Any]:
    """``rlad eval``: see the module docstring. ``config`` is the checkpoint's own (its grid, image size,
    output layout, generation settings); ``limit`` > 0 scores a seeded subset of that many questions."""
    from rlad.tables import detection_table, understanding_table
    from rollout.worker import make_engine

    samples, name = load_eval_samples(data, config, fmt)
    if 0 < limit < len(samples):
        keep = set(random.Random(config.seed).sample(range(len(samples)), limit))
        samples = [s for i, s in enumerate(samples) if i in keep]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    engine = make_engine(config, str(checkpoint), standalone=True)
    loaded = time.perf_counter()
    completions = generate_all(engine, samples, config.rollout.batch_size, show_progress)
    generated = time.perf_counter()
    records = [ScoredRecord(c.text, s, s.class_name or "all") for c, s in zip(completions, samples, strict=True)]
    scores = score_records(records, RewardMix(config.rewards))
    write_completions(records, scores, out / "completions.jsonl")
    blocks = tuple(config.output.blocks)
    report = evaluation_report(records, scores, blocks)
    shutil.rmtree(out / "overlays", ignore_errors=True)  # a re-run's pictures never mix with an older run's
    chosen = pick_examples(records, blocks, overlays, config.seed) if overlays else []
    pictures = write_overlays(chosen, blocks, out / "overlays")
    result = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "dataset": name,
        "questions": len(samples),
        "shots": config.data.shots,
        "output_blocks": list(blocks),
        "seconds": {"load": round(loaded - started, 1), "generate": round(generated - loaded, 1),
                    "score": round(time.perf_counter() - generated, 1)},
        **report,
        "overlays": [str(p) for p in pictures],
    }  # fmt: skip
    write_text_atomic(out / "eval.json", json.dumps(_finite(result), indent=2))  # strict JSON: no data is null
    rows = {"**all**": report["overall"], **report["per_class"]}
    (out / "eval.md").write_text(
        f"# {Path(checkpoint).name} on {name} ({len(samples)} questions, {config.data.shots}-shot)\n\n"
        f"## Anomaly understanding (accuracy, %)\n\n{understanding_table(rows, 'Class')}\n"
        f"## Anomaly detection (%)\n\n{detection_table(rows, 'Class')}"
    )
    return result


# -- inside rlad train ------------------------------------------------------------------------------------------


def evaluate_on_cluster(
    cluster: Any, samples: list[VerifiableSample], config: Config, run_dir: Path, name: str, show_progress: bool
) -> dict[str, dict[str, float]]:
    """``rlad train``'s held-out evaluation on the run's rollout workers (``cluster``: a ``rlad.cluster.Cluster``),
    completions into ``<run_dir>/eval/``. Rows: ``name`` (greedy, one completion per question) and, with
    ``train.eval_sampled`` > 0, ``name_sampled`` (that many completions per question at the rollout temperature,
    fixed seed: the expected reward GRPO optimises, measured on the same draws for every checkpoint)."""
    rows = {}
    runs = [(name, True, 1), (f"{name}_sampled", False, config.train.eval_sampled)]
    runs = [(group, greedy, n) for group, greedy, n in runs if n]
    bar = progress(len(samples) * len(runs), f"eval {name}", "q", disable=not show_progress)
    for group, greedy, n in runs:
        # In chunks of one engine batch per worker, for the bar: greedy batches are the ones a single call makes
        chunk = max(1, config.rollout.batch_size // n) * len(cluster.workers)
        completions = []
        for c, first in enumerate(range(0, len(samples), chunk)):
            part = samples[first : first + chunk]
            completions += cluster.generate(part, n, greedy=greedy, seed=config.seed + c * len(cluster.workers))
            bar.update(len(part))
        records = [ScoredRecord(c.text, samples[i // n], group) for i, c in enumerate(completions)]
        scores = score_records_on_ray(records, config.rewards, config.scoring.chunk)
        (run_dir / "eval").mkdir(exist_ok=True)
        rows[group] = save_and_summarise(records, scores, group, run_dir / "eval" / f"{group}.jsonl")
    bar.close()
    print(f"eval {name}: {len(samples)} held-out questions -> {run_dir / 'eval'}/{name}*.jsonl", flush=True)
    return rows
