"""Where a run's numbers go: TensorBoard scalars, ``metrics.jsonl`` (one line per step) and the progress bar.

On resume the logbook is opened at the checkpoint's step: TensorBoard purges events past it (``purge_step``)
and ``metrics.jsonl`` is cut back to the steps the checkpoint covers, so a resumed run's curves continue
the interrupted run's without duplicated or orphaned points.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlad.console import progress
from rlad.run_dir import write_text_atomic
from rlad.scoring import summarise

__all__ = ["Logbook", "eval_policy", "read_metrics", "step_metrics"]


def eval_policy(name: str) -> str:
    """Which policy an evaluation named ``name`` scored: the warm start, or GRPO's (finally or at a step)."""
    return "warm_start" if name == "warm_start" else "grpo"


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.jsonl``. A last line cut short (the process was killed while appending it) is
    left out: its step is after the last checkpoint, so a resume redoes and logs it again."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = [json.loads(line) for line in lines[:-1]]
    if lines:
        try:
            rows.append(json.loads(lines[-1]))
        except json.JSONDecodeError:
            pass
    return rows


class Logbook:
    def __init__(self, run_dir: Path, config: Any, start_step: int = 0, show_progress: bool = True):
        """``config``: the run's (its step count, TensorBoard's HParams tab, the held-out examples' layout)."""
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir, self.config = run_dir, config
        self.metrics_path, self.show_progress = run_dir / "metrics.jsonl", show_progress
        kept = [m for m in read_metrics(self.metrics_path) if m["step"] < start_step]
        write_text_atomic(self.metrics_path, "".join(json.dumps(m) + "\n" for m in kept))
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step or None)
        self._log_hparams(config)
        self.bar = progress(config.grpo.steps, "GRPO", "step", initial=start_step, disable=not show_progress)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """``metrics`` keys are TensorBoard tags (``reward/format``, ``time/generate``, ...)."""
        for tag, value in metrics.items():
            if not math.isnan(value):
                self.writer.add_scalar(tag, value, step)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        self.writer.flush()
        self.bar.update(1)
        shown = {"reward": "reward/total", "F1": "detect/patch_F1", "acc": "detect/answer_acc"}
        self.bar.set_postfix({k: f"{metrics[tag]:.3f}" for k, tag in shown.items() if tag in metrics})

    def log_eval(self, step: int, rows: dict[str, dict[str, float]], name: str) -> None:
        """An evaluation's rows ``name`` (greedy) and ``name_sampled`` under ``eval/<policy>/`` and
        ``eval_sampled/<policy>/``, where the policy is ``warm_start`` or ``grpo`` (a ``step-N`` evaluation is the
        GRPO policy at step N); and, from ``eval/<name>.jsonl``, a few held-out completions as text and images."""
        policy = eval_policy(name)
        for suffix, prefix in (("", "eval"), ("_sampled", "eval_sampled")):
            for metric, value in rows.get(name + suffix, {}).items():
                if metric != "n":
                    self.writer.add_scalar(f"{prefix}/{policy}/{metric}", value, step)
        completions = self.run_dir / "eval" / f"{name}.jsonl"
        k = self.config.train.eval_examples
        if k and completions.is_file():
            self._log_examples(step, policy, completions, k)
        self.writer.flush()

    def _log_examples(self, step: int, policy: str, completions: Path, k: int) -> None:
        import tempfile

        from PIL import Image

        from rlad.evaluate import pick_examples, write_overlays
        from rlad.scoring import read_completions

        records, blocks = list(read_completions(completions)), self.config.output.blocks
        chosen = pick_examples(records, blocks, k, self.config.seed + step)
        with tempfile.TemporaryDirectory() as tmp:  # the same records as the text below, in the same order
            for i, path in enumerate(write_overlays(chosen, blocks, Path(tmp))):
                image = np.asarray(Image.open(path).convert("RGB"))
                self.writer.add_image(f"examples/{policy}/{i}", image, step, dataformats="HWC")
        text = "\n\n".join(
            f"**{i}. {kind}: {r.sample.sample_id}** ({r.sample.class_name or '?'} / {r.sample.defect or '?'}; right "
            f"answer {r.sample.answer})\n\n    {r.sample.question.splitlines()[0]}\n\n    {r.completion}"
            for i, (kind, r) in enumerate(chosen)
        )  # indented lines: TensorBoard renders text as Markdown, and <seg> tags must show as written
        self.writer.add_text(f"examples/{policy}", text, step)

    def _log_hparams(self, config: Any) -> None:
        """The run's config, flattened, in TensorBoard's HParams tab, with the held-out results as its metrics."""
        from omegaconf import OmegaConf
        from torch.utils.tensorboard.summary import hparams

        flat = {}
        for key, value in _flatten(OmegaConf.to_container(OmegaConf.structured(config), resolve=True)).items():
            flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
        metrics = {f"eval/{p}/{m}": 0.0 for p in ("warm_start", "grpo") for m in ("total", "patch_F1", "answer_acc")}
        for summary in hparams(flat, metrics):  # into this run's own event file (add_hparams would make a new run)
            self.writer.file_writer.add_summary(summary)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()


def step_metrics(
    records, scores, completions, learned, timer: Any, kept: int, replayed: int, groups
) -> dict[str, float]:
    """A GRPO step's scalars by TensorBoard tag: rewards, detection, rollout, the learner's numbers and the
    seconds per phase (``timer``: the driver's ``Timer``)."""
    row = summarise(records, scores)["train"]
    m = {f"reward/{k}": float(np.mean([s[k] for s in scores])) for k in scores[0]}
    m["reward/std_in_group"] = float(np.mean([g.reward_std for g in groups]))
    m["batch/zero_std_groups"] = float(np.mean([g.reward_std <= 1e-6 for g in groups]))
    greedy = [g for g in groups if g.baseline is not None]  # grpo.baseline greedy: the greedy completions' rewards
    if greedy:
        rewards = {k: [g.baseline.rewards[k] for g in greedy] for k in greedy[0].baseline.rewards}
        rewards["total"] = [g.baseline.total for g in greedy]
        m.update({f"reward_greedy/{k}": float(np.mean(v)) for k, v in rewards.items()})
        m["batch/beats_greedy"] = float(np.mean([t > g.baseline.total for g in greedy for t in g.totals]))
    m["batch/groups_learned"] = float(kept)
    m["batch/groups_replayed"] = float(replayed)
    m.update({f"detect/{k}": row[k] for k in ("image_F1", "patch_F1", "IoU_ano", "bad_seg", "answer_acc")})
    lengths = [len(c.token_ids) for c in completions]
    m["rollout/response_length"] = float(np.mean(lengths))
    m["rollout/finished"] = float(np.mean([c.finished for c in completions]))
    for k, v in learned.items():
        if k not in ("learn_tokens", "learn_seconds"):
            m[f"train/{k}"] = v
    if learned:
        m["train/tokens_per_s"] = learned["learn_tokens"] / max(learned["learn_seconds"], 1e-9)
    m.update({f"time/{k}": v for k, v in timer.seconds.items()})
    m["time/step"] = time.perf_counter() - timer.start
    return m
