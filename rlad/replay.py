"""The replay store: a durable, append-only record of every GRPO group, in Parquet files anyone can open.

Each ``append`` writes one Parquet part file, one row per completion (``group_id``, ``step``,
``policy_version``, ``sample_id``, the sample as JSON, ``completion``, ``token_ids``, ``logprobs``, ``total``,
``advantage``, one ``reward.<name>`` column per reward; under ``grpo.baseline: greedy`` the prompt's greedy
completion is one more row of its group, ``index`` -1, with no advantage: scored and kept, never learned from).
The file is written under a temporary name, flushed to
disk and renamed, so a crash mid-write leaves either the whole part or nothing; readers ignore temporary names.
``pandas.read_parquet(run_dir / "replay")`` or ``pyarrow.dataset`` read the whole store.

Every row keeps what is needed to recompute its rewards (the sample with its ground truth and the completion
text): ``rescore`` re-scores a store under another reward mix without generating anything.

Batch selection is plain functions over groups: ``informative`` (drop groups whose rewards all agree; DAPO's
dynamic sampling) and ``replay_candidates`` (past groups with signal, within a staleness bound).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rlad.sample import VerifiableSample
from rlad.scoring import ScoredRecord, score_records

__all__ = [
    "Baseline",
    "Group",
    "ReplayStore",
    "completions_of",
    "informative",
    "replay_candidates",
    "rescore",
    "score_groups",
    "stored_completions",
]


@dataclass
class Baseline:
    """A prompt's greedy completion, scored (``grpo.baseline: greedy``): what its group's samples are measured
    against; never learned from."""

    completion: str
    token_ids: list[int]
    logprobs: list[float]  # the engine's, at the sampling temperature (as the samples')
    rewards: dict[str, float]  # reward name -> value (weight-free)
    total: float


@dataclass
class Group:
    """The G completions of one prompt, scored. Lists are per completion, in generation order."""

    group_id: str
    step: int
    policy_version: int  # the weights that generated these completions
    sample: VerifiableSample
    completions: list[str]
    token_ids: list[list[int]]
    logprobs: list[list[float]]  # the engine's per-token log-probs of the generated tokens
    rewards: dict[str, list[float]]  # reward name -> per-completion value (weight-free)
    totals: list[float]  # weighted sum
    advantages: list[float]
    extra: dict[str, float] = field(default_factory=dict)
    # grpo.credit block: per completion, block -> advantage share (rlad.credit.block_shares); None: completion
    block_advantages: list[dict[str, float]] | None = None
    baseline: Baseline | None = None  # grpo.baseline greedy: the prompt's greedy completion

    def __post_init__(self) -> None:
        n = len(self.completions)
        lengths = [len(self.token_ids), len(self.logprobs), len(self.totals), len(self.advantages)]
        lengths += [len(self.block_advantages)] if self.block_advantages is not None else []
        lengths += [len(v) for v in self.rewards.values()]
        if any(k != n for k in lengths):
            raise ValueError(f"group {self.group_id}: per-completion lists differ in length: {n} vs {lengths}")
        for ids, lps in zip(self.token_ids, self.logprobs, strict=True):
            if len(ids) != len(lps):
                raise ValueError(f"group {self.group_id}: {len(ids)} token ids but {len(lps)} logprobs")

    @property
    def reward_std(self) -> float:
        """Spread of the totals, the greedy baseline's included: 0 when the group teaches nothing."""
        return float(np.std(self.totals + ([self.baseline.total] if self.baseline else [])))


def _rows(g: Group) -> Iterator[dict[str, Any]]:
    """The store's rows of one group: its completions in order, then its greedy completion (index -1, no
    advantage) when it has one."""
    common = {"group_id": g.group_id, "step": g.step, "policy_version": g.policy_version,
              "sample_id": g.sample.sample_id, "sample": json.dumps(g.sample.to_record())}  # fmt: skip
    for i, text in enumerate(g.completions):
        blocks = json.dumps(g.block_advantages[i]) if g.block_advantages else None
        yield {**common, "index": i, "completion": text, "token_ids": g.token_ids[i], "logprobs": g.logprobs[i],
               "total": g.totals[i], "advantage": g.advantages[i], "block_advantages": blocks,
               **{f"reward.{n}": v[i] for n, v in g.rewards.items()}}  # fmt: skip
    if (b := g.baseline) is not None:
        yield {**common, "index": -1, "completion": b.completion, "token_ids": b.token_ids, "logprobs": b.logprobs,
               "total": b.total, "advantage": None, "block_advantages": None,
               **{f"reward.{n}": v for n, v in b.rewards.items()}}  # fmt: skip


