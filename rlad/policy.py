"""Loading the policy: a Qwen2.5-VL / Qwen2-VL checkpoint from a local directory, or the tiny model.

``load_policy(config.model)`` returns the model with its tokenizer, image processor and the one
``InputBuilder`` built from them. Nothing is ever fetched: the path must be a local directory (``tiny`` is
built here, see ``rlad.tiny``), and transformers runs with ``local_files_only``. bf16 on a GPU; on a CPU fp32,
or bf16 where it pays (AMX, a wide enough model: ``torch_dtype``), unless ``model.dtype`` says otherwise; on a
CPU the attention is ``rlad.attention``'s (``model.attn_implementation: auto``; sdpa, eager or flash attention when
named). LoRA (peft) on the language model when ``model.lora.r > 0``. The
vision tower's patch embedding runs as a matmul (``PatchProjection``) and its windowed attention as one call a block
(``rlad.vision_windows``); no layer is swapped for a kernel from the Hub (``NO_HUB_KERNELS``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlad import attention
from rlad.completion import BLOCKS
from rlad.config import ConfigError, ModelConfig
from rlad.inputs import InputBuilder

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "Policy",
    "PolicySpec",
    "load_builder",
    "load_policy",
    "merge_lora_state",
    "parameter_count",
    "patch_embedding_as_matmul",
    "policy_config",
    "resolve_checkpoint",
    "resolve_model_path",
]

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2": "Qwen2ForCausalLM",  # text-only: image-free samples (benchmarks beside text-only trainers)
}


@dataclass
class Policy:
    model: Any  # a transformers (or peft-wrapped) Qwen-VL model
    tokenizer: Any
    image_processor: Any
    builder: InputBuilder
    path: Path


@dataclass(frozen=True)
class PolicySpec:
    """What builds one copy of the policy, the part of a run's config that the learners and the rollout
    engines share: the model section with ``path`` at the checkpoint to load, the shots per prompt
    (``data.shots``) and the answer layout (``output.blocks``)."""

    model: ModelConfig
    shots: int = 1
    blocks: tuple[str, ...] = tuple(BLOCKS)

    @classmethod
    def of(cls, config: Any, checkpoint: str | Path) -> PolicySpec:
        """The spec of a run's ``config`` (a ``rlad.config.Config``) with the weights at ``checkpoint``."""
        model = dataclasses.replace(config.model, path=str(checkpoint))
        return cls(model, config.data.shots, tuple(config.output.blocks))

    def load(self, device: str | torch.device = "cpu", trainable: bool = False) -> Policy:
        return load_policy(self.model, shots=self.shots, device=device, trainable=trainable, blocks=self.blocks)

    def builder(self) -> InputBuilder:
        return load_builder(self.model, shots=self.shots, blocks=self.blocks)


