"""Step time and memory as the work grows: group size G (4, 8, 16) at several max-new-token budgets, on the
tiny Qwen2.5-VL through rlad's Ray actors (one rollout worker, one learner), side by side in one run.

A step here is generation of ``--prompts`` x G completions plus the learner's GRPO step on them, by the
random-init model (which almost never ends its turn early: the work is close to G x tokens; the table reports
the tokens actually generated and the cost per token). Peak resident memory of the rollout worker and the
learner processes is read from Linux (``VmHWM``) after each setting (the peak over the run so far: settings go
from small to large).

    python experiments/bench/scaling.py [--repeats 2] [--prompts 2] [--tokens 16 32 64] [--png FILE]

Check: time per completion-token stays flat or falls as G x tokens grows (no worse than linear).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import ray
from common import make_data, table

from rlad.config import load_config


def peak_rss_mib(title: str) -> float:
    """The largest peak RSS among processes whose title contains ``title`` (Ray names actors ``ray::Class``)."""
    peaks = []
    for proc in psutil.process_iter(["cmdline"]):
        if title in " ".join(proc.info["cmdline"] or []):
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                continue
            peaks += [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM")]
    return max(peaks, default=float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--groups", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--png", default="experiments/figures/bench_scaling.png")
    args = parser.parse_args()

    from rlad.cluster import Cluster
    from rlad.data.readers import read_mmad
    from rlad.learner import Rollout
    from rlad.policy import resolve_model_path

    work = Path(tempfile.mkdtemp(prefix="rlad-bench-"))
    data = make_data(work / "data")
    samples = read_mmad(data / "mmad.json", data, grid=8, shots=0)[0][: args.prompts]
    ray.init(num_cpus=2, include_dashboard=False)
    rows = []
    for tokens in args.tokens:
        config = load_config(None, [
            "model.path=tiny", "model.image_size=224", "data.shots=0", "mask.grid=8",
            f"generation.max_new_tokens={tokens}",
            f"rollout.batch_size={max(args.groups) * args.prompts}", "learner.micro_batch_size=16", "grpo.lr=1e-6",
            "rollout.num_cpus=0.5", "learner.num_cpus=0.5", f"train.run_dir={work / 'run'}",
        ])  # fmt: skip
        config.model.path = str(resolve_model_path(config.model))
        cluster = Cluster(config, config.model.path)
        cluster.sync_weights(0)
        for group in args.groups:
            times = []
            for r in range(args.repeats + 1):
                start = time.perf_counter()
                completions = cluster.generate(samples, group, greedy=False, seed=r)
                rollouts = [Rollout(samples[i // group], c.token_ids, c.logprobs, 1.0 - 2 * (i % 2))
                            for i, c in enumerate(completions)]  # fmt: skip
                cluster.learn(rollouts)
                times.append(time.perf_counter() - start)
            step = statistics.median(times[1:])  # the first is a warm-up
            work_tokens = sum(len(c.token_ids) for c in completions)
            rows.append({"G": group, "max tokens": tokens, "tokens": work_tokens, "s/step": step,
                         "ms/token": 1000 * step / work_tokens, "rollout MiB": peak_rss_mib("ray::RolloutWorker"),
                         "learner MiB": peak_rss_mib("ray::Learner")})  # fmt: skip
            print(table(rows[-1:], list(rows[-1])), flush=True)
        cluster.shutdown()
        time.sleep(2)
    print()
    print(table(rows, list(rows[0])))
    base = rows[0]
    worst = max(r["ms/token"] / base["ms/token"] for r in rows)
    largest = rows[-1]["ms/token"] / base["ms/token"]
    print(
        f"\ncost per token, largest / smallest setting: {largest:.2f}; worst over all settings {worst:.2f} "
        "(<= 1: step time grows no worse than linearly in G x tokens)"
    )
    _plot(rows, args.png)
    ray.shutdown()


def _plot(rows: list[dict], png: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for tokens in sorted({r["max tokens"] for r in rows}):
        part = [r for r in rows if r["max tokens"] == tokens]
        left.plot([r["G"] for r in part], [r["s/step"] for r in part], "o-", label=f"{tokens} new tokens")
        right.plot([r["G"] for r in part], [r["learner MiB"] for r in part], "o-", label=f"learner, {tokens}")
        right.plot([r["G"] for r in part], [r["rollout MiB"] for r in part], "x--", label=f"rollout, {tokens}")
    left.set(xlabel="group size G", ylabel="seconds per step (generate + learn)", xscale="log", yscale="log")
    groups = sorted({r["G"] for r in rows})
    left.set_xticks(groups, [str(g) for g in groups])
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.set(xlabel="group size G", ylabel="peak resident memory so far (MiB)")
    for ax in (left, right):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("rlad step time and memory vs work (tiny Qwen2.5-VL, CPU)")
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
