"""The one input builder: image-token counts, the prompt, label masking, padding."""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from rlad.config import ModelConfig
from rlad.inputs import IGNORE_INDEX, REFERENCE_TEXT, SYSTEM_PROMPT, InputBuilder, system_prompt
from rlad.policy import load_image_processor


def _image(tmp_path, name, width, height, seed=0):
    rng = np.random.default_rng(seed)
    path = tmp_path / f"{name}.png"
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize(
    ("sizes", "image_size", "min_pixels", "max_pixels"),
    [
        ([(224, 224)], 224, None, None),  # the demo setting
        ([(300, 100), (517, 333)], None, 56 * 56, 28 * 28 * 80),  # 1-shot, two odd sizes, kept aspect
        ([(1000, 200)], None, 56 * 56, 28 * 28 * 16),  # capped hard by max_pixels
        ([(30, 40), (64, 64)], None, 56 * 56, 28 * 28 * 64),  # raised by min_pixels
        ([(640, 480), (640, 480)], 512, 28 * 28 * 4, 512 * 512),  # the paper's 512 px resize
    ],
)
def test_image_token_count_matches_vision_tower(
    tmp_path, tiny_dir, tiny_policy, sample_factory, sizes, image_size, min_pixels, max_pixels
):
    """The peer frameworks' most reported bug: <|image_pad|> count != features the vision tower returns."""
    config = ModelConfig(path=str(tiny_dir), image_size=image_size, min_pixels=min_pixels, max_pixels=max_pixels)
    processor = load_image_processor(tiny_dir, config)
    builder = InputBuilder(tiny_policy.tokenizer, processor, image_size=image_size, shots=1)
    paths = [_image(tmp_path, f"im{i}", w, h, i) for i, (w, h) in enumerate(sizes)]
    sample = replace(sample_factory(patches=[(1, 1)]), image=paths[-1], reference=paths[0] if len(sizes) > 1 else None)
    enc = builder.encode_prompt(sample)
    assert len(enc.image_grid_thw) == len(sizes)
    model = tiny_policy.model
    with torch.no_grad():  # the merged features the vision tower really produces, counted by running it
        features = model.model.visual(enc.pixel_values, grid_thw=enc.image_grid_thw).pooler_output
    assert int((enc.input_ids == builder.image_token_id).sum()) == features.shape[0]
    # and the whole model accepts the sequence (transformers raises on a mismatch)
    batch = builder.collate([enc])
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape


@pytest.fixture
def builder(tiny_policy):
    return tiny_policy.builder


def test_prompt_has_system_prompt_reference_and_question(builder, small_benchmark):
    _, samples = small_benchmark
    sample = samples[0]
    text = builder.prompt_text(sample)
    assert text.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
    assert text.endswith(f"{sample.question}<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|image_pad|>") == 2 and REFERENCE_TEXT in text
    # the reference comes first, the query image last
    assert text.index(REFERENCE_TEXT) < text.rindex("<|vision_start|>")
    zero_shot = InputBuilder(builder.tokenizer, builder.image_processor, image_size=224, shots=0)
    assert zero_shot.prompt_text(sample).count("<|image_pad|>") == 1 and REFERENCE_TEXT not in zero_shot.prompt_text(
        sample
    )


def test_system_prompt_names_only_the_blocks_of_the_layout(builder, small_benchmark):
    assert system_prompt(["seg", "think", "answer"]) == SYSTEM_PROMPT  # the paper's wording, unchanged
    no_seg = system_prompt(["think", "answer"])
    assert "<seg>" not in no_seg and no_seg.endswith(
        "<think> reasoning process here</think><answer> answer letter here</answer>"
    )
    answer_only = system_prompt(["answer"])
    assert "<seg>" not in answer_only and "<think>" not in answer_only and "<answer>" in answer_only
    ablation = InputBuilder(builder.tokenizer, builder.image_processor, image_size=224, blocks=("think", "answer"))
    assert ablation.prompt_text(small_benchmark[1][0]).startswith(f"<|im_start|>system\n{no_seg}<|im_end|>")


