"""The run's Ray actors as handles: the rollout workers and the data-parallel learners, placed, started and
kept alive, with the calls the driver makes on them — generate, learn, sync, revive, freshness.

Placement: one Ray placement group per run, its bundles planned from the config (:func:`plan_placement`).
``split`` (default): a bundle per rollout worker, then one per learner, each with its own section's
resources — rollout engines and learners on separate GPUs (disaggregated; weights travel between them).
``colocate``: bundle k holds rollout worker k *and* learner k, with the sum of their resources — the engine
and the learner share a GPU (set ``num_gpus: 0.5`` in both sections and ``rollout.vllm.sleep_level`` so the
engine frees its memory while the learner trains). A restarted actor returns to its own bundle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlad.config import Config, ConfigError
from rlad.faults import LearnerLostError
from rlad.learner import Learner, Rollout, loss_units
from rlad.policy import PolicySpec
from rlad.sample import VerifiableSample
from rollout.engine import Completion
from rollout.transport import rendezvous_url
from rollout.weight_sync import StaleWeightsError, WeightSync, make_weight_sync
from rollout.worker import RolloutWorker

__all__ = ["Cluster", "Pending", "Placement", "actor_name", "check_resources", "plan_placement", "split_threads"]


# -- placement -------------------------------------------------------------------------------------------------


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


def split_threads(config: Config) -> Config:
    """Async on CPUs: rollout and learners run at once, so by default each takes half the cores (both taking
    all of them oversubscribes torch's threads: 4-5x slower steps, measured on 2 cores)."""
    r, lc = config.rollout, config.learner
    if not config.train.async_rollout or r.num_gpus or lc.num_gpus or r.threads or lc.threads:
        return config
    half = max(1, (os.cpu_count() or 2) // 2)
    return dataclasses.replace(config, rollout=dataclasses.replace(r, threads=half),
                               learner=dataclasses.replace(lc, threads=half))  # fmt: skip


# -- the actors ----------------------------------------------------------------------------------------------


def actor_name(run_dir: str | Path, role: str, index: int) -> str:
    """The Ray name of a run's actor (``ray list actors`` shows it): unique per run folder, so runs can share
    a cluster."""
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:8]
    return f"rlad-{digest}-{role}-{index}"


class Cluster:
    """The Ray actors of a run: rollout workers and data-parallel learners, placed by their config sections.

    A rollout worker that dies is restarted by Ray (``rollout.max_restarts``); before it generates again it is
    given the current weights through the verified sync, and its share of the step is generated anew with the
    same seed — nothing is stored before generation finishes, so no group is lost or stored twice. A learner
    that dies raises :class:`LearnerLostError` (``run_train`` resumes from the last checkpoint when
    ``train.max_learner_restarts`` allows)."""

    def __init__(self, config: Config, checkpoint: str):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.config = config
        r, lc = config.rollout, config.learner
        run_dir = config.train.run_dir
        plan = plan_placement(config)
        self.placement_group = placement_group(plan.bundles, strategy=plan.strategy, name=actor_name(run_dir, "pg", 0))
        try:
            ray.get(self.placement_group.ready(), timeout=600)
        except ray.exceptions.GetTimeoutError as err:
            ray.util.remove_placement_group(self.placement_group)
            raise ConfigError(
                f"the Ray cluster could not place the run's bundles {plan.bundles} (strategy "
                f"{plan.strategy}, train.placement {config.train.placement}) within 10 minutes"
            ) from err

        policy = PolicySpec.of(config, checkpoint)  # what every copy of the policy is built from

        def where(bundle: int) -> PlacementGroupSchedulingStrategy:
            return PlacementGroupSchedulingStrategy(self.placement_group, placement_group_bundle_index=bundle)

        self.workers = [
            ray.remote(RolloutWorker).options(
                num_cpus=r.num_cpus, num_gpus=r.num_gpus, resources=r.resources or None,
                max_restarts=r.max_restarts, name=actor_name(run_dir, "rollout", i),
                scheduling_strategy=where(plan.rollout[i]),
            ).remote(policy, r, config.generation, config.seed)
            for i in range(r.workers)
        ]  # fmt: skip
        self.learners = [
            ray.remote(Learner).options(
                num_cpus=lc.num_cpus, num_gpus=lc.num_gpus, resources=lc.resources or None,
                name=actor_name(run_dir, "learner", i), scheduling_strategy=where(plan.learner[i]),
            ).remote(policy, config.grpo, lc, config.generation, config.seed, i, lc.workers)
            for i in range(lc.workers)
        ]  # fmt: skip
        addresses = ray.get([learner.address.remote() for learner in self.learners])
        rendezvous = rendezvous_url(addresses, uuid.uuid4().hex)  # one node: a file, no port opened
        ray.get([learner.setup.remote(rendezvous) for learner in self.learners])
        self.sync: WeightSync = make_weight_sync(config)
        self.version = 0
        self.worker_restarts = 0

    def shutdown(self) -> None:
        """Stop the actors now (a session that outlives the run, a test's or a notebook's, gets its CPUs back)."""
        import ray

        for actor in self.workers + self.learners:
            ray.kill(actor, no_restart=True)
        ray.util.remove_placement_group(self.placement_group)

    def sync_weights(self, version: int, workers: list[Any] | None = None) -> float:
        """The learner's weights into every (or the given) rollout worker, verified; megabytes sent. A worker
        that died meanwhile is revived (and synced); a dead learner is :class:`LearnerLostError`."""
        import ray

        targets = self.workers if workers is None else workers
        try:
            report = self.sync.sync(self.learners, targets, version)
        except ray.exceptions.RayActorError as err:
            self.check_learners(err, "sending weights")
            dead = [k for k, w in enumerate(self.workers) if w in targets and not _alive(w)]
            if not dead:
                raise
            self.version = version
            for k in dead:
                self._revive(k, err)  # waits for the restart, then syncs that worker
            return self.sync_weights(version, targets)  # the others may have missed this version too
        self.version = version
        return report.bytes / 2**20

    def check_freshness(self, sample: VerifiableSample, token_ids: list[int]) -> dict[str, float]:
        """Each engine's per-token log-probs of one completion against the learner's, under the weights just
        synced: weights that arrived but are not the ones sampling (a missed name, a sleep/wake that restored an
        old copy) show up here. Raises :class:`StaleWeightsError` beyond ``rollout.freshness_tolerance``."""
        import ray

        tolerance = self.config.rollout.freshness_tolerance
        ref = self._learners_call([lr.score.remote([sample], [token_ids]) for lr in self.learners], "scoring")[0][0]
        got = ray.get([w.score.remote([sample], [token_ids]) for w in self.workers])
        means, peaks = [], []
        for k, (row,) in enumerate(got):
            diff = np.abs(np.array(row) - np.array(ref))
            means.append(float(diff.mean()) if diff.size else 0.0)
            peaks.append(float(diff.max()) if diff.size else 0.0)
            if means[-1] > tolerance:
                raise StaleWeightsError(
                    f"rollout worker {k} after syncing version {self.version}: its log-probs of a fixed completion "
                    f"differ from the learner's by {means[-1]:.3g} per token on average (max {peaks[-1]:.3g}); "
                    f"rollout.freshness_tolerance is {tolerance:g}. The engine is not sampling with the learner's "
                    "weights"
                )
        return {"sync/freshness_mean_abs": max(means), "sync/freshness_max_abs": max(peaks)}

    def check_learners(self, err: Exception, what: str) -> None:
        """Raise :class:`LearnerLostError` if a learner is dead (``err`` was about it), else return."""
        if not all(_alive(learner) for learner in self.learners):
            raise _learner_lost(err, what) from err

    def generate(self, samples: Sequence[VerifiableSample], n: int, greedy: bool, seed: int) -> list[Completion]:
        """Prompts split evenly over the workers; completions back in prompt order."""
        return self.collect(self.start_generate(samples, n, greedy, seed))

    def start_generate(self, samples: Sequence[VerifiableSample], n: int, greedy: bool, seed: int) -> Pending:
        """Send the prompts to the workers and return at once (async mode overlaps this with learning)."""
        parts = np.array_split(np.arange(len(samples)), len(self.workers))
        calls = {k: ([samples[i] for i in idx], n, greedy, seed + k) for k, idx in enumerate(parts) if len(idx)}
        refs = {k: self.workers[k].generate.remote(*args) for k, args in calls.items()}
        return Pending(calls, refs, time.perf_counter())

    def collect(self, pending: Pending) -> list[Completion]:
        """Wait for a generation; a worker that died meanwhile is revived and its share generated anew (same
        seed). Sets ``pending.seconds``: from sending to the last share back."""
        import ray

        if pending.result is not None:
            return pending.result
        waiting = dict(pending.refs)
        done: dict[int, tuple[list[Completion], float]] = {}
        while waiting:
            k, ref = next(iter(waiting.items()))
            try:
                done[k] = ray.get(ref)
                del waiting[k]
            except ray.exceptions.RayActorError as err:
                self._revive(k, err)
                waiting[k] = self.workers[k].generate.remote(*pending.calls[k])
        pending.seconds = time.perf_counter() - pending.started
        pending.engine_seconds = max(seconds for _, seconds in done.values())
        pending.result = [c for k in sorted(done) for c in done[k][0]]
        return pending.result

    def _revive(self, k: int, err: Exception) -> None:
        """Wait for Ray to restart rollout worker ``k``, then give it the current weights (verified)."""
        import ray

        self.worker_restarts += 1
        limit = self.config.rollout.max_restarts
        if self.worker_restarts > limit:
            raise RuntimeError(
                f"rollout worker {k} died and rollout.max_restarts={limit} restarts are used up: {err}"
            ) from err
        print(f"rollout worker {k} died ({type(err).__name__}); Ray restarts it ({self.worker_restarts}/{limit}), "
              f"then it reloads weights version {self.version}", flush=True)  # fmt: skip
        deadline = time.monotonic() + 600
        while True:
            try:
                ray.get(self.workers[k].policy_version.remote(), timeout=60)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as again:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rollout worker {k} did not come back within 10 minutes") from again
                time.sleep(1.0)
        self.sync_weights(self.version, [self.workers[k]])

    def learn(self, rollouts: list[Rollout]) -> dict[str, float]:
        """The batch split over the learners; their metrics averaged."""

        n = len(self.learners)
        # every rank takes part in every step (DeepSpeed's collectives); one left without a share gets padding
        padding = [dataclasses.replace(rollouts[0], padding=True)]
        shards = [rollouts[i::n] or padding for i in range(n)]
        micro = self.config.learner.micro_batch_size
        micro_batches = max(1, -(-max(len(s) for s in shards) // micro))
        units = loss_units(rollouts, self.config.grpo.aggregation)
        refs = [lr.learn.remote(s, units, micro_batches) for lr, s in zip(self.learners, shards, strict=True)]
        results = self._learners_call(refs, "learning")
        merged = {k: float(np.mean([m[k] for m in results])) for k in results[0]}
        merged["learn_tokens"] = float(sum(m["learn_tokens"] for m in results))  # the whole batch's
        merged["learn_seconds"] = max(m["learn_seconds"] for m in results)  # the slowest rank sets the pace
        return merged

    def _learners_call(self, refs: list[Any], what: str) -> list[Any]:
        """``ray.get`` of calls on the learners; a dead learner becomes :class:`LearnerLostError`."""
        import ray

        try:
            return ray.get(refs)
        except ray.exceptions.RayActorError as err:
            raise _learner_lost(err, what) from err


@dataclasses.dataclass
class Pending:
    """A generation sent to the rollout workers and not yet collected."""

    calls: dict[int, tuple]  # worker -> its generate arguments (kept to regenerate a dead worker's share)
    refs: dict[int, Any]  # worker -> Ray object ref of its completions
    started: float
    seconds: float = 0.0
    engine_seconds: float = 0.0  # inside the slowest worker's engine (the rest is Ray's: calls, serialisation)
    result: list[Completion] | None = None  # once collected


def _learner_lost(err: Exception, what: str) -> LearnerLostError:
    return LearnerLostError(f"a learner died while {what} ({type(err).__name__}: {str(err)[:300]})")


def _alive(actor: Any, timeout: float = 30.0) -> bool:
    """Whether an actor answers (a restarting one is waited for up to ``timeout`` seconds)."""
    import ray

    try:
        ray.get(actor.__ray_ready__.remote(), timeout=timeout)
        return True
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False


def check_resources(config: Config) -> None:
    """Fail now, naming the sections, rather than wait forever for actors the cluster cannot place."""
    import ray

    have = ray.cluster_resources()
    r, lc = config.rollout, config.learner
    for key, need in (("CPU", r.workers * r.num_cpus + lc.workers * lc.num_cpus),
                      ("GPU", r.workers * r.num_gpus + lc.workers * lc.num_gpus)):  # fmt: skip
        if need > have.get(key, 0):
            raise ConfigError(
                f"rollout.workers x rollout.num_{key.lower()}s + learner.workers x learner.num_{key.lower()}s "
                f"= {need:g} {key}s, but the Ray cluster has {have.get(key, 0):g}"
            )
