"""``rlad train``: SFT warm-start, then GRPO on Ray, then a held-out evaluation — the whole method in one run.

    rlad train configs/demo.yaml                          # local Ray, tiny model, generated data, CPU minutes
    rlad train resume=runs/demo/latest                    # continue from the last complete checkpoint
    rlad train configs/paper_qwen25vl_7b.yaml --ray-address auto model.path=... data.root=...

One driver (this module) runs each GRPO step (OmniAD §3.3) as named phases over Ray actors:

    sample    prompts_per_step questions from the training split (a seeded permutation per epoch)
    generate  group_size completions each, on the rollout workers (rollout/worker.py); with
              grpo.baseline greedy also each question's greedy completion, its group's baseline
    score     every reward of the mix (rewards/), in Ray tasks when there are many
    store     every group, scored, into the replay store (rlad/replay.py) — before anything learns from it
    learn     group advantages + GRPO loss on the learner workers (rlad/learner.py, rlad/grpo.py)
    sync      new weights to the rollout workers, versioned and verified (rollout/weight_sync.py)
    log       TensorBoard, metrics.jsonl, progress bar (rlad/logbook.py); checkpoint; evaluate

Departures from the paper: ``train.async_rollout`` overlaps the rollout of step t+1 with learning on step t
(one policy version of lag, corrected by TIS, ``grpo.tis_cap``); the
answer reward gives 0 to a missing answer (rewards/builtin.py); KL is off by default (``grpo.kl_coef``).

Reproducibility: the prompts of step s and the sampling seed of step s are functions of (seed, s), and the
learner checkpoint holds model, optimizer, schedule and RNG, so a resumed run redraws exactly what the
uninterrupted one would have (tested).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlad.cluster import Cluster, Pending, check_resources, split_threads
from rlad.config import Config, ConfigError, absolute_paths, save_config
from rlad.evaluate import evaluate_on_cluster
from rlad.export import export_from_learners
from rlad.faults import LearnerLostError, NonFiniteError
from rlad.learner import check_config, learner_batch
from rlad.logbook import Logbook, step_metrics
from rlad.ray_session import ray_session
from rlad.replay import ReplayStore, informative, score_groups
from rlad.run_dir import (
    SNAPSHOT_NAME,
    check_run_dir,
    complete_checkpoints,
    hold_run_dir,
    last_checkpoint,
    run_snapshot,
    save_checkpoint,
    set_aside_replay_parts,
    write_text_atomic,
)
from rlad.sample import VerifiableSample
from rlad.sft import warm_start
from rollout.engine import Completion

__all__ = ["run_train", "step_prompts"]

log = logging.getLogger(__name__)


# -- pure pieces ---------------------------------------------------------------------------------------------


def step_prompts(n_train: int, step: int, per_step: int, seed: int) -> list[int]:
    """Indices of step ``step``'s prompts: consecutive slices of a fresh seeded permutation per epoch, so the
    data position of any step is known without state."""
    out: list[int] = []
    position = step * per_step
    while len(out) < per_step:  # one permutation per epoch the step's slice touches (two at a boundary)
        epoch, offset = divmod(position, n_train)
        take = min(per_step - len(out), n_train - offset)
        out += np.random.default_rng([seed, epoch]).permutation(n_train)[offset : offset + take].tolist()
        position += take
    return out


def sampling_seed(seed: int, step: int) -> int:
    """The sampling seed of step ``step`` (worker k adds k)."""
    return seed * 1_000_003 + step * 1_009


# -- the run --------------------------------------------------------------------------------------------------


class Timer:
    """Seconds per named phase of one step: ``with timer("generate"): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t = time.perf_counter()
        yield
        self.seconds[phase] = time.perf_counter() - t


