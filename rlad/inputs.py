"""The one input builder: how a sample becomes model inputs, for SFT, rollout and the learner alike.

A prompt is the Qwen chat format with OmniAD's system prompt (SPEC.md, wording kept), then, for 1-shot
samples, the normal reference image and ``This is an image of a normal object.``, then the query image and
the question with its options. Images are resized to ``image_size`` (square, as the paper's 512 px) and
handed to the Qwen2-VL image processor, which rounds the size to a multiple of patch x merge and bounds it by
``min_pixels`` / ``max_pixels``. Each ``<|image_pad|>`` placeholder is then expanded to exactly
``t * h * w / merge**2`` copies for that image's ``image_grid_thw`` — the count the vision tower produces —
and checked after tokenization.

The prompt and the completion are tokenized separately and concatenated, so a training sequence is exactly
the token ids the rollout engine saw plus the ids it generated; the prompt's labels are -100.

Works with an image processor + tokenizer (transformers' Qwen2.5-VL processor needs torchvision, which
this machine lacks) or with a full processor, whose two halves are then used the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rlad.completion import BLOCKS
from rlad.sample import VerifiableSample

__all__ = [
    "IGNORE_INDEX",
    "REFERENCE_TEXT",
    "SYSTEM_PROMPT",
    "EncodedSample",
    "InputBuilder",
    "messages_for",
    "system_prompt",
    "to_model",
]

SYSTEM_PROMPT = (
    "You are a special assistant for analysis image. The user asks a question, and you answer with the option's "
    "letter from the given choices directly. Firstly, you should detect anomalies in patches within <seg>/</seg> "
    "tags. Then think about the reasoning process in the mind and then provide the user with the answer. The "
    "reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <seg>segmentation results here</seg><think> reasoning process here</think><answer> "
    "answer letter here</answer>"
)
REFERENCE_TEXT = " This is an image of a normal object.\n"
IMAGE_PLACEHOLDER = "<|image_pad|>"
IGNORE_INDEX = -100


_BLOCK_WORDS = {
    "seg": ("detect anomalies in patches", "segmentation results here"),
    "think": ("think about the reasoning process in the mind", " reasoning process here"),
    "answer": ("provide the user with the answer", " answer letter here"),
}


def system_prompt(blocks: Sequence[str] = BLOCKS) -> str:
    """OmniAD's system prompt for the paper's layout (wording kept); for the reasoning ablations' layouts
    (``output.blocks`` without seg and/or think) the same instruction naming only the blocks asked for."""
    blocks = tuple(blocks)
    if blocks == BLOCKS:
        return SYSTEM_PROMPT
    steps = " Then ".join(f"{_BLOCK_WORDS[b][0]} within <{b}> </{b}> tags." for b in blocks)
    example = "".join(f"<{b}>{_BLOCK_WORDS[b][1]}</{b}>" for b in blocks)
    return (
        "You are a special assistant for analysis image. The user asks a question, and you answer with the "
        f"option's letter from the given choices directly. Firstly, you should {steps} i.e., {example}"
    )


def messages_for(sample: VerifiableSample, shots: int, blocks: Sequence[str] = BLOCKS) -> list[dict[str, Any]]:
    """Chat messages for one sample; ``shots=1`` puts its normal reference image first (when it has one)."""
    content: list[dict[str, Any]] = []
    if shots and sample.reference and sample.image:
        content += [{"type": "image"}, {"type": "text", "text": REFERENCE_TEXT}]
    if sample.image:  # an image-free sample (a text-only question) asks the question alone
        content.append({"type": "image"})
    content.append({"type": "text", "text": sample.question})
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt(blocks)}]},
        {"role": "user", "content": content},
    ]


@dataclass
class EncodedSample:
    """One sample's tensors. ``labels`` is None for a prompt (rollout); image rows are in prompt order."""

    input_ids: torch.Tensor  # (L,) long
    pixel_values: torch.Tensor | None  # (sum over images of t*h*w, C * temporal_patch * patch**2); None: no image
    image_grid_thw: torch.Tensor  # (n_images, 3) long
    labels: torch.Tensor | None = None  # (L,) long, IGNORE_INDEX over the prompt
    prompt_length: int = 0


