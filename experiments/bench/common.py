"""Shared pieces of the benchmarks: one generated data set, the tiny text-only policy, one config, medians.

Every benchmark compares things side by side in one run on the same machine, so the figures to read are the
ratios (absolute seconds on a shared 2-core machine are noise)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from rlad.config import Config, load_config
from rlad.tables import markdown_table

# the tiny text-only Qwen2 (what TRL can train here; rlad trains the VLM too): the demo's sizes, no vision tower
TEXT_TINY = ["model.path=tiny", "model.tiny.text_only=true", "data.text_only=true", "data.shots=0"]


def make_data(folder: Path, per_class: int = 8) -> Path:
    """A small generated benchmark (2 classes) under ``folder``, built once."""
    from rlad.data.synth import SynthSpec, synthesize

    if not (folder / "mmad.json").is_file():
        synthesize(SynthSpec(classes=("pill", "wood"), images_per_class=per_class, references_per_class=1, size=224),
                   folder, 1)  # fmt: skip
    return folder


def bench_config(data: Path, run_dir: Path, *, group: int, prompts: int, tokens: int, steps: int,
                 more: tuple[str, ...] = ()) -> Config:  # fmt: skip
    """One GRPO setting both trainers share: group size, prompts per step, max new tokens, loss settings."""
    return load_config(None, [
        f"data.root={data}", "mask.grid=8", "model.image_size=224", "data.eval_fraction=0.25", *TEXT_TINY,
        f"train.run_dir={run_dir}", "train.warm_start=base", f"grpo.steps={steps}", f"grpo.group_size={group}",
        f"grpo.prompts_per_step={prompts}", f"generation.max_new_tokens={tokens}", "generation.temperature=1.0",
        "grpo.lr=1e-5", "grpo.aggregation=token_mean", "grpo.clip_eps_low=0.2", "grpo.clip_eps_high=0.28",
        "grpo.kl_coef=0", f"learner.micro_batch_size={group * prompts}", f"rollout.batch_size={group * prompts}",
        f"train.save_steps={steps}", "train.save_total_limit=1", "train.eval_samples=0", "train.eval_sampled=0",
        "rollout.num_cpus=0.5", "learner.num_cpus=0.5", *more,
    ])  # fmt: skip


def paired_medians(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of two functions run alternately (after one warm-up each): a slow spell of a shared
    machine then hits both alike, which back-to-back blocks of repeats do not guarantee."""
    first()
    second()
    a, b = [], []
    for r in range(repeats):
        order = ((first, a), (second, b)) if r % 2 == 0 else ((second, b), (first, a))  # ABBA: no side always first
        for fn, times in order:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def table(rows: list[dict], columns: list[str]) -> str:
    """``rows`` as a Markdown table (rlad's own, ``rlad.tables``), ready to paste into a note or the README."""
    return markdown_table(columns, [[_fmt(r.get(c)) for c in columns] for r in rows])


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)