def test_sft_labels_mask_the_prompt_and_end_with_end_of_turn(builder, small_benchmark):
    _, samples = small_benchmark
    target = "<seg>(1, 2)-(1, 3)</seg><think>a hole</think><answer>A</answer>"
    enc = builder.encode_sft(samples[0], target)
    prompt = builder.encode_prompt(samples[0])
    # the training sequence is exactly the rollout prompt followed by the completion's ids
    assert torch.equal(enc.input_ids[: enc.prompt_length], prompt.input_ids)
    assert (enc.labels[: enc.prompt_length] == IGNORE_INDEX).all()
    learned = enc.labels[enc.prompt_length :]
    assert (learned != IGNORE_INDEX).all()
    assert learned[-1].item() == builder.end_of_turn_id
    assert builder.tokenizer.decode(learned[:-1]) == target


def test_collate_pads_left_for_generation_and_right_for_training(builder, small_benchmark):
    _, samples = small_benchmark
    encs = [
        builder.encode_sft(s, "<seg></seg><think>x</think><answer>B</answer>" * (i + 1))
        for i, s in enumerate(samples[:3])
    ]
    right = builder.collate(encs)
    left = builder.collate([builder.encode_prompt(s) for s in samples[:3]], padding_side="left")
    assert right["attention_mask"][:, 0].all() and left["attention_mask"][:, -1].all()
    assert right["pixel_values"].shape[0] == sum(e.pixel_values.shape[0] for e in encs)
    assert right["image_grid_thw"].shape == (6, 3)
    assert (right["labels"][right["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert "labels" not in left


def test_builder_accepts_a_full_processor(builder, small_benchmark):
    """Where torchvision exists, users hold a processor: its tokenizer and image processor are used alike."""
    _, samples = small_benchmark
    processor = SimpleNamespace(
        tokenizer=builder.tokenizer, image_processor=builder.image_processor, chat_template=builder.chat_template
    )
    other = InputBuilder(processor=processor, image_size=224, shots=1)
    assert torch.equal(other.encode_prompt(samples[0]).input_ids, builder.encode_prompt(samples[0]).input_ids)


def test_missing_image_and_template_are_named(builder, sample_factory, tmp_path):
    sample = replace(sample_factory(), image=str(tmp_path / "nope.png"))
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        builder.encode_prompt(sample)
    bare = SimpleNamespace(chat_template=None, convert_tokens_to_ids=builder.tokenizer.convert_tokens_to_ids)
    with pytest.raises(ValueError, match="chat template"):
        InputBuilder(bare, builder.image_processor)


def test_token_types_mark_image_tokens_for_m_rope(builder, small_benchmark):
    """transformers 5 places image tokens on a 2-D grid only when told which tokens are image tokens;
    without ``mm_token_type_ids`` it falls back to 1-D positions without a word."""
    _, samples = small_benchmark
    batch = builder.collate([builder.encode_prompt(s) for s in samples[:2]], padding_side="left")
    if not builder.token_types:
        pytest.skip("this transformers computes M-RoPE from input_ids alone")
    types = batch["mm_token_type_ids"]
    assert torch.equal(types.bool(), batch["input_ids"] == builder.image_token_id)


def test_left_padding_does_not_change_greedy_completions(tiny_policy, small_benchmark):
    """A prompt batched with a longer one (so left-padded) must generate what it generates alone."""
    from rlad.config import GenerationConfig
    from rollout.transformers_engine import TransformersEngine

    _, samples = small_benchmark
    short, long = sorted(samples[:6], key=lambda s: len(s.question))[0], max(samples, key=lambda s: len(s.question))
    engine = TransformersEngine(tiny_policy.model, tiny_policy.builder, GenerationConfig(max_new_tokens=8))
    alone = engine.generate([short], greedy=True)[0]
    together = engine.generate([long, short], greedy=True)[1]
    assert together.token_ids == alone.token_ids