def resolve_model_path(config: ModelConfig) -> Path:
    """The checkpoint directory for ``model.path``: ``tiny`` is built (once, cached); anything else must be
    a local directory holding ``config.json``. The tiny model's base stage trains a model, so it is resolved
    above this module, by the commands (``rlad.base_stage.with_base_stage``)."""
    if config.path == "tiny":
        from rlad.tiny import TinySpec, tiny_model_dir

        if config.base.images:
            raise ConfigError(
                "model.base.images is set but model.path is still 'tiny': build the base stage first with "
                "rlad.base_stage.with_base_stage(config) (rlad sft and rlad train do), or the run would silently "
                "start from random weights"
            )
        return tiny_model_dir(TinySpec(**config.tiny))
    path = Path(config.path).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"model.path {config.path!r} is not a local directory. rlad never downloads: point it at a "
            "checkpoint on disk (e.g. a Qwen2.5-VL-7B-Instruct folder) or use 'tiny'"
        )
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.path {config.path!r} holds no config.json: not a Hugging Face checkpoint directory")
    try:
        checkpoint_config = json.loads((path / "config.json").read_text())
    except ValueError as e:
        raise ConfigError(f"model.path {config.path!r}: config.json is not valid JSON ({e})") from e
    if not isinstance(checkpoint_config, dict):
        raise ConfigError(f"model.path {config.path!r}: config.json holds no model config (a JSON object)")
    model_type = checkpoint_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"model.path {config.path!r}: model_type {model_type!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """The policy folder a user means: a checkpoint folder itself (it holds ``config.json``), or a run folder
    of ``rlad train`` / an output folder of ``rlad sft`` (their ``final/``)."""
    path = Path(path).expanduser()
    if (path / "config.json").is_file():
        return path
    if (path / "final" / "config.json").is_file():
        return path / "final"
    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist")
    raise ConfigError(
        f"{path} is not a checkpoint: no config.json in it, and no final/ policy (is the run finished? "
        "`rlad export RUN_DIR --step N` exports an intermediate checkpoint)"
    )


def policy_config(checkpoint: Path, config_file: str | None = None, overrides: Sequence[str] = ()) -> Any:
    """The config to use a checkpoint with: the one it was trained with (its ``rlad.yaml``: grid, image size,
    output layout, generation and rewards), else ``config_file`` or the defaults; then ``overrides``, with
    ``model.path`` pointing at the checkpoint."""
    from rlad.config import load_config

    snapshot = checkpoint / "rlad.yaml"
    base = config_file or (snapshot if snapshot.is_file() else None)
    return load_config(base, [*overrides, f"model.path={checkpoint}"])


def model_class(path: Path) -> Any:
    """The transformers class of the (supported) checkpoint at ``path``, from its config.json."""
    import transformers

    return getattr(transformers, SUPPORTED_MODEL_TYPES[model_type_of(path)])


def model_type_of(path: str | Path) -> str:
    return json.loads((Path(path) / "config.json").read_text())["model_type"]


def cpu_bf16_units() -> str | None:
    """The bf16 matrix units of this CPU as torch sees them: ``amx_bf16``, ``avx512_bf16`` or None."""
    probe = getattr(torch, "cpu", None)
    if probe is not None and getattr(probe, "_is_amx_tile_supported", lambda: False)():
        return "amx_bf16"
    if probe is not None and getattr(probe, "_is_avx512_bf16_supported", lambda: False)():
        return "avx512_bf16"
    return None


BF16_CPU_MIN_WIDTH = 256
"""``model.dtype: auto`` runs bf16 on a CPU with AMX from this width up: the wider of the language model and the
vision tower (``model_width``). The demo's step on a Xeon with AMX (``experiments/bench/demo_speed.py --baseline
HEAD --quick --prompts 16 --now model.dtype=bfloat16 --tiny ...``, 2026-12-04): width 128 (the demo's 1.7 M
parameters then) 0.98x, where casts and small ops cost what the matmuls gain; width 256 (4 + 4 blocks) 1.30x; width
384 (6 + 6 blocks, 23 M) 1.39x before rlad's bf16 attention, which adds 1.09x in bf16 (~1.5x, a product of two
runs). A tower 256 wide on a language model 128 wide (today's demo, 4 language blocks, 4.35 M parameters;
2026-12-06, ``--then model.dtype=float32 --tiny vision_hidden_size=256 vision_heads=4 num_layers=4``): 1.08x on
the step (generate 1.14x, learn 1.05x), the SFT step 413 against 444 ms (8 language blocks). Without AMX
(AVX512-BF16 alone, or AVX2) bf16 never paid (README, *Performance*)."""


def model_width(path: Path | None) -> int | None:
    """The widest part of a checkpoint (its language model's or its vision tower's hidden size) from its
    ``config.json``; None when unreadable."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, TypeError, ValueError):
        return None
    if not isinstance(config, dict):  # not a model config: load_policy refuses it, naming the file
        return None
    text = (config.get("text_config") or {}).get("hidden_size") or config.get("hidden_size")
    vision = (config.get("vision_config") or {}).get("hidden_size")
    widths = [w for w in (text, vision) if isinstance(w, int)]
    return max(widths) if widths else None


