"""Where a run's actors go: one Ray placement group per run, its bundles planned here from the config.

``split`` (default): a bundle per rollout worker, then one per learner, each with its own section's
resources — rollout engines and learners on separate GPUs (disaggregated; weights travel between them).
``colocate``: bundle k holds rollout worker k *and* learner k, with the sum of their resources — the engine
and the learner share a GPU (set ``num_gpus: 0.5`` in both sections and ``rollout.vllm.sleep_level`` so the
engine frees its memory while the learner trains). A restarted actor returns to its own bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlad.config import Config

__all__ = ["Placement", "plan_placement"]


@dataclass
class Placement:
    bundles: list[dict[str, float]]
    rollout: list[int]  # bundle index of rollout worker k
    learner: list[int]  # bundle index of learner k
    strategy: str


def _resources(section: Any) -> dict[str, float]:
    out = {"CPU": float(section.num_cpus), "GPU": float(section.num_gpus), **section.resources}
    return {k: v for k, v in out.items() if v > 0}


def plan_placement(config: Config) -> Placement:
    r, lc, t = config.rollout, config.learner, config.train
    if t.placement == "colocate":
        shared = _resources(r)
        for k, v in _resources(lc).items():
            shared[k] = shared.get(k, 0.0) + v
        bundles = [dict(shared) for _ in range(r.workers)]
        return Placement(bundles, list(range(r.workers)), list(range(lc.workers)), t.placement_strategy)
    bundles = [_resources(r) for _ in range(r.workers)] + [_resources(lc) for _ in range(lc.workers)]
    return Placement(bundles, list(range(r.workers)), [r.workers + i for i in range(lc.workers)], t.placement_strategy)
