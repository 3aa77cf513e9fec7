"""The GPU path, checked in one process on one GPU: a Qwen2.5-VL of realistic size (random init, built here) as
the learner (DeepSpeed ZeRO-2/3, bf16, gradient checkpointing) and the transformers rollout engine on the
same GPU; one GRPO step, the weight update into the engine, and the freshness check.

No Ray and no vLLM: the GPU image here lacks them and their wheels exceed what travels to it. What it prints:
generation and learner tokens/s, model-FLOPs utilisation against a bf16 matmul peak it measures on the same GPU
(8192^3 products; ``--peak-tflops`` to give one instead), peak
memory, and the freshness gap (mean |engine - learner| log-prob per token, before and after the update: the
update must close it).

    python experiments/gpu/check_gpu_path.py [--size 1.5b|3b|tiny] [--zero 2|3] [--group 8] [--tokens 128] [--steps 2]

Needs torch with CUDA, transformers, deepspeed and omegaconf (on a machine without network, install their
wheels from a folder: experiments/gpu/wheels.txt, README "Verified on one H100").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {  # language model of Qwen2.5-VL-3B / a 1.5B-class one, Qwen2.5-VL's vision tower; the tiny tokenizer
    "3b": dict(image_size=448, hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16, num_kv_heads=2,
               vision_depth=32, vision_hidden_size=1280, vision_heads=16),
    "1.5b": dict(image_size=448, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2,
                 vision_depth=32, vision_hidden_size=1280, vision_heads=16),
    "tiny": {},
}  # fmt: skip


class _NoCuda:
    """``torch.cuda``'s timing and memory calls, as no-ops for a CPU smoke run."""

    def synchronize(self) -> None: ...

    def reset_peak_memory_stats(self) -> None: ...

    def max_memory_allocated(self) -> int:
        return 0


def build(size: str, out: Path) -> Path:
    from rlad.tiny import TinySpec, build_tiny

    spec = TinySpec(**SIZES[size])
    if not (out / "config.json").is_file():
        build_tiny(spec, out)
    return out