def torch_dtype(config: ModelConfig, device: torch.device | str, path: Path | None = None) -> torch.dtype:
    """``model.dtype``; ``auto`` is bf16 on a GPU, and on a CPU bf16 where it pays: AMX and a language model or
    vision tower at least ``BF16_CPU_MIN_WIDTH`` wide (read from ``path``'s config), fp32 otherwise. An explicit
    ``bfloat16`` on a CPU without bf16 units is obeyed, with a warning: torch multiplies bf16 matrices there on a
    slow fallback (measured on an AVX2-only EPYC with torch 2.13: a bf16 ``linear`` at ~18 GFLOP/s against fp32's
    ~160; README, *Performance*)."""
    if config.dtype == "auto":
        if torch.device(device).type == "cuda":
            return torch.bfloat16
        wide = (model_width(path) or 0) >= BF16_CPU_MIN_WIDTH
        return torch.bfloat16 if wide and cpu_bf16_units() == "amx_bf16" else torch.float32
    if config.dtype == "bfloat16" and torch.device(device).type == "cpu" and cpu_bf16_units() is None:
        log.warning("model.dtype=bfloat16 on a CPU without bf16 units (torch sees neither AMX nor AVX512-BF16): "
                    "matrix products run on a slow fallback, several times slower than float32 (use auto)")  # fmt: skip
    return getattr(torch, config.dtype)


def processor_template(path: Path) -> str | None:
    """The chat template a checkpoint keeps for its processor (``chat_template.json`` / ``.jinja``), used
    when the tokenizer carries none (released Qwen-VL checkpoints keep the vision-aware one there)."""
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text()).get("chat_template")
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    return None


def load_image_processor(path: Path, config: ModelConfig) -> Any:
    from transformers import AutoImageProcessor

    kwargs = {}
    if config.min_pixels is not None:
        kwargs["min_pixels"] = config.min_pixels
    if config.max_pixels is not None:
        kwargs["max_pixels"] = config.max_pixels
    return AutoImageProcessor.from_pretrained(path, local_files_only=True, **kwargs)


def set_threads(threads: int) -> None:
    """torch's CPU threads: ``threads``, or every core when 0. A Ray worker starts with OMP_NUM_THREADS set to
    its reserved CPUs (often 1); the synchronous loop never runs rollout and learning at once, so each phase
    may use the whole node."""
    torch.set_num_threads(threads or os.cpu_count() or 1)


# transformers (5.2x) swaps a model's layers for kernels downloaded from the Hugging Face Hub whenever the `kernels`
# package is installed (a dependency of transformers), at load time and again at each `model.train()`/`.eval()` on a
# GPU. Those are code fetched from the network while training (it fails on an offline cluster, and asks for
# trust_remote_code), and numerics the engine and learner need not share. rlad loads plain torch layers everywhere.
NO_HUB_KERNELS = {"use_kernels": False}


def attention_choice(config: ModelConfig, device: str | torch.device) -> dict[str, str]:
    """``from_pretrained``'s ``attn_implementation`` for ``model.attn_implementation`` (none for ``auto``); flash
    attention refused, naming the key, where it cannot run (no CUDA device, no ``flash-attn`` package)."""
    choice = config.attn_implementation
    if choice == "auto":
        return {}
    if choice == "flash_attention_2":
        import importlib.util

        if torch.device(device).type != "cuda":
            raise ConfigError(
                f"model.attn_implementation flash_attention_2 needs a CUDA GPU; this policy loads on {device} "
                "(auto, sdpa or eager run anywhere)"
            )
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError(
                "model.attn_implementation flash_attention_2 needs the flash-attn package (pip install flash-attn), "
                "which is not installed here"
            )
    return {"attn_implementation": choice}


def load_policy(
    config: ModelConfig,
    *,
    shots: int = 1,
    device: str | torch.device = "cpu",
    trainable: bool = False,
    blocks: Sequence[str] = BLOCKS,
) -> Policy:
    """Model, tokenizer, image processor and input builder for ``config``; see the module docstring."""
    path = resolve_model_path(config)
    model = model_class(path).from_pretrained(
        path, dtype=torch_dtype(config, device, path), local_files_only=True, **attention_choice(config, device),
        **NO_HUB_KERNELS,
    )  # fmt: skip
    patch_embedding_as_matmul(model)
    from rlad.vision_windows import batch_vision_windows

    batch_vision_windows(model)  # one attention call a vision block, not one a window (rlad/vision_windows.py)
    if (
        torch.device(device).type == "cpu"
        and config.attn_implementation == "auto"
        and model.config._attn_implementation == "sdpa"
    ):
        model.set_attn_implementation(attention.register())  # plain matmuls where CPU SDPA is slow (rlad/attention.py)
    model.to(device)
    builder = load_builder(config, shots=shots, blocks=blocks)
    tokenizer, image_processor = builder.tokenizer, builder.image_processor
    if trainable:
        model = prepare_for_training(model, config)
    else:
        model.eval()
    return Policy(model, tokenizer, image_processor, builder, path)