def _table(groups: Sequence[Group]) -> pa.Table:
    names = sorted({name for g in groups for name in g.rewards})
    columns = ["group_id", "step", "policy_version", "sample_id", "sample", "index", "completion", "token_ids",
               "logprobs", "total", "advantage", "block_advantages", *(f"reward.{n}" for n in names)]  # fmt: skip
    rows = [row for g in groups for row in _rows(g)]
    types = {"token_ids": pa.list_(pa.int32()), "logprobs": pa.list_(pa.float32()), "step": pa.int64(),
             "policy_version": pa.int64(), "index": pa.int32(), "block_advantages": pa.string(),
             "advantage": pa.float64()}  # fmt: skip
    return pa.table({k: pa.array([row.get(k) for row in rows], type=types.get(k)) for k in columns})


def _groups(table: pa.Table) -> list[Group]:
    rows = table.to_pylist()
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row["group_id"], []).append(row)
    groups = []
    for gid, rows_of_group in by_id.items():
        members = sorted((r for r in rows_of_group if r["index"] >= 0), key=lambda r: r["index"])
        greedy = next((r for r in rows_of_group if r["index"] == -1), None)
        first = members[0]
        names = [k[len("reward.") :] for k in first if k.startswith("reward.") and first[k] is not None]
        groups.append(
            Group(
                group_id=gid,
                step=first["step"],
                policy_version=first["policy_version"],
                sample=VerifiableSample.from_record(json.loads(first["sample"])),
                completions=[r["completion"] for r in members],
                token_ids=[list(r["token_ids"]) for r in members],
                logprobs=[list(r["logprobs"]) for r in members],
                rewards={n: [r[f"reward.{n}"] for r in members] for n in names},
                totals=[r["total"] for r in members],
                advantages=[r["advantage"] for r in members],
                block_advantages=(  # stores written before grpo.credit have no such column
                    [json.loads(r["block_advantages"]) for r in members] if first.get("block_advantages") else None
                ),
                baseline=_baseline(greedy, names) if greedy else None,
            )
        )
    return groups


def _baseline(row: dict[str, Any], names: Sequence[str]) -> Baseline:
    """The greedy completion's row (``index`` -1) as its group's baseline."""
    rewards = {n: row[f"reward.{n}"] for n in names}
    return Baseline(row["completion"], list(row["token_ids"]), list(row["logprobs"]), rewards, row["total"])