def run_train(
    config: Config, resume: bool = False, ray_address: str | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Run (or continue, with ``resume``) the run in ``config.train.run_dir``; returns its report. The Ray cluster:
    ``ray_address`` (``--ray-address``), else ``train.ray_address``, else Ray's own RAY_ADDRESS, else a local one."""
    config, train, eval_set = _prepare(config, resume)  # user mistakes fail here, before Ray starts
    run_dir, restarts = Path(config.train.run_dir), config.train.max_learner_restarts
    address = ray_address or config.train.ray_address
    with hold_run_dir(run_dir), ray_session(address):  # one writer per run folder, refused before Ray starts
        check_resources(config)
        for attempt in range(restarts + 1):
            try:
                return _run(config, train, eval_set, resume or attempt > 0, show_progress)
            except LearnerLostError as err:
                checkpoint = last_checkpoint(run_dir)
                where = (
                    f"its last complete checkpoint is {checkpoint.name}" if checkpoint else "it has no checkpoint yet"
                )
                if attempt == restarts:
                    raise LearnerLostError(
                        f"{err}. The run stopped; {where}: continue it with `rlad train resume={run_dir}` "
                        "(or set train.max_learner_restarts to let rlad do that itself)"
                    ) from err
                print(f"{err}; restarting the actors, {where} ({attempt + 1}/{restarts})", flush=True)
    raise AssertionError("unreachable")


def _prepare(config: Config, resume: bool):
    """The config with absolute paths and a built model, the training and evaluation samples; every check
    that needs no cluster, before anything is written."""
    from rlad.base_stage import with_base_stage
    from rlad.data.sources import rl_samples
    from rlad.policy import resolve_model_path
    from rlad.sft import check_sft_config

    config = absolute_paths(config)
    run_dir = Path(config.train.run_dir)
    grpo = config.grpo
    if resume:
        run_snapshot(run_dir)  # a run folder (a programmatic resume; the CLI's resume_config checked it too)
    if not resume and last_checkpoint(run_dir) is not None:
        raise ConfigError(f"train.run_dir {run_dir} already holds a run: continue it with resume={run_dir}, "
                          "or choose another train.run_dir")  # fmt: skip
    check_config(config.learner)  # learner.deepspeed, here rather than inside an actor (and before a base stage)
    config = with_base_stage(config)  # the tiny model's base stage, built (once, cached) here
    if config.model.path == "tiny":  # built once here, not by every actor
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, path=str(resolve_model_path(config.model)))
        )
    if config.train.warm_start == "base":  # GRPO alone, from the model itself (paper Table 5, "GRPO")
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, warm_start=str(resolve_model_path(config.model)))
        )
    resolve_model_path(config.model)
    config = split_threads(config)
    if not config.train.warm_start:
        check_sft_config(config)
    if config.train.warm_start and not Path(config.train.warm_start, "config.json").is_file():
        raise ConfigError(f"train.warm_start {config.train.warm_start!r} is not a checkpoint folder (no config.json)")
    check_run_dir(config)
    train, held_out = rl_samples(config)
    if len(train) < grpo.prompts_per_step:
        raise ConfigError(f"grpo.prompts_per_step={grpo.prompts_per_step} but only {len(train)} training questions")
    eval_set = random.Random(config.seed).sample(held_out, min(config.train.eval_samples, len(held_out)))
    return config, train, eval_set


def _write_report(run_dir: Path, report: dict[str, Any]) -> None:
    write_text_atomic(run_dir / "report.json", json.dumps(report, indent=2))