def matmul_tflops(device: str, dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    """Dense n x n x n products of random ``dtype`` matrices on ``device``, after three warm-ups: TFLOP/s."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1.5b", choices=sorted(SIZES))
    parser.add_argument("--zero", type=int, default=3, choices=[0, 2, 3])
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128, help="max new tokens")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 peak (default: measured)")
    parser.add_argument("--steps", type=int, default=2, help="steps run; the last is timed (the first warms up)")
    parser.add_argument("--profile", default=None, help="profile the timed step; its top ops table goes here")
    parser.add_argument(
        "--loop-windows",
        action="store_true",
        help="transformers' one vision attention call a window, not rlad's one a block (to compare)",
    )
    parser.add_argument("--cpu", action="store_true", help="a smoke run of this script on a CPU (fp32, gloo)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: at least 1 (the last step is the one timed)")
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("this check needs a CUDA GPU (--cpu runs it as a smoke test on a CPU)")
    gpus, dtype = (0, "float32") if args.cpu else (1, "bfloat16")
    cuda = _NoCuda() if args.cpu else torch.cuda

    from rlad.config import load_config
    from rlad.data.readers import read_mmad
    from rlad.data.synth import SynthSpec, synthesize
    from rlad.grpo import group_advantages
    from rlad.learner import Learner, Rollout, loss_units
    from rollout.worker import make_engine

    if args.peak_tflops is None:
        args.peak_tflops = (
            matmul_tflops("cpu", torch.float32, 1024) if args.cpu else matmul_tflops("cuda", torch.bfloat16)
        )
        print(f"measured matmul peak: {args.peak_tflops:.1f} TFLOP/s ({'fp32, CPU' if args.cpu else 'bf16'})")

    work = Path(tempfile.mkdtemp(prefix="rlad-gpu-"))
    start = time.perf_counter()
    checkpoint = str(build(args.size, work / f"model-{args.size}"))
    build_s = time.perf_counter() - start
    synthesize(
        SynthSpec(classes=("pill", "wood"), images_per_class=8, references_per_class=1, size=448), work / "data", 1
    )
    config = load_config(None, [
        f"model.path={checkpoint}", f"model.dtype={dtype}", "model.image_size=448", "model.gradient_checkpointing=true",
        "learner.share_prompts=false", "data.shots=1", "mask.grid=16", f"generation.max_new_tokens={args.tokens}",
        f"grpo.group_size={args.group}",
        "grpo.lr=1e-6", f"learner.zero_stage={args.zero}", f"learner.num_gpus={gpus}", f"rollout.num_gpus={gpus}",
        "learner.micro_batch_size=8", f"rollout.batch_size={args.group * args.prompts}",
    ])  # fmt: skip
    samples = read_mmad(work / "data" / "mmad.json", work / "data", grid=16, shots=1)[0][: args.prompts]
    learner = Learner.from_config(config, checkpoint)
    learner.setup()
    engine = make_engine(config, checkpoint)
    params = sum(p.numel() for p in engine.model.parameters())
    if args.loop_windows:
        from rlad.vision_windows import batch_vision_windows

        for model in (learner.policy.model, engine.model):
            batch_vision_windows(model, batched=False)
    print(f"model {args.size}: {params / 1e9:.2f} B parameters; ZeRO-{args.zero}, {dtype}, gradient checkpointing")
    cuda.reset_peak_memory_stats()

    def step(seed: int):
        """Generate a group per prompt, then one learner step on them: (completions, rollouts, metrics,
        generate seconds, learn seconds)."""
        cuda.synchronize()
        start = time.perf_counter()
        completions = engine.generate(samples, n=args.group, seed=seed)
        cuda.synchronize()
        gen_s = time.perf_counter() - start
        # fake rewards (random): the step's cost does not depend on them
        totals = torch.tensor(np.random.default_rng(seed).random(len(completions)))
        adv = group_advantages(totals, args.group, "group").tolist()
        rollouts = [
            Rollout(samples[i // args.group], c.token_ids, c.logprobs, adv[i]) for i, c in enumerate(completions)
        ]
        micro = -(-len(rollouts) // config.learner.micro_batch_size)
        cuda.synchronize()
        start = time.perf_counter()
        metrics = learner.learn(rollouts, loss_units(rollouts, "token_mean"), micro)
        cuda.synchronize()
        return completions, rollouts, metrics, gen_s, time.perf_counter() - start

    # the first steps pay for warm-up (allocator, kernels' autotuning, DeepSpeed's buffers): the last one is timed
    for seed in range(args.steps - 1):
        *_, warm_gen_s, warm_learn_s = step(seed)
        print(f"warm-up step {seed}: generate {warm_gen_s:.1f} s, learn {warm_learn_s:.1f} s")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([] if args.cpu else [ProfilerActivity.CUDA])
        with profile(activities=activities) as prof:
            completions, rollouts, metrics, gen_s, learn_s = step(args.steps - 1)
        sort = "self_cpu_time_total" if args.cpu else "self_cuda_time_total"
        Path(args.profile).write_text(prof.key_averages().table(sort_by=sort, row_limit=40))
        print(prof.key_averages().table(sort_by=sort, row_limit=25))
    else:
        completions, rollouts, metrics, gen_s, learn_s = step(args.steps - 1)
    gen_tokens = sum(len(c.token_ids) for c in completions)

    # model-FLOPs utilisation: 6 N per token trained (forward + backward; checkpointing's recomputation not
    # counted), where the language model's N runs over every token of each sequence (prompt included) and the
    # vision tower's over every image patch (4 per image token: the 2x2 merge); 2 N of the language model per token
    # generated (the vision tower's one pass per prompt and attention not counted)
    vision = (
        sum(p.numel() for p in engine.model.model.visual.parameters()) if hasattr(engine.model.model, "visual") else 0
    )
    encoded = {s.sample_id: learner.builder.encode_prompt(s) for s in samples}
    seq_tokens = sum(len(encoded[r.sample.sample_id].input_ids) + len(r.token_ids) for r in rollouts)
    patches = sum(int(encoded[r.sample.sample_id].image_grid_thw.prod(dim=1).sum()) for r in rollouts)
    peak = args.peak_tflops * 1e12
    learn_flops = 6 * ((params - vision) * seq_tokens + vision * patches)
    learn_mfu = learn_flops / learn_s / peak
    gen_mfu = 2 * (params - vision) * gen_tokens / gen_s / peak
    probe = (samples[0], completions[0].token_ids)

    def gap() -> float:
        ref = np.array(learner.score([probe[0]], [probe[1]])[0])
        got = np.array(engine.score([probe[0]], [probe[1]])[0])
        return float(np.abs(ref - got).mean())

    before = gap()  # the engine still holds version 0, the learner version 1
    start = time.perf_counter()
    state = learner.state_dict()
    engine.load_weights(state, 1)
    cuda.synchronize()
    sync_s = time.perf_counter() - start
    after = gap()
    figures = {
        "size": args.size, "timed_step": args.steps, "parameters_billion": round(params / 1e9, 3),
        "vision_parameters_billion": round(vision / 1e9, 3), "learner_patches": patches, "learner_tokens": seq_tokens,
        "zero_stage": args.zero, "vision_windows": "loop" if args.loop_windows else "one call a block",
        "generate_tokens_per_s": round(gen_tokens / gen_s, 1), "generate_seconds": round(gen_s, 2),
        "learn_tokens_per_s": round(metrics["learn_tokens"] / learn_s, 1), "learn_seconds": round(learn_s, 2),
        "learner_sequence_tokens_per_s": round(seq_tokens / learn_s, 1), "learner_mfu": round(learn_mfu, 4),
        "generate_mfu": round(gen_mfu, 4), "peak_tflops": round(args.peak_tflops, 1), "grad_norm": metrics["grad_norm"],
        "logprob_mismatch": metrics.get("logprob_mismatch"),
        "sync_seconds": round(sync_s, 2), "sync_gib": round(sum(t.nbytes for t in state.values()) / 2**30, 2),
        "freshness_gap_before_update": before, "freshness_gap_after_update": after,
        "peak_memory_gib": round(cuda.max_memory_allocated() / 2**30, 1), "build_seconds": round(build_s, 1),
        "device": "cpu" if args.cpu else torch.cuda.get_device_name(),
    }  # fmt: skip
    print(json.dumps(figures, indent=2))
    print("freshness:", "OK (the update closed the gap)" if after < min(before, config.rollout.freshness_tolerance)
          else "FAILED: the engine does not hold the learner's weights")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
