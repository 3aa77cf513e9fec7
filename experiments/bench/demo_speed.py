"""The demo's GRPO step on this tree's code and on a baseline revision's, side by side in one run.

Each side is a long-lived process importing its own tree (the baseline is extracted with ``git archive`` into a
temporary folder) and holding its own rollout engine and learner, built from ``configs/demo.yaml`` of its
tree on the same tiny checkpoint, the same generated questions and the same seeds. The driver asks them for
one step at a time, alternately (ABBA), so a slow spell of the shared machine hits both alike. One step is
``--prompts`` questions (8: the demo's step until 2026-12-04, now 16) x 8 completions sampled (generate),
rewards and group advantages (score), one GRPO update (learn), the new weights into the engine (sync). No Ray:
the phases themselves are measured, not the actor calls (experiments/bench/efficiency.py measures what Ray
adds).

The policy is the demo's untrained tiny Qwen2.5-VL, so completions run to ``--tokens`` (the demo's trained
policy writes ~85 tokens). Model-FLOP utilisation counts 2 FLOP per parameter use for generation and 6 for
learning (forward + backward) of the work a step needs: the vision tower on each image patch and the language
body on each prompt token once per group (its completions share them: a side that runs them once per completion
gets no credit for the repeats), the body on every completion token, the output layer on completion positions
(``step_flop``), attention excluded; against bf16 and fp32 matmul peaks measured at the start of the same run.

    python experiments/bench/demo_speed.py [--baseline 635bb9d] [--steps 6] [--prompts 8] [--quick] \
        [--tiny KEY=VALUE ...] [--now KEY=VALUE ...] [--then KEY=VALUE ...]

``--tiny`` gives both sides a larger (or smaller) tiny model, e.g. ``--tiny hidden_size=384
intermediate_size=1152 num_layers=6 num_heads=6 vision_depth=6 vision_hidden_size=384 vision_heads=6``: the
step and its model-FLOP utilisation at the size a learning run would use instead of the demo's.

Last line: ``speedup X.XXx (baseline A.AA s/step, now B.BB s/step)`` (medians of the whole step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("generate", "score", "learn", "sync")


# -- one side: a process serving steps ---------------------------------------------------------------------


def serve(spec: dict) -> None:
    """Build engine and learner from this process's tree, then answer each ``step K`` line with the phases'
    seconds and token counts as one JSON line."""
    import torch

    from rewards import RewardMix
    from rlad.config import load_config
    from rlad.data.readers import read_mmad
    from rlad.grpo import group_advantages
    from rlad.learner import Learner, Rollout, loss_units
    from rlad.policy import set_threads
    from rlad.scoring import ScoredRecord, score_records
    from rollout.worker import make_engine

    config = load_config("configs/demo.yaml", [
        f"data.root={spec['data']}", f"model.path={spec['checkpoint']}", f"generation.max_new_tokens={spec['tokens']}",
        *spec["overrides"],
    ])  # fmt: skip
    set_threads(spec["threads"])
    samples = read_mmad(Path(spec["data"]) / "mmad.json", Path(spec["data"]), grid=config.mask.grid, shots=0)[0]
    g, p = config.grpo.group_size, config.grpo.prompts_per_step
    engine = make_engine(config, spec["checkpoint"])
    # a baseline revision's Learner took the whole Config
    learner = getattr(Learner, "from_config", Learner)(config, spec["checkpoint"])
    learner.setup()
    mix = RewardMix(config.rewards)
    micro = -(-g * p // config.learner.micro_batch_size)
    # FLOP-counted parameters by where they run: the vision tower on image patches, the output layer on the
    # positions whose logits are kept, the rest of the language model on every token; the embedding is a lookup
    named = dict(engine.model.named_parameters())
    head = engine.model.get_output_embeddings().weight.numel()
    vision = sum(p.numel() for n, p in named.items() if ".visual." in f".{n}")
    body = sum(p.numel() for n, p in named.items() if ".visual." not in f".{n}" and "embed_tokens" not in n
               and "lm_head" not in n)  # fmt: skip
    ready = {"ready": True, "dtype": str(next(engine.model.parameters()).dtype),
             "params": {"vision": vision, "head": head, "body": body}}  # fmt: skip
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        step = int(line.split()[1])
        chosen = [samples[(step * p + i) % len(samples)] for i in range(p)]
        times = {}
        start = time.perf_counter()
        completions = engine.generate(chosen, n=g, seed=1000 + step)
        times["generate"] = time.perf_counter() - start

        start = time.perf_counter()
        records = [ScoredRecord(c.text, chosen[i // g], "train") for i, c in enumerate(completions)]
        totals = torch.tensor([s["total"] for s in score_records(records, mix)], dtype=torch.float64)
        advantages = group_advantages(totals, g, config.grpo.advantage_scale).tolist()
        rollouts = [Rollout(chosen[i // g], c.token_ids, c.logprobs, advantages[i]) for i, c in enumerate(completions)]
        times["score"] = time.perf_counter() - start

        start = time.perf_counter()
        metrics = learner.learn(rollouts, loss_units(rollouts, config.grpo.aggregation), micro)
        times["learn"] = time.perf_counter() - start

        start = time.perf_counter()
        engine.load_weights(learner.state_dict(), step + 1)
        times["sync"] = time.perf_counter() - start

        completion_tokens = sum(len(c.token_ids) for c in completions)
        prompts = [learner.builder.encode_prompt(s) for s in chosen]
        prompt_tokens = sum(len(e.input_ids) for e in prompts)  # once per group: the work the step needs
        patches = sum(int(e.image_grid_thw.prod(-1).sum()) for e in prompts)
        print(json.dumps({"times": times, "completion_tokens": completion_tokens, "prompt_tokens": prompt_tokens,
                          "patches": patches,
                          "logprob_mismatch": metrics.get("logprob_mismatch")}), flush=True)  # fmt: skip


# -- the driver ---------------------------------------------------------------------------------------------


def matmul_peak(dtype_name: str, threads: int, seconds: float = 1.0) -> float:
    """FLOP/s of a 2048x512 by 512x1536 product in ``dtype_name`` on ``threads`` threads, best of short runs and of
    two layouts: ``a @ b`` and ``linear(a, w)`` (``a @ w.T``, what every layer of the model calls). torch takes
    different kernels for them: on an AVX2-only EPYC (torch 2.13) bf16 ran at ~1 GFLOP/s as ``a @ b`` and ~18
    as ``linear``, fp32 at ~160 either way."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(2048, 512, dtype=dtype), torch.randn(512, 1536, dtype=dtype)
    w = b.t().contiguous()
    best = 0.0
    for product in (lambda: a @ b, lambda: torch.nn.functional.linear(a, w)):
        product()
        end = time.perf_counter() + seconds / 2
        while time.perf_counter() < end:
            start = time.perf_counter()
            product()
            best = max(best, 2 * 2048 * 512 * 1536 / (time.perf_counter() - start))
    return best


