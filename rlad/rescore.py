"""``rlad rescore``: a run's replay store scored again under other reward mixes, side by side.

Nothing is generated: every stored completion is verified again under each mix, and the mixes are compared
with what the run trained on (the totals and advantages the store kept, row ``stored``):

- the mean total and the mean of every reward component (components are weight-free, so a reward a mix
  leaves at weight 0 still shows its value, and one a mix does not name shows ``—``);
- the share of groups without signal (all completions of a prompt scored alike: no advantage, no gradient);
- the share of completions whose advantage has the opposite sign to the stored one (the mix would have
  pushed that completion the other way);
- the rank correlation (Spearman, pooled over all completions) of the mix's advantages with the stored ones.

Advantages are computed as the run computed them (its ``grpo.advantage_scale``), per group.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rewards import RewardMix
from rlad.grpo import group_advantages
from rlad.replay import Group

__all__ = [
    "MixSignal",
    "compare_mixes",
    "mix_signal",
    "per_completion_rows",
    "signal_scores",
    "spearman",
    "stored_signal",
    "write_rows",
]

STORED = "stored"


@dataclass(frozen=True)
class MixSignal:
    """One mix's scores of a store's groups, group by group (each array is (group_size,))."""

    name: str
    totals: list[np.ndarray]
    components: dict[str, list[np.ndarray]]
    advantages: list[np.ndarray]


def _advantages(totals: np.ndarray, scale: str) -> np.ndarray:
    return group_advantages(torch.tensor(totals, dtype=torch.float64), len(totals), scale).numpy()


def mix_signal(name: str, groups: Sequence[Group], mix: RewardMix, scale: str) -> MixSignal:
    """Every stored completion scored under ``mix``, with advantages as GRPO would compute them."""
    totals, components, advantages = [], {}, []
    for g in groups:
        s = mix.score(g.completions, [g.sample] * len(g.completions))
        totals.append(s.total)
        advantages.append(_advantages(s.total, scale))
        for k, v in s.components.items():
            components.setdefault(k, []).append(v)
    return MixSignal(name, totals, components, advantages)


def signal_scores(signal: MixSignal) -> list[dict[str, float]]:
    """A signal's per-completion totals and components in store order, shaped as ``scoring.score_records``
    returns them (for ``scoring.summarise``): the per-step table needs no second scoring pass."""
    return [
        {"total": float(total[i]), **{k: float(v[gi][i]) for k, v in signal.components.items()}}
        for gi, total in enumerate(signal.totals)
        for i in range(len(total))
    ]


def stored_signal(groups: Sequence[Group]) -> MixSignal:
    """What the run trained on, as the store kept it: totals, components and advantages."""
    components: dict[str, list[np.ndarray]] = {}
    for g in groups:
        for k, v in g.rewards.items():
            components.setdefault(k, []).append(np.asarray(v, float))
    return MixSignal(
        STORED, [np.asarray(g.totals, float) for g in groups], components,
        [np.asarray(g.advantages, float) for g in groups],
    )  # fmt: skip


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their mean rank); NaN when either side is constant."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        _, inverse = np.unique(x, return_inverse=True)
        sums = np.bincount(inverse, weights=r)
        return sums[inverse] / np.bincount(inverse)[inverse]

    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def compare_mixes(signals: Sequence[MixSignal], baseline: MixSignal) -> list[dict[str, float]]:
    """One row per mix: mean total, mean of each component (NaN where the mix lacks it), groups without
    signal, advantage sign flips and rank correlation against ``baseline``."""
    names = list(dict.fromkeys(k for s in signals for k in s.components))
    base = np.concatenate(baseline.advantages)
    rows = []
    for s in signals:
        adv = np.concatenate(s.advantages)
        row = {"total": float(np.mean(np.concatenate(s.totals)))}
        for k in names:
            row[k] = float(np.mean(np.concatenate(s.components[k]))) if k in s.components else float("nan")
        row["no_signal_groups"] = float(np.mean([np.ptp(t) < 1e-9 for t in s.totals]))
        row["sign_flips"] = float(np.mean(np.sign(adv) * np.sign(base) < 0))
        row["rank_corr"] = spearman(adv, base)
        rows.append(row)
    return rows


def per_completion_rows(groups: Sequence[Group], signals: Sequence[MixSignal]) -> Iterator[dict]:
    """One row per stored completion: where it is, its text, and per mix its total, components, advantage."""
    for gi, g in enumerate(groups):
        for i, text in enumerate(g.completions):
            row = {"step": g.step, "group_id": g.group_id, "sample_id": g.sample.sample_id, "index": i,
                   "completion": text}  # fmt: skip
            for s in signals:
                row[f"{s.name}/total"] = float(s.totals[gi][i])
                row.update({f"{s.name}/{k}": float(v[gi][i]) for k, v in s.components.items()})
                row[f"{s.name}/advantage"] = float(s.advantages[gi][i])
            yield row


def write_rows(rows: Sequence[Mapping], path: str | Path) -> Path:
    """``rows`` as CSV (a ``.csv`` path) or JSON Lines (anything else), written aside and renamed."""
    from rlad.run_dir import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(path, buf.getvalue())
    else:
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path