def _run(config: Config, train, eval_set, resume: bool, show_progress: bool) -> dict[str, Any]:
    """build -> sync -> eval -> loop -> eval -> export, from step 0 or (``resume``) the last complete checkpoint."""
    import ray

    run_dir, grpo = Path(config.train.run_dir), config.grpo
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / SNAPSHOT_NAME)
    checkpoint = last_checkpoint(run_dir) if resume else None
    state = json.loads((checkpoint / "state.json").read_text()) if checkpoint else {"step": 0, "version": 0}
    start, version = state["step"], state["version"]
    store = ReplayStore(run_dir / "replay")
    set_aside_replay_parts(store, start)
    resumed_report = checkpoint is not None and (run_dir / "report.json").is_file()
    report = json.loads((run_dir / "report.json").read_text()) if resumed_report else {"rows": {}}
    warm = warm_start(config, run_dir)  # the SFT stage, unless train.warm_start names a checkpoint

    cluster = Cluster(config, warm)  # build
    try:
        if checkpoint is not None:
            ray.get([learner.load.remote(str(checkpoint / "learner")) for learner in cluster.learners])
            print(f"resumed {run_dir} at step {start} from {checkpoint.name}", flush=True)
        started = time.perf_counter()
        cluster.sync_weights(version)  # sync: the engines onto the learners' weights
        if "warm_start" not in report["rows"] and eval_set:  # eval
            report["rows"].update(evaluate_on_cluster(cluster, eval_set, config, run_dir, "warm_start", show_progress))
            _write_report(run_dir, report)
        logbook = Logbook(run_dir, config, start, show_progress)
        if start == 0 and eval_set:
            logbook.log_eval(0, report["rows"], "warm_start")
        _loop(config, cluster, train, eval_set, store, logbook, start, version)  # loop
        logbook.bar.close()
        print(f"GRPO: {grpo.steps - start} steps -> {run_dir / 'metrics.jsonl'}, {run_dir / 'tensorboard'}, "
              f"{run_dir / 'replay'}, {run_dir / 'checkpoints'}", flush=True)  # fmt: skip
        if eval_set:  # eval
            report["rows"].update(evaluate_on_cluster(cluster, eval_set, config, run_dir, "grpo", show_progress))
            logbook.log_eval(grpo.steps, report["rows"], "grpo")
        logbook.close()
        export_from_learners(cluster.learners, warm, run_dir / "final", config)  # export
    except ray.exceptions.RayActorError as err:
        cluster.check_learners(err, "running the step")  # a dead learner: LearnerLostError
        raise
    finally:
        cluster.shutdown()
    report.update(run_dir=str(run_dir), steps=grpo.steps, final=str(run_dir / "final"), warm_start=warm,
                  grpo_seconds_this_session=round(time.perf_counter() - started, 1))  # fmt: skip
    _write_report(run_dir, report)
    return report


def _collect(cluster: Cluster, pending: Pending, step: int, version: int, run_dir: Path) -> list[Completion]:
    """A step's completions; a policy that samples from non-finite probabilities stops the run, naming what to do."""
    try:
        return cluster.collect(pending)
    except NonFiniteError as err:
        kept = [p.name for p in complete_checkpoints(run_dir)]
        raise NonFiniteError(
            f"step {step}: the policy diverged (version {version} samples from non-finite probabilities); the "
            f"run stopped. Checkpoints on disk: {', '.join(kept) or 'none'} (the newest may already hold "
            "diverged weights: move it aside and `rlad train resume=RUN_DIR grpo.lr=...` continues from the "
            "one before)"
        ) from err


