"""Speed of the tiny policy on this machine: one SFT step, and one rollout of 16 completions.

Target (issue "Policy model and SFT"): one SFT step and one rollout of 16 completions each well under a
second. Measured side by side in one run, median of --repeats, on the demo config's settings
(224 px, grid 8, 1-shot prompts and 0-shot prompts). The rollout generates exactly --tokens new tokens
per completion (no early stop), the length of a demo target, so the figure does not depend on training.

    python experiments/bench_tiny_policy.py [--repeats 5] [--tokens 96]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time

import torch

from rlad.config import GenerationConfig, ModelConfig
from rlad.data.questions import sft_target
from rlad.data.readers import read_mmad
from rlad.data.synth import SynthSpec, synthesize
from rlad.inputs import to_model
from rlad.policy import load_policy
from rollout.decode import decode
from rollout.engine import banned_tokens


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sft_step(model, optimizer, batch) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def rollout_without_early_stop(policy, settings: GenerationConfig, sample, n: int) -> None:
    """``n`` completions of ``sample`` as the transformers engine samples them (``rollout.decode``), every one
    run to ``max_new_tokens``: the end-of-turn token is banned and nothing stops a row, whatever the weights."""
    builder = policy.builder
    batch = to_model(builder.collate([builder.encode_prompt(sample)], padding_side="left"), "cpu", policy.model.dtype)
    banned = [*banned_tokens(builder.tokenizer), builder.end_of_turn_id]
    pad = builder.tokenizer.pad_token_id
    decode(policy.model, batch, n, settings, greedy=False, stop=[], banned=banned, pad_id=pad)


def row(shots: int, what: str, seconds: float) -> None:
    print(f"{shots:<6}{what:<34}{seconds:>9.3f}{1.0:>8.1f}{1.0 / seconds:>7.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=96)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(SynthSpec(classes=("pill", "wood"), images_per_class=8, references_per_class=1, size=224), tmp, 1)
        samples, _ = read_mmad(f"{tmp}/mmad.json", tmp, grid=8, shots=1)
        print(f"torch threads: {torch.get_num_threads()}; new tokens per completion: {args.tokens}")
        print(f"{'shots':<6}{'what':<34}{'seconds':>9}{'target':>8}{'margin':>8}")
        for shots in (1, 0):
            policy = load_policy(ModelConfig(image_size=224), shots=shots, trainable=True)
            optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-4)
            for batch_size in (8, 16):
                batch = policy.builder.collate(
                    [policy.builder.encode_sft(s, sft_target(s)) for s in samples[:batch_size]]
                )
                seconds = median_seconds(functools.partial(sft_step, policy.model, optimizer, batch), args.repeats)
                row(shots, f"SFT step, batch {batch_size}", seconds)
            policy.model.eval()
            settings = GenerationConfig(max_new_tokens=args.tokens)
            rollout = functools.partial(rollout_without_early_stop, policy, settings, samples[0], 16)
            seconds = median_seconds(rollout, args.repeats)
            row(shots, f"rollout: 16 x {args.tokens} tokens", seconds)


if __name__ == "__main__":
    main()
