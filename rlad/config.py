"""The config schema: every knob of rlad, its default and its meaning, in one place.

A run's config is this schema, then a YAML file merged over it, then ``key=value`` overrides from the
command line. Unknown keys, wrong types and impossible values fail at load time with the key and the
file named, before anything starts. Each section holds the arguments of one component (``mask`` ->
``mask_text.mask_to_grid``, ``rewards`` -> ``rewards.RewardMix``); later stages add their sections here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlad.mask_text import Cover

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "GenerationConfig",
    "LoraConfig",
    "MaskConfig",
    "ModelConfig",
    "SFTConfig",
    "SynthConfig",
    "load_config",
    "paper_rewards",
    "save_config",
    "to_yaml",
]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file (or override) and the key."""


@dataclass
class MaskConfig:
    """How ground-truth pixel masks become the patch grid that ``<seg>`` describes."""

    grid: int = 24
    """Patches per side of the grid (paper: 24 on 512 px images)."""
    cover: Cover = Cover.any
    """When a patch is anomalous: ``any`` pixel of it, or an ``area`` share >= tau."""
    tau: float = 0.5
    """Share of a patch that must be anomalous under ``cover: area``; ignored under ``any``."""

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ConfigError(f"mask.grid must be >= 1, got {self.grid}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"mask.tau must be in (0, 1], got {self.tau}")


def paper_rewards() -> dict[str, Any]:
    """OmniAD's reward mix: format + detection (alpha 2) + answer (1 right, 0.1 wrong), equal weights."""
    return {
        "format": {"weight": 1.0},
        "detection": {"weight": 1.0, "alpha": 2.0},
        "answer": {"weight": 1.0, "correct": 1.0, "wrong": 0.1},
    }


@dataclass
class LoraConfig:
    """Low-rank adapters on the language model (peft). ``r: 0`` trains every weight (the paper's setting)."""

    r: int = 0
    """Adapter rank; 0 turns LoRA off."""
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names adapted, matched inside the language model only (the vision tower stays full)."""


@dataclass
class ModelConfig:
    """The policy: a local Qwen2.5-VL / Qwen2-VL checkpoint directory, or ``tiny`` (built here, no download)."""

    path: str = "tiny"
    """A local checkpoint directory (never a hub name: nothing is downloaded), or ``tiny``."""
    dtype: str = "auto"
    """``auto`` (bf16 on GPU, fp32 on CPU), ``float32`` or ``bfloat16``."""
    image_size: int | None = 512
    """Images are resized to this square size before the image processor (paper: 512); null keeps them."""
    min_pixels: int | None = None
    """Lower bound on an image's pixels after resizing (image processor's ``min_pixels``); null: checkpoint's."""
    max_pixels: int | None = None
    """Upper bound on an image's pixels (``max_pixels``); null: the checkpoint's value."""
    gradient_checkpointing: bool = False
    freeze_vision: bool = False
    """Keep the vision tower's weights fixed while training."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    tiny: dict[str, Any] = field(default_factory=dict)
    """Sizes for ``path: tiny`` (fields of ``rlad.tiny.TinySpec``); empty takes its defaults."""

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"model.dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.image_size is not None and self.image_size < 28:
            raise ConfigError(f"model.image_size must be >= 28 (one merged patch), got {self.image_size}")
        if self.lora.r < 0:
            raise ConfigError(f"model.lora.r must be >= 0, got {self.lora.r}")
        from rlad.tiny import TinySpec

        unknown = sorted(set(self.tiny) - set(TinySpec.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"model.tiny: unknown keys {unknown}; known: {sorted(TinySpec.__dataclass_fields__)}")


@dataclass
class SynthConfig:
    """The generated benchmark used when ``data.root`` is empty (rlad.data.synth.SynthSpec)."""

    images_per_class: int = 40
    references_per_class: int = 4
    size: int = 256
    classes: list[str] = field(default_factory=list)
    """Empty: all eight classes."""
    fixed_options: bool = False
    """False: MMAD's way, 4 options with the answer at a random letter. True: every option of a question,
    always in the same order, so a letter always names the same answer (the demo: the 1.7M-parameter tiny model
    does not learn in CPU minutes to look a letter up among shuffled options)."""


@dataclass
class DataConfig:
    """Where samples come from. With no ``root`` the benchmark is generated (and cached) from ``synth``."""

    root: str | None = None
    """Dataset root: MMAD-style (``mmad`` below) or an MVTec-AD-layout folder."""
    mmad: str | None = None
    """Path of an ``mmad.json``; default ``<root>/mmad.json`` when it exists, else the MVTec-AD reader."""
    sft_jsonl: str | None = None
    """A JSONL of your own SFT examples (image, question, options, answer, target[, reference, mask]);
    replaces the generated targets when set."""
    shots: int = 1
    """0: query image only; 1: a normal reference image of the same class first (the 1-shot setting)."""
    eval_fraction: float = 0.2
    """Share of images (not questions) held out for evaluation; split by a hash of the image path."""
    questions_per_image: int = 0
    """Training questions kept per image (seeded choice); 0 keeps all. The generated benchmark asks 6
    questions about a defective image and 3 about a normal one: 3 balances what <seg> is trained on."""
    on_bad: str = "error"
    """A sample that cannot be read: ``error`` stops naming it; ``skip`` leaves it out, counted and logged."""
    synth: SynthConfig = field(default_factory=SynthConfig)

    def __post_init__(self) -> None:
        if self.shots not in (0, 1):
            raise ConfigError(f"data.shots must be 0 or 1, got {self.shots}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.questions_per_image < 0:
            raise ConfigError(f"data.questions_per_image must be >= 0, got {self.questions_per_image}")
        if self.on_bad not in ("error", "skip"):
            raise ConfigError(f"data.on_bad must be error or skip, got {self.on_bad!r}")


@dataclass
class GenerationConfig:
    """Sampling settings of the policy, written once here (never read from the checkpoint's defaults)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 turns top-k off."""


@dataclass
class SFTConfig:
    """Stage 1, the warm-start on dense <seg><think><answer> targets (transformers' Trainer)."""

    output_dir: str = "runs/sft"
    lr: float = 1e-4
    """Paper: 1e-4."""
    weight_decay: float = 0.03
    """Paper: 0.03."""
    epochs: float = 3.0
    max_steps: int = -1
    """> 0 overrides ``epochs``."""
    batch_size: int = 4
    """Per device."""
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 2
    resume: bool = True
    """Continue from the last checkpoint in ``output_dir`` when there is one."""
    deepspeed: str | None = None
    """Path of a DeepSpeed JSON config, passed to the Trainer (GPU runs; e.g. configs/deepspeed/zero2.json)."""
    eval_samples: int = 64
    """Held-out questions scored (greedy) before and after training; 0 skips the check."""
    num_workers: int = 0
    """DataLoader processes that load and preprocess images."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("sft.lr must be > 0, sft.batch_size and sft.grad_accum >= 1")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("sft needs epochs > 0 or max_steps > 0")


@dataclass
class Config:
    seed: int = 0
    """Seed for data generation, sampling and initialisation."""
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rewards: dict[str, Any] = field(default_factory=paper_rewards)
    """Reward name -> {weight, parameters of that reward}. total = sum(weight * reward). A reward with
    weight 0 is still computed and logged. Names come from the reward registry (``rlad rewards``)."""


def _describe_omegaconf_error(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = getattr(err, "msg", None) or str(err)
    msg = msg.splitlines()[0]
    return f"key {key!r}: {msg}" if key else msg


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Schema defaults, then the YAML at ``path`` (if any), then ``overrides`` like ``mask.grid=8``."""
    merged: DictConfig = OmegaConf.structured(Config)
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            from_file = OmegaConf.load(path)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(from_file, DictConfig):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got a list")
        try:
            merged = OmegaConf.merge(merged, from_file)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{path}: {_describe_omegaconf_error(err)}") from err
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command-line override {item!r} is not of the form key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise ConfigError(f"command-line override {item!r}: {_describe_omegaconf_error(err)}") from err
    where = source + (f" with overrides {list(overrides)}" if overrides else "")
    try:
        config: Config = OmegaConf.to_object(merged)  # runs each section's __post_init__ checks
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {_describe_omegaconf_error(err)}") from err
    _check_rewards(config, where)
    return config


def _check_rewards(config: Config, where: str) -> None:
    from rewards import RewardMix, RewardSpecError, UnknownRewardError

    try:
        RewardMix(config.rewards)
    except (RewardSpecError, UnknownRewardError) as err:
        raise ConfigError(f"{where}: {err}") from err


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config (a run's snapshot); ``load_config`` reads it back unchanged."""
    Path(path).write_text(to_yaml(config))