def _loop(
    config: Config, cluster: Cluster, train, eval_set, store: ReplayStore, logbook: Logbook, start: int, version: int
):
    """The GRPO steps from ``start`` on: sample -> generate -> score -> store -> learn -> sync -> log."""
    grpo, run_dir = config.grpo, Path(config.train.run_dir)
    past = store.groups(min_step=max(0, start - grpo.max_staleness)) if grpo.replay_share else []
    nonfinite: list[int] = []  # the current run of steps whose update was skipped
    ahead: tuple[Pending, Pending | None] | None = None  # async: the next step's generation, sent before it learns

    def prompts(step: int) -> list[VerifiableSample]:
        return [train[i] for i in step_prompts(len(train), step, grpo.prompts_per_step, config.seed)]

    def start_rollout(step: int) -> tuple[Pending, Pending | None]:
        """The step's generation, sent: group_size samples a prompt (and, under grpo.baseline greedy, each
        prompt's greedy completion, what its samples are measured against)."""
        samples, seed = prompts(step), sampling_seed(config.seed, step)
        greedy = cluster.start_generate(samples, 1, True, seed) if grpo.baseline == "greedy" else None
        return cluster.start_generate(samples, grpo.group_size, False, seed), greedy

    for step in range(start, grpo.steps):
        timer = Timer()
        samples = prompts(step)
        with timer("generate"):  # async: only the part of this step's rollout that learning did not hide
            pending, pending_greedy = ahead or start_rollout(step)
            completions = _collect(cluster, pending, step, version, run_dir)
            greedy = pending_greedy and _collect(cluster, pending_greedy, step, version, run_dir)
        ahead = None
        if config.train.async_rollout and step + 1 < grpo.steps:  # overlaps score, store and learn below
            ahead = start_rollout(step + 1)
        with timer("reward"):
            records, scores, groups = score_groups(config, samples, completions, step, greedy)
        with timer("store"):
            store.append(groups)  # on disk before anything learns from it
        with timer("learn"):
            rollouts, kept, replayed = learner_batch(config, groups, past, version, step)
            learned = cluster.learn(rollouts) if rollouts else {}
        staleness = [version - g.policy_version for g in groups]  # versions between sampling and learning
        if ahead is not None:
            with timer("generate_ahead"):  # the next step's rollout, finishing after learning: engines idle for sync
                for part in filter(None, ahead):
                    _collect(cluster, part, step + 1, version, run_dir)
        if learned.get("skipped_steps", 0) >= grpo.epochs_per_step:  # no update at all this step
            nonfinite.append(step)
            limit = grpo.max_nonfinite_steps
            print(f"step {step}: non-finite loss or gradients, the update was skipped ({len(nonfinite)} in a row; "
                  f"grpo.max_nonfinite_steps={limit})", flush=True)  # fmt: skip
            if len(nonfinite) >= limit:
                last = last_checkpoint(run_dir)
                raise NonFiniteError(
                    f"steps {nonfinite} all had a non-finite loss or gradient (see metrics.jsonl: train/skipped_steps)"
                    f"; the run stopped. Last complete checkpoint: {last.name if last else 'none'}; check the reward "
                    "functions and the learning rate before resuming"
                )
        else:
            nonfinite = []
        metrics = {}
        if rollouts:
            version += 1
            with timer("sync"):
                metrics["sync/megabytes"] = cluster.sync_weights(version)
            every = config.rollout.freshness_steps
            if every and (step == start or (step + 1) % every == 0):
                with timer("freshness"):  # a completion just sampled, scored under the new weights by both sides
                    metrics.update(cluster.check_freshness(samples[0], completions[0].token_ids))
        metrics["faults/rollout_restarts"] = float(cluster.worker_restarts)
        if config.train.async_rollout:  # a synchronous run is never stale: no curve of zeros
            metrics["async/staleness_mean"] = float(np.mean(staleness))
            metrics["async/staleness_max"] = float(max(staleness))
        metrics["rollout/tokens_per_s"] = sum(len(c.token_ids) for c in completions) / max(pending.seconds, 1e-9)
        metrics["time/engine_generate"] = pending.engine_seconds + (
            pending_greedy.engine_seconds if pending_greedy else 0.0
        )
        metrics["time/engine_learn"] = learned.get("learn_seconds", 0.0)
        if grpo.replay_share:
            past = [g for g in past + informative(groups) if version - g.policy_version <= grpo.max_staleness]
        logbook.log(step, {**step_metrics(records, scores, completions, learned, timer, kept, replayed, groups),
                           **metrics})  # fmt: skip
        done = step + 1
        if done % config.train.save_steps == 0 or done == grpo.steps:
            state = {"step": done, "version": version, "data_position": done * grpo.prompts_per_step}
            save_checkpoint(run_dir, cluster.learners, state, config.train.save_total_limit)
        if config.train.eval_steps and done % config.train.eval_steps == 0 and done < grpo.steps and eval_set:
            name = f"step-{done:06d}"
            logbook.log_eval(
                done, evaluate_on_cluster(cluster, eval_set, config, run_dir, name, logbook.show_progress), name
            )
