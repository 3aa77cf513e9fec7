"""The vLLM backend's multi-modal path on a GPU: the tiny Qwen2.5-VL, 1-shot requests with two images, n samples
with log-probs that the transformers learner reproduces, a weight update into the running engine and the
freshness check. Skipped where there is no CUDA GPU or no vLLM (everywhere here: unverified on real hardware,
README "GPU clusters"). Run on a GPU machine with ``pip install 'rlad[vllm]'``:

    pytest -m "vllm and gpu" tests/integration/test_vllm_gpu.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU (vLLM's Qwen2.5-VL path)", allow_module_level=True)

from rlad.config import load_config
from rlad.logprobs import completion_logprobs
from rlad.policy import load_policy

pytestmark = [pytest.mark.vllm, pytest.mark.gpu]


@pytest.fixture(scope="module")
def setup(tiny_dir, small_benchmark):
    from rollout.worker import make_engine

    config = load_config(overrides=[
        f"model.path={tiny_dir}", "model.image_size=224", "data.shots=1", "rollout.backend=vllm", "rollout.num_gpus=1",
        "rollout.vllm.dtype=float32", "rollout.vllm.max_model_len=2048", "rollout.vllm.gpu_memory_utilization=0.3",
        "generation.max_new_tokens=24",
    ])  # fmt: skip
    engine = make_engine(config, str(tiny_dir))
    reference = load_policy(config.model, shots=1, device="cuda")
    reference.model.float()
    _, samples = small_benchmark
    return engine, reference, [s for s in samples if s.reference][:3]


def test_one_shot_requests_sample_with_the_learners_logprobs(setup):
    engine, reference, samples = setup
    out = engine.generate(samples, n=4, seed=0)
    assert [c.sample_id for c in out] == [s.sample_id for s in samples for _ in range(4)]
    learner = completion_logprobs(reference.model, reference.builder, [samples[i // 4] for i in range(12)],
                                  [c.token_ids for c in out])  # fmt: skip
    for c, ref in zip(out, learner, strict=True):
        assert np.allclose(c.logprobs, ref, atol=5e-3)


def test_a_weight_update_reaches_the_running_engine(setup):
    engine, reference, samples = setup
    ids = engine.generate(samples[:1], n=1, greedy=True)[0].token_ids
    g = torch.Generator().manual_seed(0)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g).to(v) for k, v in reference.model.state_dict().items()}
    engine.load_weights(state, 1)
    reference.model.load_state_dict(state)
    got = np.array(engine.score(samples[:1], [ids])[0])
    want = np.array(completion_logprobs(reference.model, reference.builder, samples[:1], [ids])[0])
    assert np.abs(got - want).mean() < 5e-3
