"""Engine efficiency: the Ray rollout worker against the same engine called in-process, and the Ray learner
against a bare forward/backward/step loop, on the same batch, side by side in one run.

The policy is the demo's tiny Qwen2.5-VL (0-shot, 224 px images), the batch ``--prompts`` questions x
``--group`` completions of ``--tokens`` new tokens. Both sides sample with the same seed from the same weights,
so they generate the same tokens; both learners take the same GRPO step (one micro-batch per ``--micro``
completions, token-mean loss).

    python experiments/bench/efficiency.py [--repeats 5] [--group 8] [--prompts 4] [--tokens 64]

Targets: worker tokens/s >= 0.95 x in-process; learner tokens/s >= 0.95 x the bare loop. On a shared 2-core
machine the two sides' medians still wander by several percent between runs; the Ray call's own cost (wall
time of the call minus the worker's timing of its engine) is printed too: that is what the Ray path adds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from common import make_data, paired_medians, table

from rlad.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--micro", type=int, default=16)
    args = parser.parse_args()

    from rlad.data.readers import read_mmad
    from rlad.grpo import grpo_loss
    from rlad.inputs import to_model
    from rlad.learner import Learner, Rollout, loss_units
    from rlad.logprobs import token_logprobs
    from rlad.policy import PolicySpec, load_policy, resolve_model_path
    from rollout.worker import RolloutWorker, make_engine

    work = Path(tempfile.mkdtemp(prefix="rlad-bench-"))
    data = make_data(work / "data")
    config = load_config(None, [
        "model.path=tiny", "model.image_size=224", "data.shots=0", "mask.grid=8",
        f"generation.max_new_tokens={args.tokens}",
        f"rollout.batch_size={args.group * args.prompts}", f"learner.micro_batch_size={args.micro}", "grpo.lr=1e-5",
        "rollout.num_cpus=0.5", "learner.num_cpus=0.5",
    ])  # fmt: skip
    checkpoint = str(resolve_model_path(config.model))
    samples = read_mmad(data / "mmad.json", data, grid=8, shots=0)[0][: args.prompts]
    ray.init(num_cpus=2, include_dashboard=False)
    rows = []

    # -- rollout ------------------------------------------------------------------------------------------
    worker = (
        ray.remote(RolloutWorker)
        .options(num_cpus=0.5)
        .remote(PolicySpec.of(config, checkpoint), config.rollout, config.generation, config.seed)
    )
    engine = make_engine(config, checkpoint)
    run_remote = lambda: ray.get(worker.generate.remote(samples, args.group, False, 7))[0]  # noqa: E731
    run_local = lambda: engine.generate(samples, n=args.group, seed=7)  # noqa: E731
    remote_out, local_out = run_remote(), run_local()
    assert [c.token_ids for c in remote_out] == [c.token_ids for c in local_out], "the two sides must do equal work"
    tokens = sum(len(c.token_ids) for c in local_out)
    local_s, remote_s = paired_medians(run_local, run_remote, args.repeats)
    # what the Ray path adds on top of the engine itself: the call's wall time minus the worker's own timing
    gaps = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        _, inside = ray.get(worker.generate.remote(samples, args.group, False, 7))
        gaps.append(time.perf_counter() - start - inside)
    ray_ms = 1000 * statistics.median(gaps)
    rows.append({"what": "rollout: engine in-process", "tokens/s": tokens / local_s, "ratio": 1.0})
    rows.append({"what": "rollout: Ray rollout worker", "tokens/s": tokens / remote_s, "ratio": local_s / remote_s})
    rows.append({"what": f"  (Ray call + serialisation: {ray_ms:.1f} ms a call)", "tokens/s": None,
                 "ratio": (remote_s - ray_ms / 1000) / remote_s})  # fmt: skip
    ray.kill(worker)

    # -- learner ------------------------------------------------------------------------------------------
    rollouts = [
        Rollout(samples[i // args.group], c.token_ids, c.logprobs, 1.0 - 2 * (i % 2)) for i, c in enumerate(local_out)
    ]
    units = loss_units(rollouts, "token_mean")
    micro = -(-len(rollouts) // args.micro)
    learner = (
        ray.remote(Learner)
        .options(num_cpus=0.5)
        .remote(PolicySpec.of(config, checkpoint), config.grpo, config.learner, config.generation, config.seed)
    )
    ray.get(learner.setup.remote())
    learn_remote = lambda: ray.get(learner.learn.remote(rollouts, units, micro))  # noqa: E731

    policy = load_policy(config.model, shots=0, trainable=True)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-5)
    builder = policy.builder

    def bare_step() -> None:
        """The same GRPO step written plainly: encode, forward, loss, backward per micro-batch; clip; step."""
        prompt = {s.sample_id: builder.encode_prompt(s) for s in samples}  # each prompt once, as the learner does
        for i in range(micro):
            chunk = rollouts[i * args.micro : (i + 1) * args.micro]
            encoded = [builder.encode_completion(r.sample, r.token_ids, prompt[r.sample.sample_id]) for r in chunk]
            batch = to_model(builder.collate(encoded), "cpu", torch.float32)
            logp, mask = token_logprobs(policy.model, batch)
            old = logp.detach()
            adv = torch.tensor([r.advantage for r in chunk])
            loss = grpo_loss(logp, old, adv, mask).loss * (float(mask.sum()) / units)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    learn_tokens = sum(len(r.token_ids) for r in rollouts)
    bare_s, remote_s = paired_medians(bare_step, learn_remote, args.repeats)
    rows.append({"what": "learner: bare forward/backward loop", "tokens/s": learn_tokens / bare_s, "ratio": 1.0})
    rows.append(
        {"what": "learner: Ray learner (DeepSpeed)", "tokens/s": learn_tokens / remote_s, "ratio": bare_s / remote_s}
    )

    # before/after of one optimisation: logits (output layer + softmax) at every position vs the completions' only
    def forward_backward(padding_side: str) -> None:
        prompt = {s.sample_id: builder.encode_prompt(s) for s in samples}
        for i in range(micro):
            chunk = rollouts[i * args.micro : (i + 1) * args.micro]
            encoded = [builder.encode_completion(r.sample, r.token_ids, prompt[r.sample.sample_id]) for r in chunk]
            batch = to_model(builder.collate(encoded, padding_side=padding_side), "cpu", torch.float32)
            logp, mask = token_logprobs(policy.model, batch, entropy=True)[:2]
            (logp * mask).sum().backward()
        policy.model.zero_grad()

    every_s, kept_s = paired_medians(lambda: forward_backward("right"), lambda: forward_backward("left"), args.repeats)
    rows.append(
        {"what": "forward/backward, logits at every position", "tokens/s": learn_tokens / every_s, "ratio": 1.0}
    )
    rows.append({"what": "forward/backward, completions' logits only", "tokens/s": learn_tokens / kept_s,
                 "ratio": every_s / kept_s})  # fmt: skip
    print(f"\n{args.prompts} prompts x {args.group} completions, {tokens} generated tokens; median of {args.repeats}")
    print(table(rows, ["what", "tokens/s", "ratio"]))
    print("targets: Ray rollout worker >= 0.95, Ray learner >= 0.95 (ratio of tokens/s to the in-process baseline)")
    ray.shutdown()


if __name__ == "__main__":
    main()