class PatchProjection(torch.nn.Conv3d):
    """The vision tower's patch embedding computed as the matrix product it is.

    Qwen-VL embeds each patch with a ``Conv3d`` whose kernel is its stride and the whole input: one output per
    patch, a linear map of the flattened patch. torch's CPU ``conv3d`` is slow on that shape (measured on the
    demo's SFT step: forward + backward 40 ms of 400, against a few ms as a matmul; cuDNN has the same trouble on
    some GPUs, which is why vLLM and transformers' ``fusion_config`` switch to a linear layer). The weight stays
    the Conv3d's, same name and shape, so checkpoints, LoRA, DeepSpeed and the weight sync to vLLM see no
    difference; any other input shape takes the ordinary convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != tuple(self.kernel_size):
            return super().forward(x)
        out = torch.nn.functional.linear(x.flatten(1), self.weight.flatten(1), self.bias)
        return out.view(len(x), self.out_channels, 1, 1, 1)


def patch_embedding_as_matmul(model: Any) -> int:
    """Turn every non-overlapping ``Conv3d`` of ``model`` (Qwen-VL's patch embedding) into a ``PatchProjection``
    in place (its class only: parameters untouched); returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Conv3d and module.stride == module.kernel_size and module.groups == 1 and (
            module.padding == (0, 0, 0) and module.dilation == (1, 1, 1)
        ):  # fmt: skip
            module.__class__ = PatchProjection
            count += 1
    return count


def load_builder(config: ModelConfig, *, shots: int = 1, blocks: Sequence[str] = BLOCKS) -> InputBuilder:
    """The input builder of the checkpoint ``config`` names (tokenizer, image processor, chat template), with
    no model loaded: what an engine that holds its own copy of the weights (vLLM) needs."""
    from transformers import AutoTokenizer

    path = resolve_model_path(config)
    return InputBuilder(
        AutoTokenizer.from_pretrained(path, local_files_only=True),
        load_image_processor(path, config),
        image_size=config.image_size,
        shots=shots,
        chat_template=processor_template(path),
        blocks=blocks,
        vision=model_type_of(path) != "qwen2",
    )


def merge_lora_state(
    state: dict[str, torch.Tensor], scaling: float, adapter: str = "default"
) -> dict[str, torch.Tensor]:
    """The weights a LoRA-wrapped policy computes with, under the plain model's names: each adapted linear
    layer's W + scaling * B @ A, a ``modules_to_save`` copy in place of its original, peft's prefixes gone.
    Pure (no model needed): the learner sends this to the rollout engines, and export applies it to a DeepSpeed
    checkpoint of a LoRA run. ``scaling`` is ``lora.alpha / lora.r``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key or ".original_module." in key:
            continue
        name = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        name = name.replace(f".modules_to_save.{adapter}.", ".")
        stem = key.removesuffix(".base_layer.weight")
        if stem != key and f"{stem}.lora_A.{adapter}.weight" in state:
            a, b = state[f"{stem}.lora_A.{adapter}.weight"], state[f"{stem}.lora_B.{adapter}.weight"]
            value = value + (scaling * (b.float() @ a.float())).to(value.dtype)
        out[name] = value
    return out


def prepare_for_training(model: Any, config: ModelConfig) -> Any:
    """Freeze what the config keeps fixed, switch on gradient checkpointing, wrap LoRA adapters."""
    vision = getattr(model.model, "visual", None)  # None: a text-only model
    if config.freeze_vision and vision is not None:
        for p in model.model.visual.parameters():
            p.requires_grad_(False)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.lora.r > 0:
        from peft import LoraConfig, get_peft_model

        # Only the language model's projections: a regex keeps peft away from the vision tower's modules.
        # A trainable vision tower goes in modules_to_save, so checkpoints (and resume) carry it too.
        names = "|".join(config.lora.target_modules)
        lora = LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=rf".*language_model.*\.({names})" if vision is not None else rf".*\.({names})",
            modules_to_save=None if config.freeze_vision or vision is None else ["visual"],
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    model.train()
    return model


def parameter_count(model_dir: str | Path) -> int:
    """Parameters of the checkpoint at ``model_dir``, read from its safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    params = 0
    for path in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                params += int(np.prod(f.get_slice(name).get_shape()))
    return params
