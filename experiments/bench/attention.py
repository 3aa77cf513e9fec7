"""rlad's CPU attention (``rlad.attention.cpu_attention``) against transformers' sdpa at the project's shapes.

Each case runs both functions alternately (ABAB...) and prints milliseconds per call (forward, or forward +
backward for the training cases), their ratio, and which path ``cpu_attention`` takes there (``matmul`` or
``sdpa``: where it hands over, the ratio is ~1 by construction).

    python experiments/bench/attention.py [--repeats 30] [--threads 0]

Shapes: the demo's decode step (16 prompts x 8 completions over a 291-token static cache, 4 query / 2 key-value
heads of 32) and the larger tiny spec's (6 / 2 heads of 64); the learner's completions behind their shared
prompt (8 rows x 63 queries over ~290 keys) at both head sizes; the prefill of 16 prompts; an SFT batch's rows
behind their shared prefix (230 queries over 348 keys); in fp32 and bf16. The "group" decode cases are the
rollout engine's steps with ``rlad.attention.SharedPrompt`` (groups of 8 rows over one copy of a 291-token prompt,
48 tokens of their completions written, a static cache 160 tokens past the prompt): sdpa reads the whole cache
of every row, rlad one prompt copy per group and each row's written completion (path ``group``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rlad.attention import SHARED_PROMPT, SharedPrompt, cpu_attention, uses_matmul
from rlad.policy import cpu_bf16_units

GROUP, PROMPT, WRITTEN, NEW = 8, 291, 48, 160  # the group decode cases' layout of the cache
CASES = [  # name, batch, heads, kv heads, queries, keys, head dim, backward
    ("decode, demo", 128, 4, 2, 1, 291, 32, False),
    ("decode, 384-wide", 128, 6, 2, 1, 291, 64, False),
    ("decode a group, demo", 128, 4, 2, 1, PROMPT + NEW, 32, False),
    ("decode a group, 384-wide", 128, 6, 2, 1, PROMPT + NEW, 64, False),
    ("learn, demo", 8, 4, 2, 63, 290, 32, True),
    ("learn, 384-wide", 8, 6, 2, 63, 290, 64, True),
    ("prefill, 384-wide", 16, 6, 2, 227, 227, 64, False),
    ("SFT rows behind the shared prefix, 384-wide", 8, 6, 2, 230, 348, 64, True),
]


class _Layer(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True


def _timer(fn, backward: bool):
    def run():
        out = fn()
        if backward:
            out.sum().backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    print(f"{torch.get_num_threads()} threads, CPU bf16 units: {cpu_bf16_units() or 'none'}, torch {torch.__version__}")
    print("| case | dtype | path | sdpa ms | rlad ms | sdpa / rlad |\n|---|---|---|---|---|---|")
    for name, batch, heads, kv, q_len, k_len, dim, backward in CASES:
        for dtype in (torch.float32, torch.bfloat16):
            make = lambda *shape: torch.randn(*shape).to(dtype).requires_grad_(backward)  # noqa: B023, E731
            q, k, v = make(batch, heads, q_len, dim), make(batch, kv, k_len, dim), make(batch, kv, k_len, dim)
            mask = torch.ones(batch, 1, q_len, k_len, dtype=torch.bool).tril(k_len - q_len)
            extra = {}
            if "group" in name:  # a group's rows share their prompt (and its padding); the cache's tail is unwritten
                with torch.no_grad():
                    for t in (k, v):
                        t[:, :, :PROMPT] = t[::GROUP, :, :PROMPT].repeat_interleave(GROUP, 0)
                mask[..., PROMPT + WRITTEN :] = False
                mask[: 3 * GROUP, ..., :20] = False  # left padding in three of the groups
                extra = {SHARED_PROMPT: SharedPrompt(GROUP, PROMPT, PROMPT + WRITTEN)}
            else:
                mask[::3, :, :, :20] = False  # left padding in a third of the rows
            layer = _Layer(heads // kv)
            runs = {
                "sdpa": _timer(lambda: sdpa_attention_forward(layer, q, k, v, mask)[0], backward),  # noqa: B023
                "rlad": _timer(lambda: cpu_attention(layer, q, k, v, mask, **extra)[0], backward),  # noqa: B023
            }
            seconds = {key: [] for key in runs}
            for run in runs.values():
                run()
            for _ in range(args.repeats):
                for key, run in runs.items():
                    start = time.perf_counter()
                    run()
                    seconds[key].append(time.perf_counter() - start)
            ms = {key: 1e3 * sorted(s)[len(s) // 2] for key, s in seconds.items()}
            with torch.set_grad_enabled(backward):
                path = "group" if extra else "matmul" if uses_matmul(q, mask, True, 0.0) else "sdpa"
            print(f"| {name} | {str(dtype).removeprefix('torch.')} | {path} | {ms['sdpa']:.3f} | {ms['rlad']:.3f} | "
                  f"{ms['sdpa'] / ms['rlad']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