def _forward_takes_token_types() -> bool:
    """Whether this transformers' Qwen-VL forward reads ``mm_token_type_ids``. Without it, 5.x versions
    silently fall back to 1-D text positions for image tokens (no error), so it must be passed when known."""
    import inspect

    from transformers import Qwen2_5_VLForConditionalGeneration

    return "mm_token_type_ids" in inspect.signature(Qwen2_5_VLForConditionalGeneration.forward).parameters


class InputBuilder:
    """Turns samples into Qwen2-VL / Qwen2.5-VL inputs; see the module docstring."""

    def __init__(
        self,
        tokenizer: Any = None,
        image_processor: Any = None,
        *,
        processor: Any = None,
        image_size: int | None = None,
        shots: int = 1,
        chat_template: str | None = None,
        blocks: Sequence[str] = BLOCKS,
        vision: bool = True,
    ) -> None:
        """``vision=False``: the policy is a text-only language model (e.g. for side-by-side benchmarks with
        text-only trainers); it takes image-free samples only."""
        if processor is not None:
            tokenizer = tokenizer or processor.tokenizer
            image_processor = image_processor or processor.image_processor
            chat_template = chat_template or getattr(processor, "chat_template", None)
        if tokenizer is None or image_processor is None:
            raise ValueError("InputBuilder needs a tokenizer and an image processor (or a processor holding both)")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template or tokenizer.chat_template
        if not self.chat_template:
            raise ValueError("the tokenizer has no chat template (and no processor chat template was given)")
        self.image_size = image_size
        self.shots = shots
        self.blocks = tuple(blocks)
        self.vision = vision
        self.merge = int(getattr(image_processor, "merge_size", 2))
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {IMAGE_PLACEHOLDER} token: is this a Qwen-VL tokenizer?")
        self.token_types = _forward_takes_token_types()
        self.end_of_turn = "<|im_end|>"
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(self.end_of_turn)

    # -- pieces ------------------------------------------------------------------------------------------

    def image_paths(self, sample: VerifiableSample) -> list[str]:
        """The sample's images in prompt order: none for an image-free sample."""
        if not sample.image:
            return []
        if not self.vision:
            raise ValueError(
                f"sample {sample.sample_id!r} has an image ({sample.image}) but the policy is a text-only model"
            )
        refs = [sample.reference] if self.shots and sample.reference else []
        return [*refs, sample.image]

    def load_image(self, path: str) -> Image.Image:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        with Image.open(path) as im:
            image = im.convert("RGB")
        if self.image_size:
            image = image.resize((self.image_size, self.image_size), Image.BICUBIC)
        return image

    def prompt_text(self, sample: VerifiableSample, image_grid_thw: torch.Tensor | None = None) -> str:
        """The chat-formatted prompt, ending with the assistant turn's header. With ``image_grid_thw`` each
        image placeholder is expanded to the number of tokens the vision tower will produce for it."""
        text = self.tokenizer.apply_chat_template(
            messages_for(sample, self.shots, self.blocks), chat_template=self.chat_template, tokenize=False,
            add_generation_prompt=True,
        )  # fmt: skip
        if image_grid_thw is None:
            return text
        pieces = text.split(IMAGE_PLACEHOLDER)
        if len(pieces) - 1 != len(image_grid_thw):
            raise ValueError(
                f"sample {sample.sample_id!r}: the chat template wrote {len(pieces) - 1} image placeholders "
                f"for {len(image_grid_thw)} images"
            )
        out = [pieces[0]]
        for thw, piece in zip(image_grid_thw, pieces[1:], strict=True):
            out += [IMAGE_PLACEHOLDER * self.tokens_per_image(thw), piece]
        return "".join(out)

    def tokens_per_image(self, thw: torch.Tensor) -> int:
        return int(torch.prod(thw)) // (self.merge * self.merge)

    # -- whole samples -----------------------------------------------------------------------------------

    def images(self, sample: VerifiableSample) -> list[Image.Image]:
        """The sample's images, loaded and resized, in prompt order."""
        return [self.load_image(p) for p in self.image_paths(sample)]

    def encode_prompt(self, sample: VerifiableSample) -> EncodedSample:
        images = self.images(sample)
        if images:
            vision = self.image_processor(images=images, return_tensors="pt")
            pixel_values, grid_thw = vision["pixel_values"], vision["image_grid_thw"]
        else:
            pixel_values, grid_thw = None, torch.zeros((0, 3), dtype=torch.long)
        ids = self.tokenizer(self.prompt_text(sample, grid_thw), add_special_tokens=False)["input_ids"]
        input_ids = torch.tensor(ids, dtype=torch.long)
        expected = sum(self.tokens_per_image(thw) for thw in grid_thw)
        found = int((input_ids == self.image_token_id).sum())
        assert found == expected, f"{sample.sample_id}: {found} image tokens for {expected} vision features"
        return EncodedSample(input_ids, pixel_values, grid_thw, None, len(ids))

    def completion_ids(self, completion: str) -> list[int]:
        """Token ids of a target completion, closed by the end-of-turn token the policy must learn to emit."""
        return self.tokenizer(completion, add_special_tokens=False)["input_ids"] + [self.end_of_turn_id]

    def encode_sft(self, sample: VerifiableSample, target: str) -> EncodedSample:
        return self.encode_completion(sample, self.completion_ids(target))

    def encode_completion(
        self, sample: VerifiableSample, completion_ids: list[int], prompt: EncodedSample | None = None
    ) -> EncodedSample:
        """Prompt + given completion token ids (a rollout's, exactly as generated), labels on the completion.
        ``prompt``: the sample's ``encode_prompt`` when already at hand (a group's completions share it)."""
        prompt = prompt if prompt is not None else self.encode_prompt(sample)
        answer = torch.tensor(completion_ids, dtype=torch.long)
        input_ids = torch.cat([prompt.input_ids, answer])
        labels = torch.cat([torch.full_like(prompt.input_ids, IGNORE_INDEX), answer])
        return EncodedSample(input_ids, prompt.pixel_values, prompt.image_grid_thw, labels, prompt.prompt_length)

    def collate(self, batch: list[EncodedSample], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad to one batch. Right padding for training, left padding for generation (prompts end aligned)."""
        pad_id = self.tokenizer.pad_token_id
        assert pad_id is not None, "the tokenizer needs a pad token"
        width = max(len(e.input_ids) for e in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        for i, e in enumerate(batch):
            n = len(e.input_ids)
            span = slice(width - n, width) if padding_side == "left" else slice(0, n)
            input_ids[i, span] = e.input_ids
            attention[i, span] = 1
            if e.labels is not None:
                labels[i, span] = e.labels
        out = {"input_ids": input_ids, "attention_mask": attention}
        pixels = [e.pixel_values for e in batch if e.pixel_values is not None]
        if pixels:  # a batch of image-free samples has no vision inputs at all
            out["pixel_values"] = torch.cat(pixels)
            out["image_grid_thw"] = torch.cat([e.image_grid_thw for e in batch])
        if self.token_types and self.vision:  # 1 at image tokens: where M-RoPE puts 2-D (height, width) positions
            out["mm_token_type_ids"] = (input_ids == self.image_token_id).long() * attention
        if any(e.labels is not None for e in batch):
            out["labels"] = labels
        return out


def to_model(batch: dict[str, torch.Tensor], device: torch.device | str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A collated batch on ``device``, its pixels in the model's ``dtype`` (ids and masks stay integers)."""
    out = {k: v.to(device) for k, v in batch.items()}
    if "pixel_values" in out:
        out["pixel_values"] = out["pixel_values"].to(dtype)
    return out