def step_flop(params: dict, step: dict) -> float:
    """Multiply-adds of one forward pass over the step's needed work (x2 for a forward, x6 for forward +
    backward): the vision tower over each group's image patches and the language body over each group's prompt
    once, the body over every completion token, the output layer over the completion positions only (both the
    engine's decoding and the learner's kept logits)."""
    tokens = step["prompt_tokens"] + step["completion_tokens"]
    return params["vision"] * step["patches"] + params["body"] * tokens + params["head"] * step["completion_tokens"]


class Side:
    def __init__(self, name: str, tree: Path, spec: dict):
        env = dict(os.environ, PYTHONPATH=str(tree), DS_ACCELERATOR="cpu", TRANSFORMERS_VERBOSITY="error")
        self.name = name
        self.log = Path(spec["data"]).parent / f"{name.split()[0]}.log"
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", json.dumps(spec)],
            cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True,
        )  # fmt: skip
        self.ready = self._read()
        self.steps: list[dict] = []

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                tail = "\n".join(self.log.read_text().splitlines()[-20:])
                raise RuntimeError(f"the {self.name} side exited (code {self.proc.wait()}); {self.log} ends:\n{tail}")
            if line.startswith("{"):
                return json.loads(line)

    def step(self, k: int, keep: bool) -> None:
        self.proc.stdin.write(f"step {k}\n")
        self.proc.stdin.flush()
        out = self._read()
        if keep:
            self.steps.append(out)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()

    def median(self, phase: str) -> float:
        return statistics.median(s["times"][phase] for s in self.steps)

    def step_seconds(self) -> float:
        return statistics.median(sum(s["times"].values()) for s in self.steps)


