"""Score stored completions offline: a JSONL of (completion, sample) records -> rewards and metrics.

One record per line::

    {"completion": "<seg>…</seg><think>…</think><answer>A</answer>",
     "sample": {…VerifiableSample.to_record()…},
     "group": "optional label; figures are also reported per group"}

This is what ``rlad score`` runs, and what re-scoring a run's replay store under another reward mix
builds on: nothing is generated, only verified.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rewards import RewardMix
from rlad import mask_text
from rlad.completion import parse_completion
from rlad.jsonl import json_objects
from rlad.metrics import AnswerRecord, DetectionMetrics, mmad_accuracy
from rlad.sample import VerifiableSample

__all__ = [
    "CompletionFileError",
    "ScoredRecord",
    "print_summary",
    "read_completions",
    "score_records",
    "shared_subtasks",
    "summarise",
]


class CompletionFileError(ValueError):
    """A line of a completions file that cannot be read; names the file and line."""


@dataclass(frozen=True)
class ScoredRecord:
    completion: str
    sample: VerifiableSample
    group: str


def read_completions(path: str | Path) -> Iterator[ScoredRecord]:
    """Yield the records of a completions JSONL; a bad line raises naming ``file:line`` and the field."""
    for where, record in json_objects(path, CompletionFileError):
        for field in ("completion", "sample"):
            if field not in record:
                raise CompletionFileError(f"{where}: missing field {field!r}")
        if not isinstance(record["completion"], str):
            raise CompletionFileError(f"{where}: field 'completion' must be a string")
        try:
            sample = VerifiableSample.from_record(record["sample"])
        except (KeyError, TypeError, ValueError) as err:  # MaskTextError is a ValueError
            raise CompletionFileError(f"{where}: field 'sample' is not a valid sample: {err}") from err
        yield ScoredRecord(record["completion"], sample, str(record.get("group", "all")))


def score_records(records: list[ScoredRecord], mix: RewardMix) -> list[dict[str, float]]:
    """Per-record reward components and total, in input order."""
    scores = mix.score([r.completion for r in records], [r.sample for r in records])
    names = list(scores.components)
    return [
        {"total": float(scores.total[i]), **{n: float(scores.components[n][i]) for n in names}}
        for i in range(len(records))
    ]


def summarise(records: list[ScoredRecord], scores: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per group (and ``all``): mean rewards, format rate, patch-level detection and answer accuracy.

    ``image_F1_shared`` is image-level F1 over the questions of subtasks asked about both normal and anomalous
    images (``shared_subtasks``): whether the policy writes a mask from what it sees, not from the question.
    ``discrimination`` is MMAD's Anomaly Discrimination accuracy (mean of normal and anomalous images; nan when
    the group has no such question)."""
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_group[r.group].append(i)
    if len(by_group) > 1:
        by_group["all"] = list(range(len(records)))
    out = {}
    for group, idx in by_group.items():
        shared = shared_subtasks([records[i].sample for i in idx])
        detection, detection_shared = DetectionMetrics(), DetectionMetrics()
        answers = []
        for i in idx:
            r = records[i]
            parsed = parse_completion(r.completion)
            pred = mask_text.decode_or_none(parsed.seg, r.sample.grid)
            detection.add(pred, r.sample.mask, r.sample.anomalous)  # at patch resolution
            if r.sample.subtask in shared:
                detection_shared.add(pred, r.sample.mask, r.sample.anomalous)
            answers.append(
                AnswerRecord(r.sample.subtask or "all", parsed.answer_letter, r.sample.answer, r.sample.anomalous)
            )
        means = {k: float(np.mean([scores[i][k] for i in idx])) for k in scores[idx[0]]}
        det = detection.summary()
        accuracy = mmad_accuracy(answers)
        out[group] = {
            "n": float(len(idx)),
            **means,  # total and each reward
            "image_F1": det["image_f1"],
            "image_F1_shared": detection_shared.summary()["image_f1"] if shared else float("nan"),
            "patch_F1": det["pixel_f1"],
            "IoU_ano": det["iou_ano"],
            "bad_seg": det["unparseable_rate"],
            "answer_acc": accuracy["mean"]["accuracy"],
            "discrimination": accuracy.get("Anomaly Discrimination", {}).get("accuracy", float("nan")),
        }
    return out


def shared_subtasks(samples: list[VerifiableSample]) -> set[str]:
    """The subtasks asked about both normal and anomalous images among ``samples``.

    Only there does a mask's presence say what the policy saw: a question asked of defective images only
    ("Where is the defect located?") tells the policy the image is anomalous, so image F1 over all questions
    rewards reading the question. ``image_F1_shared`` is image F1 over these subtasks' questions alone."""
    labels: dict[str, set[bool]] = defaultdict(set)
    for s in samples:
        labels[s.subtask].add(s.anomalous)
    return {subtask for subtask, seen in labels.items() if len(seen) == 2}


def print_summary(summary: dict[str, dict[str, float]]) -> None:
    """``summarise``'s rows as the fixed-width table the commands print."""
    from rlad.tables import text_table

    columns = list(next(iter(summary.values())))
    rows = [[group, str(int(row["n"])), *(f"{row[c]:.3f}" for c in columns[1:])] for group, row in summary.items()]
    print(text_table(["group", *columns], rows), end="")


def score_records_on_ray(records: list[ScoredRecord], rewards: dict, chunk: int) -> list[dict[str, float]]:
    """``score_records`` over ``chunk``-sized slices in parallel Ray tasks (in this process when there is at
    most one slice); same results, same order. ``rewards`` is the config's reward section."""
    if len(records) <= chunk:
        return score_records(records, RewardMix(rewards))
    import ray

    # num_cpus=0: the actors reserve the cluster's CPUs but sit idle while the driver scores (the loop is
    # synchronous), so a task that waited for a free CPU would wait forever.
    task = ray.remote(num_cpus=0)(_score_slice)
    refs = [task.remote(records[i : i + chunk], rewards) for i in range(0, len(records), chunk)]
    return [s for part in ray.get(refs) for s in part]


def _score_slice(records: list[ScoredRecord], rewards: dict) -> list[dict[str, float]]:
    return score_records(records, RewardMix(rewards))
