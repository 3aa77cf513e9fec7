"""A tiny Qwen2.5-VL built on this machine, with no download: the policy of the demo and the tests.

``build_tiny(spec, out)`` writes an ordinary Hugging Face model directory — ``config.json``, weights,
tokenizer with the Qwen chat template and special tokens, and the Qwen2-VL image processor config — that
``from_pretrained`` (and ``rlad.policy.load_policy``) reload like any real checkpoint.

- The architecture is Qwen2.5-VL's (``Qwen2_5_VLForConditionalGeneration``), only smaller: a vision tower of
  a few blocks with the same 14 px patches and 2x2 token merge, a language model of a few layers with M-RoPE.
- The tokenizer is a byte-level BPE trained here on the text the task uses: the system prompt, the
  generated benchmark's questions and grounded SFT targets, and Text-as-Mask strings of every grid. Byte
  level means any user text still encodes. The chat special tokens (``<|im_start|>``, ``<|im_end|>``, ...)
  and the vision tokens (``<|vision_start|>``, ``<|image_pad|>``, ...) are added with Qwen's names, and the
  output tags (``<seg>``, ``</seg>``, ...) are single tokens so the format is cheap to learn.
- ``tiny_model_dir(spec)`` builds once into a cache folder named by a hash of the spec and reuses it; the
  folder appears atomically (built aside, then renamed), so parallel test workers never see half a model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rlad.cache import built_once

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "TAG_TOKENS", "TinySpec", "build_tiny", "tiny_model_dir"]

FACTORY_VERSION = 4  # bump when the factory's output changes, so cached models are rebuilt

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
TAG_TOKENS = ["<seg>", "</seg>", "<think>", "</think>", "<answer>", "</answer>"]

# Qwen2-VL's chat format: text parts verbatim, each image as <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model. The defaults learn the demo benchmark in minutes on two CPU cores."""

    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_depth: int = 2
    vision_hidden_size: int = 128
    vision_heads: int = 4
    image_size: int = 224  # pixels the image processor is pinned to: 16x16 patches -> 8x8 image tokens
    seed: int = 0
    text_only: bool = False
    """A text-only Qwen2 language model (``Qwen2ForCausalLM``) with the same tokenizer: for image-free
    benchmarks side by side with text-only trainers, and for vLLM's CPU build (whose Qwen2.5-VL needs
    torchvision)."""
    head_dim: int = 0
    """Attention head size; 0: hidden_size / num_heads. vLLM's CPU attention needs 64 (or another size it
    supports)."""
    rope_theta: float = 10000.0
    """Rotary base of the language model. With M-RoPE the rotary frequencies are cut into contiguous
    (time, height, width) sections, highest first, so at a small head size the width section gets only the
    slowest ones: at the default 10000 and 32-wide heads one 8-token image row turns the width phases by
    at most 0.03 rad, and the model can hardly tell columns apart. A smaller base (e.g. 50) gives the
    height and width sections phases that move visibly across the image."""
    mrope_section: tuple[int, ...] = ()
    """(time, height, width) rotary pairs of M-RoPE, summing to head_dim / 2; empty: Qwen's 1 : 1.5 : 1.5
    split (time takes the remainder)."""

    def key(self) -> str:
        fields = asdict(self)
        fields["mrope_section"] = list(fields["mrope_section"])
        fields["rope_theta"] = float(fields["rope_theta"])  # 50 from YAML and 50.0 are one model
        for name in ("text_only", "head_dim", "rope_theta", "mrope_section"):  # added later: left out at their
            # defaults, so cached models stay
            if fields[name] in (TinySpec.__dataclass_fields__[name].default, []):
                del fields[name]
        blob = json.dumps({**fields, "factory": FACTORY_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def tiny_model_dir(spec: TinySpec | None = None) -> Path:
    """The cached tiny model for ``spec``, built on first use."""
    spec = spec or TinySpec()
    kind = "qwen2" if spec.text_only else "qwen2.5-vl"
    return built_once(f"tiny-{kind}-{spec.key()}", "config.json", lambda folder: build_tiny(spec, folder))


def _corpus(spec: TinySpec) -> list[str]:
    """Text the tokenizer is trained on: what the task writes and reads."""
    from rlad import mask_text
    from rlad.data.questions import sft_target
    from rlad.data.readers import read_mmad
    from rlad.data.synth import SynthSpec, synthesize
    from rlad.inputs import REFERENCE_TEXT, SYSTEM_PROMPT

    texts = [SYSTEM_PROMPT, REFERENCE_TEXT, "You are a helpful assistant."]
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(SynthSpec(images_per_class=12, references_per_class=1, size=64, seed=spec.seed), tmp, workers=1)
        for grid in (8, 24):
            samples, _ = read_mmad(Path(tmp) / "mmad.json", tmp, grid=grid, shots=0)
            texts += [s.question for s in samples] + [sft_target(s) for s in samples]
    rng = np.random.default_rng(spec.seed)
    for grid in (4, 8, 16, 24, 32):
        texts += [mask_text.encode(rng.random((grid, grid)) < p) for p in (0.05, 0.2, 0.5) for _ in range(20)]
    return texts


def _train_tokenizer(spec: TinySpec, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size - len(SPECIAL_TOKENS) - len(TAG_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    fast.add_tokens(TAG_TOKENS)  # ordinary (not special) tokens: decoding keeps them
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_tiny(spec: TinySpec, out: str | Path) -> Path:
    """Build the tiny model, tokenizer and image processor for ``spec`` into ``out`` (a new folder)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tok = _train_tokenizer(spec, out)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = spec.head_dim or spec.hidden_size // spec.num_heads
    pixels = spec.image_size * spec.image_size
    # the image processor is saved for text-only models too: the input builder loads one (and never uses it)
    Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels).save_pretrained(out)
    generation = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
    )
    text = {
        "vocab_size": len(tok),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        **({"head_dim": spec.head_dim} if spec.head_dim else {}),
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(spec.rope_theta)},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": True,
    }
    torch.manual_seed(spec.seed)
    if spec.text_only:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        model = Qwen2ForCausalLM(Qwen2Config(**text))
    else:
        half = head_dim // 2  # M-RoPE splits the rotary half-dimension into (time, height, width) sections
        mrope = list(spec.mrope_section) or [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
        if len(mrope) != 3 or sum(mrope) != half or min(mrope) < 1:
            raise ValueError(
                f"model.tiny.mrope_section {list(spec.mrope_section)} must be 3 positive numbers summing to "
                f"head_dim / 2 = {half}"
            )
        text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": mrope}
        config = Qwen2_5_VLConfig(
            text_config=text,
            vision_config={
                "depth": spec.vision_depth,
                "hidden_size": spec.vision_hidden_size,
                "intermediate_size": 2 * spec.vision_hidden_size,
                "num_heads": spec.vision_heads,
                "out_hidden_size": spec.hidden_size,
                "fullatt_block_indexes": [spec.vision_depth - 1],
                "window_size": 112,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=True,
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = generation
    model.save_pretrained(out)
    (out / "rlad_tiny.json").write_text(json.dumps({**asdict(spec), "factory": FACTORY_VERSION}, indent=2))
    return out