def extract(revision: str, folder: Path) -> Path:
    """The tree of ``revision`` (git archive, no worktree bookkeeping) under ``folder``."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="635bb9d", help="git revision to compare against (default 635bb9d)")
    parser.add_argument("--steps", type=int, default=6, help="measured steps per side (after one warm-up each)")
    parser.add_argument("--tokens", type=int, default=96, help="max new tokens (the demo's policy writes ~85)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per side (0: every core)")
    parser.add_argument("--prompts", type=int, default=8, help="questions a step, both sides")
    parser.add_argument(
        "--now",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for this tree's side only (a lever to measure: model.dtype=bfloat16)",
    )
    parser.add_argument(
        "--then",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for the baseline's side only (one lever against another: --baseline HEAD "
        "--then model.dtype=bfloat16 --now model.dtype=bfloat16 learner.micro_batch_size=16)",
    )
    parser.add_argument(
        "--tiny",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="sizes of the tiny model both sides run (rlad/tiny.py TinySpec fields: hidden_size=384 ...)",
    )
    parser.add_argument("--quick", action="store_true", help="3 measured steps, 64 tokens: about 3 minutes")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(json.loads(args.serve))
    if args.quick:
        args.steps, args.tokens = 3, 64
    threads = args.threads or os.cpu_count() or 1

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "experiments" / "bench"))
    from common import make_data, table

    from rlad.config import load_config
    from rlad.policy import cpu_bf16_units, parameter_count, resolve_model_path

    work = Path(tempfile.mkdtemp(prefix="rlad-demo-speed-"))
    data = make_data(work / "data", per_class=8)
    tiny = [f"model.tiny.{kv}" for kv in args.tiny]
    demo = load_config("configs/demo.yaml", tiny)
    checkpoint = str(resolve_model_path(demo.model))
    peaks = {"bf16": matmul_peak("bfloat16", threads), "fp32": matmul_peak("float32", threads)}
    # identical work on both sides, whatever each tree's demo.yaml says the step is (the demo went from 8 to 16
    # questions a step on 2026-12-04; the README's ratios are of the 8-question step)
    step = [f"grpo.prompts_per_step={args.prompts}", f"rollout.batch_size={demo.grpo.group_size * args.prompts}"]
    spec = {"data": str(data), "checkpoint": checkpoint, "tokens": args.tokens, "threads": threads, "overrides": step}
    base_tree = extract(args.baseline, work / "baseline")
    now, then = " ".join(args.now), " ".join(args.then)
    sides = [
        Side(f"baseline {args.baseline} {then}".strip(), base_tree, spec | {"overrides": [*step, *args.then]}),
        Side(f"now {now}".strip(), ROOT, spec | {"overrides": [*step, *args.now]}),
    ]
    for side in sides:
        side.step(0, keep=False)  # warm-up
    for k in range(1, args.steps + 1):
        for side in sides if k % 4 in (1, 0) else sides[::-1]:  # ABBA
            side.step(k, keep=True)
    for side in sides:
        side.close()

    rows = []
    for side in sides:
        gen_tokens = statistics.median(s["completion_tokens"] for s in side.steps)
        all_tokens = statistics.median(s["completion_tokens"] + s["prompt_tokens"] for s in side.steps)
        gen_s, learn_s = side.median("generate"), side.median("learn")
        row = {"side": side.name, "dtype": side.ready["dtype"].removeprefix("torch.")}
        row |= {f"{p} s": side.median(p) for p in PHASES}
        row |= {"step s": side.step_seconds(), "gen tok/s": gen_tokens / gen_s, "learn tok/s": all_tokens / learn_s}
        flop = step_flop(side.ready["params"], side.steps[-1])
        row["rollout MFU bf16/fp32 %"] = "/".join(f"{100 * 2 * flop / gen_s / peaks[k]:.2f}" for k in ("bf16", "fp32"))
        row["learner MFU bf16/fp32 %"] = "/".join(f"{100 * 6 * flop / learn_s / peaks[k]:.2f}"
                                                   for k in ("bf16", "fp32"))  # fmt: skip
        rows.append(row)
    base, now = sides
    ratio = {"side": "ratio baseline/now"} | {f"{p} s": base.median(p) / now.median(p) for p in PHASES}
    ratio["step s"] = base.step_seconds() / now.step_seconds()
    rows.append(ratio)
    split = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in base.ready["params"].items())
    print(f"\n{parameter_count(checkpoint) / 1e6:.2f} M params ({split}), {threads} threads, "
          f"CPU bf16 units: {cpu_bf16_units() or 'none'}, tiny spec: {' '.join(args.tiny) or 'demo'}, "
          f"median of {args.steps} steps per side;\nmatmul peak bf16 {peaks['bf16'] / 1e12:.3f} / "
          f"fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s")  # fmt: skip
    columns = ["side", "dtype", *[f"{p} s" for p in PHASES], "step s", "gen tok/s", "learn tok/s",
               "rollout MFU bf16/fp32 %", "learner MFU bf16/fp32 %"]  # fmt: skip
    print(table(rows, columns))
    print(f"speedup {ratio['step s']:.2f}x (baseline {base.step_seconds():.2f} s/step, "
          f"now {now.step_seconds():.2f} s/step)")  # fmt: skip


if __name__ == "__main__":
    main()