class ReplayStore:
    """Append-only Parquet parts under ``folder``; see the module docstring."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def parts(self) -> list[Path]:
        """Complete part files, oldest first (temporary files of an interrupted write are not parts)."""
        return sorted(self.folder.glob("part-*.parquet"))

    def append(self, groups: Sequence[Group]) -> Path | None:
        """Write ``groups`` as one new part, atomically; returns its path (None for no groups)."""
        if not groups:
            return None
        step = max(g.step for g in groups)
        final = self.folder / f"part-{step:09d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = final.with_name(f".{final.name}.tmp")
        pq.write_table(_table(groups), tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())  # on disk before it becomes visible under its final name
        os.replace(tmp, final)
        return final

    def groups(self, min_step: int = 0) -> list[Group]:
        """Every stored group from ``min_step`` on, in the order they were appended."""
        out = []
        for part in self.parts():
            if int(part.name.split("-")[1]) >= min_step:
                out += [g for g in _groups(pq.read_table(part)) if g.step >= min_step]
        return out

    def __len__(self) -> int:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.parts())


def informative(groups: Iterable[Group], min_std: float = 1e-6) -> list[Group]:
    """Groups whose totals differ, the greedy baseline's included (DAPO dynamic sampling): a group that agrees
    has zero advantages."""
    return [g for g in groups if g.reward_std > min_std]


def replay_candidates(groups: Iterable[Group], policy_version: int, max_staleness: int) -> list[Group]:
    """Past groups worth replaying now: with signal, generated at most ``max_staleness`` versions ago."""
    return [g for g in informative(groups) if policy_version - g.policy_version <= max_staleness]


def stored_completions(store: ReplayStore, min_step: int = 0) -> list[ScoredRecord]:
    """Every stored sampled completion with its sample, grouped by training step: what ``rlad score``'s path
    (``scoring.score_records`` / ``summarise``) re-scores under any reward mix, with nothing generated. The
    greedy baselines (``grpo.baseline: greedy``) are not among them: they are not what the policy sampled."""
    return completions_of(store.groups(min_step))


def completions_of(groups: Iterable[Group]) -> list[ScoredRecord]:
    """The completions of ``groups`` (already read from a store), labelled by training step."""
    return [ScoredRecord(text, g.sample, f"step {g.step}") for g in groups for text in g.completions]


def rescore(store: ReplayStore, mix) -> list[dict[str, float]]:
    """Rewards of every stored completion under ``mix`` (a ``rewards.RewardMix``), in store order."""
    return score_records(stored_completions(store), mix)


def score_groups(
    config: Any,
    samples: Sequence[VerifiableSample],
    completions: Sequence[Any],
    step: int,
    greedy: Sequence[Any] | None = None,
):
    """GRPO's score phase: every completion's rewards (in Ray tasks when there are many), group advantages,
    and the step's groups as the store keeps them. ``completions[i]`` answers ``samples[i // group_size]``;
    ``greedy[p]`` (``grpo.baseline: greedy``) is sample p's greedy completion, scored with them and made its
    group's baseline. Returns (records, scores, groups) of the sampled completions."""
    g = config.grpo.group_size
    records = [ScoredRecord(c.text, samples[i // g], "train") for i, c in enumerate(completions)]
    from rlad.grpo import group_advantages
    from rlad.scoring import score_records_on_ray

    greedy = list(greedy or [])
    if greedy and len(greedy) != len(samples):
        raise ValueError(f"{len(greedy)} greedy completions for {len(samples)} prompts")
    both = records + [ScoredRecord(c.text, sample, "greedy") for c, sample in zip(greedy, samples, strict=False)]
    scored = score_records_on_ray(both, config.rewards, config.scoring.chunk)
    scores, greedy_scores = scored[: len(records)], scored[len(records) :]
    totals = torch.tensor([s["total"] for s in scores], dtype=torch.float64)
    baseline = torch.tensor([s["total"] for s in greedy_scores], dtype=torch.float64) if greedy else None
    advantages = group_advantages(totals, g, config.grpo.advantage_scale, baseline=baseline).tolist()
    names = [k for k in scores[0] if k != "total"]
    shares = block_advantages(config, scores, names, greedy_scores) if config.grpo.credit == "block" else None
    groups = []
    for p, sample in enumerate(samples):
        idx = range(p * g, (p + 1) * g)
        groups.append(Group(
            group_id=f"{step:06d}-{p:04d}", step=step, policy_version=completions[idx[0]].policy_version,
            sample=sample, completions=[completions[i].text for i in idx],
            token_ids=[completions[i].token_ids for i in idx], logprobs=[completions[i].logprobs for i in idx],
            rewards={n: [scores[i][n] for i in idx] for n in names}, totals=[scores[i]["total"] for i in idx],
            advantages=[advantages[i] for i in idx], block_advantages=shares and [shares[i] for i in idx],
            baseline=Baseline(
                greedy[p].text, greedy[p].token_ids, greedy[p].logprobs,
                {n: greedy_scores[p][n] for n in names}, greedy_scores[p]["total"],
            ) if greedy else None,
        ))  # fmt: skip
    return records, scores, groups


def block_advantages(
    config: Any, scores: list[dict[str, float]], names: list[str], greedy: Sequence[dict[str, float]] = ()
) -> list[dict[str, float]]:
    """Per completion, block -> advantage share under ``grpo.credit: block`` (rlad/credit.py): each weighted
    reward centred in its group (against its ``greedy`` completion's, one score per prompt, when given), over
    the total's scale, summed by the blocks its reward judges."""
    from rewards import RewardMix, get_reward
    from rlad.credit import block_shares
    from rlad.grpo import component_advantages

    weights = RewardMix(config.rewards).weights
    weighted = {n: torch.tensor([s[n] * weights[n] for s in scores], dtype=torch.float64) for n in names}
    baselines = {n: torch.tensor([s[n] * weights[n] for s in greedy], dtype=torch.float64) for n in names}
    parts = component_advantages(
        weighted, config.grpo.group_size, config.grpo.advantage_scale, baselines=baselines if greedy else None
    )
    blocks = {n: get_reward(n).blocks for n in names}
    return [block_shares({n: float(parts[n][i]) for n in names}, blocks) for i in range(len(scores))]
