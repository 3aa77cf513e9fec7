"""What the vLLM backend hands to vLLM, checked without vLLM: the multi-modal request (the prompt text with one
``<|vision_start|><|image_pad|><|vision_end|>`` per image plus ``multi_modal_data={"image": [PIL images]}``, the
form vLLM documents for Qwen2.5-VL), the sampling parameters and the engine arguments. The multi-modal path
itself is unverified on real hardware here (README); the text path runs for real in ``test_vllm_cpu.py``."""

import numpy as np
import pytest

from rlad.config import load_config
from rlad.inputs import IMAGE_PLACEHOLDER
from rlad.policy import PolicySpec
from rollout.vllm_engine import engine_kwargs, sampling_kwargs, vllm_request


def test_a_one_shot_request_carries_both_images_in_prompt_order(tiny_policy, small_benchmark):
    builder = tiny_policy.builder
    _, samples = small_benchmark
    sample = next(s for s in samples if s.reference)
    request = vllm_request(builder, sample)
    assert request["prompt"].count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert request["prompt"].endswith("<|im_start|>assistant\n")
    reference, query = request["multi_modal_data"]["image"]
    assert reference.size == query.size == (224, 224)
    assert np.array_equal(np.asarray(reference), np.asarray(builder.load_image(sample.reference)))
    assert np.array_equal(np.asarray(query), np.asarray(builder.load_image(sample.image)))
    # vLLM expands each placeholder to the vision tower's token count: the learner's prompt is that expansion
    encoded = builder.encode_prompt(sample)
    expanded = request["prompt"]
    for thw in encoded.image_grid_thw:
        expanded = expanded.replace(
            f"<|vision_start|>{IMAGE_PLACEHOLDER}<|vision_end|>",
            f"<|vision_start|>{'<|IMG|>' * builder.tokens_per_image(thw)}<|vision_end|>", 1,
        )  # fmt: skip
    assert expanded.replace("<|IMG|>", IMAGE_PLACEHOLDER) == builder.prompt_text(sample, encoded.image_grid_thw)


def test_an_image_free_request_has_no_multimodal_data(tiny_policy, sample_factory):
    request = vllm_request(tiny_policy.builder, sample_factory())
    assert "multi_modal_data" not in request and IMAGE_PLACEHOLDER not in request["prompt"]


def test_sampling_parameters_come_from_the_generation_section():
    generation = load_config(
        None, ["generation.temperature=0.7", "generation.top_p=0.9", "generation.max_new_tokens=64"]
    ).generation
    sampled = sampling_kwargs(generation, n=16, greedy=False, seed=40, stop=[5, 0])
    assert sampled == {"n": 16, "max_tokens": 64, "logprobs": 0, "seed": 40, "stop_token_ids": [5, 0],
                       "skip_special_tokens": True, "temperature": 0.7, "top_p": 0.9, "top_k": -1}  # fmt: skip
    greedy = sampling_kwargs(generation, n=1, greedy=True, seed=None, stop=[5])
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy


@pytest.mark.parametrize("shots", [0, 1])
def test_engine_arguments_come_from_the_config(shots):
    config = load_config(None, [f"data.shots={shots}", "model.min_pixels=3136", "model.max_pixels=262144",
                                "rollout.vllm.sleep_level=1", "rollout.vllm.gpu_memory_utilization=0.4",
                                "rollout.vllm.tensor_parallel_size=2", "seed=3"])  # fmt: skip
    policy = PolicySpec.of(config, "/ckpt")
    kwargs = engine_kwargs(policy, config.rollout, config.seed, vision=True)
    assert kwargs["limit_mm_per_prompt"] == {"image": 1 + shots, "video": 0}
    assert kwargs["mm_processor_kwargs"] == {"min_pixels": 3136, "max_pixels": 262144}
    assert kwargs["enable_sleep_mode"] and kwargs["gpu_memory_utilization"] == 0.4
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["seed"] == 3 and kwargs["model"] == "/ckpt"
    assert kwargs["logprobs_mode"] == "processed_logprobs"
    module, _, name = kwargs["worker_extension_cls"].rpartition(".")
    assert hasattr(__import__(module, fromlist=[name]), name)
    assert "limit_mm_per_prompt" not in engine_kwargs(policy, config.rollout, config.seed, vision=False)


def test_a_text_only_model_takes_image_free_samples_on_the_transformers_path(sample_factory):
    """The text-only tiny Qwen2 (what vLLM's CPU build runs) through the input builder, engine and log-probs."""
    from rlad.config import GenerationConfig, ModelConfig
    from rlad.logprobs import completion_logprobs
    from rlad.policy import load_policy
    from rlad.tiny import TinySpec, tiny_model_dir
    from rollout.transformers_engine import TransformersEngine

    spec = TinySpec(text_only=True, head_dim=64, hidden_size=128, num_heads=2, num_kv_heads=1, num_layers=2,
                    intermediate_size=256)  # fmt: skip
    policy = load_policy(ModelConfig(path=str(tiny_model_dir(spec))), shots=0)
    assert not policy.builder.vision
    sample = sample_factory()
    batch = policy.builder.collate([policy.builder.encode_prompt(sample)])
    assert set(batch) == {"input_ids", "attention_mask"}
    out = TransformersEngine(policy.model, policy.builder, GenerationConfig(max_new_tokens=6)).generate(
        [sample], n=2, seed=0
    )
    again = completion_logprobs(policy.model, policy.builder, [sample] * 2, [c.token_ids for c in out])
    for c, ref in zip(out, again, strict=True):
        assert np.allclose(c.logprobs, ref, atol=1e-4)
    with pytest.raises(ValueError, match="text-only model"):
        policy.builder.encode_prompt(sample_factory().__class__(**{**sample.__dict__, "image": "/x.png"}))
