"""Step time of rlad against TRL's GRPOTrainer, side by side in one run, and rlad's orchestration overhead.

Same tiny model (the demo's sizes as a text-only Qwen2: TRL cannot run a VLM on this machine, its
AutoProcessor needs torchvision; rlad trains the VLM itself here), same generated questions (without their
images), same group size, prompts per step, max new tokens, temperature, learning rate and loss (token-mean
surrogate, clip 0.2/0.28, no KL, one pass), same rewards (rlad's mix, handed to TRL as reward functions by
``rewards.trl``). Each trainer runs ``--steps`` optimizer steps, ``--rounds`` times interleaved; its step
time is the median over the steps after the first two (warm-up) and before the last (rlad writes its
checkpoint there), and the middle round is reported.

    python experiments/bench/step_vs_trl.py [--steps 12] [--group 8] [--prompts 4] [--tokens 32]

Prints seconds per step, completions per second and the ratio to TRL for rlad sync and rlad async; and, for
rlad sync, how the step divides into engine generation + learner forward/backward and everything else
(Ray calls, serialisation, rewards, replay writes, weight sync, logging).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import bench_config, make_data, table


def rlad_run(config, label: str) -> dict:
    from rlad.logbook import read_metrics
    from rlad.train import run_train

    run_train(config, show_progress=False)
    metrics = read_metrics(Path(config.train.run_dir) / "metrics.jsonl")
    body = metrics[2:-1] or metrics
    step = statistics.median(m["time/step"] for m in body)
    engine = statistics.median(m["time/engine_generate"] + m["time/engine_learn"] for m in body)
    return {"trainer": label, "s/step": step, "engine_s": engine, "metrics": body}


def trl_run(config, data: Path, out: Path) -> dict:
    """TRL's GRPOTrainer on the same model, questions, rewards and settings."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards.trl import sample_column, trl_rewards
    from rlad.data.sources import rl_samples
    from rlad.inputs import system_prompt
    from rlad.policy import resolve_model_path

    train, _ = rl_samples(config)
    reward_funcs, reward_weights = trl_rewards(config.rewards)  # rlad's mix as TRL reward functions
    system = {"role": "system", "content": system_prompt(config.output.blocks)}
    rows = [
        {"prompt": [system, {"role": "user", "content": s.question}], "rlad_sample": sample_column(s)} for s in train
    ]

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.start)

    g, p = config.grpo.group_size, config.grpo.prompts_per_step
    args = GRPOConfig(
        output_dir=str(out), max_steps=config.grpo.steps, per_device_train_batch_size=g * p, num_generations=g,
        max_completion_length=config.generation.max_new_tokens, temperature=config.generation.temperature,
        learning_rate=config.grpo.lr, beta=0.0, loss_type="dapo", epsilon=config.grpo.clip_eps_low,
        epsilon_high=config.grpo.clip_eps_high, num_iterations=1, use_cpu=True, bf16=False, logging_steps=1,
        save_strategy="no", report_to="none", seed=config.seed, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=config.grpo.weight_decay, max_grad_norm=config.grpo.max_grad_norm, dataloader_num_workers=0,
        reward_weights=reward_weights,
    )  # fmt: skip
    timer = StepTimes()
    trainer = GRPOTrainer(model=str(resolve_model_path(config.model)), reward_funcs=reward_funcs, args=args,
                          train_dataset=Dataset.from_list(rows), callbacks=[timer])  # fmt: skip
    trainer.train()
    body = timer.times[2:-1] or timer.times
    return {"trainer": "TRL GRPOTrainer", "s/step": statistics.median(body)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="each trainer runs this many times, interleaved")
    parser.add_argument("--out", default=None, help="also write the table as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlad-bench-"))
    data = make_data(work / "data")
    settings = dict(group=args.group, prompts=args.prompts, tokens=args.tokens, steps=args.steps)
    runs: dict[str, list[dict]] = {}
    for r in range(args.rounds):  # interleaved, so a slow spell of the machine hits every trainer alike
        for row in (
            trl_run(bench_config(data, work / f"trl{r}", **settings), data, work / f"trl{r}"),
            rlad_run(bench_config(data, work / f"sync{r}", **settings), "rlad sync"),
            rlad_run(
                bench_config(data, work / f"async{r}", **settings, more=("train.async_rollout=true",)), "rlad async"
            ),
        ):
            runs.setdefault(row["trainer"], []).append(row)
    rows = []
    for got in runs.values():  # the median step time of each trainer over its rounds
        got = sorted(got, key=lambda row: row["s/step"])
        rows.append({**got[len(got) // 2], "rounds": ", ".join(f"{row['s/step']:.3f}" for row in got)})
    completions = args.group * args.prompts
    for r in rows:
        r["completions/s"] = completions / r["s/step"]
        r["vs TRL"] = r["s/step"] / rows[0]["s/step"]
    print(f"\n{completions} completions of <= {args.tokens} tokens per step ({args.prompts} prompts x {args.group}); "
          f"median over steps 3..{args.steps - 1}")  # fmt: skip
    print(table(rows, ["trainer", "s/step", "completions/s", "vs TRL", "rounds"]))
    sync = rows[1]
    other = sync["s/step"] - sync["engine_s"]
    print(f"\nrlad sync, per step: engine generation + learner forward/backward {sync['engine_s']:.3f} s, everything "
          f"else {other:.3f} s = {100 * other / sync['s/step']:.1f} % of the step (target < 5 %)")  # fmt: skip
    phases = {k: statistics.median(m[k] for m in sync["metrics"]) for k in sync["metrics"][0] if k.startswith("time/")}
    print("  phases (median s): " + ", ".join(f"{k[5:]} {v:.3f}" for k, v in sorted(phases.items())))
    if args.out:
        Path(args.out).write_text(json.dumps([{k: v for k, v in r.items() if k != "metrics"} for r in rows], indent=2))


if __name__ == "__main__":
    main()
