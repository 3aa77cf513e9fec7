"""The config schema: every knob of rlad, its default and its meaning, in one place.

A run's config is this schema, then a YAML file merged over it, then ``key=value`` overrides from the
command line. Unknown keys, wrong types and impossible values fail at load time with the key and the
file named, before anything starts. Each section holds the arguments of one component (``mask`` ->
``mask_text.mask_to_grid``, ``rewards`` -> ``rewards.RewardMix``); later stages add their sections here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlad.mask_text import Cover

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "GRPOConfig",
    "GenerationConfig",
    "LearnerConfig",
    "LoraConfig",
    "MaskConfig",
    "ModelConfig",
    "OutputConfig",
    "RolloutConfig",
    "SFTConfig",
    "ScoringConfig",
    "SynthConfig",
    "TrainConfig",
    "VLLMConfig",
    "absolute_paths",
    "load_config",
    "paper_rewards",
    "save_config",
    "to_yaml",
]

log = logging.getLogger(__name__)

MOVED = {"grpo.reward_chunk": "scoring.chunk"}
"""Keys that moved: an older config (a run folder's snapshot) naming the old key is read with the new one."""


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


def check_output_path(key: str, path: str) -> None:
    """A relative output folder must stay inside the working directory once resolved (``runs/../../x`` is a
    typo or a trick, refused); an absolute one is the user's explicit choice and taken as given."""
    if Path(path).is_absolute():
        return
    resolved = (Path.cwd() / path).resolve()
    if not resolved.is_relative_to(Path.cwd().resolve()):
        raise ConfigError(f"{key} {path!r} leaves the working directory ({resolved}); give an absolute path instead")


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
    """LoRA scaling: the adapter's update is multiplied by ``alpha / r``."""
    dropout: float = 0.05
    """Dropout on the adapter's input during training."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names adapted, matched inside the language model only (the vision tower stays full)."""


@dataclass
class BaseStageConfig:
    """The base stage of ``path: tiny`` (``rlad/base_stage.py``). A pretrained instruct model already sees and
    writes grounded answers; the tiny model starts from random weights. Before any task data it is taught
    generic questions about generated objects with plain coloured spots pasted on (``rlad/data/base_set.py``:
    no defect, no anomaly mask, no anomaly label), answered in the output format with the spots' cells in
    ``<seg>``. Built once per (``model.tiny``, this section) and cached like the tiny model; SFT, GRPO alone
    (``train.warm_start: base``) and SFT + GRPO then all start from it."""

    images: int = 0
    """Images in the base set, one question each (a fifth held out for its check); 0: no base stage."""
    epochs: float = 2.0
    """Passes over the base set."""
    lr: float = 1e-3
    """Peak learning rate (cosine schedule, as the SFT stage)."""
    batch_size: int = 8
    """Examples per optimizer step."""
    grid: int = 8
    """The grid of the ``<seg>`` cells the base stage writes; must equal ``mask.grid``."""

    def __post_init__(self) -> None:
        if self.images < 0 or 0 < self.images < 50:
            raise ConfigError(f"model.base.images must be 0 (no base stage) or >= 50, got {self.images}")
        if self.epochs <= 0 or self.lr <= 0 or self.batch_size < 1 or self.grid < 1:
            raise ConfigError("model.base: epochs, lr, batch_size and grid must be positive")


@dataclass
class ModelConfig:
    """The policy: a local Qwen2.5-VL / Qwen2-VL checkpoint directory, or ``tiny`` (built here, no download)."""

    path: str = "tiny"
    """A local checkpoint directory (never a hub name: nothing is downloaded), or ``tiny``."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """``auto``, ``float32`` or ``bfloat16``. ``auto`` is bf16 on a GPU; on a CPU it is bf16 only with AMX and a
    language model or vision tower at least 256 wide (``rlad.policy.BF16_CPU_MIN_WIDTH``: measured 0.98x at
    width 128, 1.30x at 256, 1.39x at 384 before rlad.attention, 1.08x for the demo's tower of 256 on a language
    model of 128, on a Xeon with AMX; no gain without AMX), fp32 otherwise. bf16 on a CPU keeps fp32 master
    weights and optimizer state: the learner's DeepSpeed bf16 optimizer, and SFT's fp32 weights under the
    Trainer's bf16 autocast (an SFT on a GPU trains the bf16 weights, as TRL does)."""
    image_size: int | None = 512
    """Images are resized to this square size before the image processor (paper: 512); null keeps them."""
    min_pixels: int | None = None
    """Lower bound on an image's pixels after resizing (image processor's ``min_pixels``); null: checkpoint's."""
    max_pixels: int | None = None
    """Upper bound on an image's pixels (``max_pixels``); null: the checkpoint's value."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """The attention transformers runs (learner, transformers engine, SFT; vLLM has its own). ``auto``: sdpa, and
    on a CPU ``rlad.attention``'s. ``flash_attention_2`` needs a CUDA GPU and the ``flash-attn`` package: one
    variable-length call for padded batches and for the vision tower's windows (``rlad/vision_windows.py`` makes
    one call a block without it); unverified on a GPU here."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    freeze_vision: bool = False
    """Keep the vision tower's weights fixed while training."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Low-rank adapters instead of full fine-tuning (``r: 0``, the default, trains every weight)."""
    tiny: dict[str, Any] = field(default_factory=dict)
    """Sizes for ``path: tiny`` (fields of ``rlad.tiny.TinySpec``); empty takes its defaults."""
    base: BaseStageConfig = field(default_factory=BaseStageConfig)
    """``path: tiny`` only: the base stage the tiny model goes through before any task training."""

    def __post_init__(self) -> None:
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
    """Generated images per object class (half normal, half with one defect)."""
    references_per_class: int = 4
    """Normal training images per class that 1-shot prompts draw their reference from."""
    size: int = 256
    """Side of the generated square images, in pixels."""
    classes: list[str] = field(default_factory=list)
    """Empty: all eight classes."""
    fixed_options: bool = False
    """False: MMAD's way, 4 options with the answer at a random letter. True: every option of a question,
    always in the same order, so a letter always names the same answer (the demo: the 1.7M-parameter tiny model
    does not learn in CPU minutes to look a letter up among shuffled options)."""
    visibility: float = 1.0
    """How easy a generated defect is to see: its thickness (a scratch's or crack's width, a blob's radius) and a
    stain's opacity times this. 1.0 is the benchmark's realism (lines 1-2 px wide at 224 px, faint stains);
    larger values are an easier benchmark, to be reported as such next to the 1.0 numbers."""

    def __post_init__(self) -> None:
        if not self.visibility > 0:
            raise ConfigError(f"data.synth.visibility must be > 0, got {self.visibility}")


@dataclass
class DataConfig:
    """Where samples come from. With no ``root`` the benchmark is generated (and cached) from ``synth``."""

    root: str | None = None
    """Dataset root: MMAD-style (``mmad`` below) or an MVTec-AD-layout folder."""
    mmad: str | None = None
    """Path of an ``mmad.json``; default ``<root>/mmad.json`` when it exists, else the MVTec-AD reader."""
    sft_jsonl: str | None = None
    """A JSONL of your own SFT examples (image, question, options, answer, target[, reference, mask, defect]);
    replaces the generated targets when set."""
    shots: Literal[0, 1] = 1
    """0: query image only; 1: a normal reference image of the same class first (the 1-shot setting)."""
    eval_fraction: float = 0.2
    """Share of images (not questions) held out for evaluation; split by a hash of the image path."""
    questions_per_image: int = 0
    """Training questions kept per image (seeded choice); 0 keeps all. The generated benchmark asks 6
    questions about a defective image and 3 about a normal one: 3 balances what <seg> is trained on."""
    text_only: bool = False
    """Ask the questions without their images (a text-only model, e.g. ``model.tiny: {text_only: true}``;
    side-by-side benchmarks with text-only trainers). The rewards still check the answer and the mask."""
    on_bad: Literal["error", "skip"] = "error"
    """A sample that cannot be read: ``error`` stops naming it; ``skip`` leaves it out, counted and logged."""
    synth: SynthConfig = field(default_factory=SynthConfig)
    """The generated benchmark used when ``data.root`` is null (the embedded default)."""
    grpo_fresh_images: bool = False
    """The generated benchmark only. False: GRPO samples its questions from the training split SFT learned from
    (the paper's way). True: from another draw of the same benchmark (``synth`` as set, the generator's random
    streams moved: new images of the same classes, defects and visibility, none of them SFT's or held out;
    generated once and cached like the first). The held-out split is the first draw's either way."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.grpo_fresh_images and (self.root or self.mmad):
            raise ConfigError(
                "data.grpo_fresh_images draws new images of the generated benchmark: it needs "
                f"data.root and data.mmad unset, got root={self.root!r}, mmad={self.mmad!r}"
            )
        if self.questions_per_image < 0:
            raise ConfigError(f"data.questions_per_image must be >= 0, got {self.questions_per_image}")


@dataclass
class OutputConfig:
    """The answer layout the policy is taught (SFT targets, system prompt) and rewarded for (format reward)."""

    blocks: list[str] = field(default_factory=lambda: ["seg", "think", "answer"])
    """The blocks of a completion, in order: the paper's ``seg, think, answer``; the reasoning ablations
    (paper Table 6) drop ``seg`` (visual reasoning), ``think`` (textual reasoning) or both."""

    def __post_init__(self) -> None:
        from rlad.completion import BLOCKS

        blocks = list(self.blocks)
        if "answer" not in blocks or [b for b in BLOCKS if b in blocks] != blocks:
            raise ConfigError(
                f"output.blocks must be an ordered subset of {list(BLOCKS)} that ends with 'answer', got {blocks}"
            )


@dataclass
class GenerationConfig:
    """Sampling settings of the policy, written once here (never read from the checkpoint's defaults)."""

    max_new_tokens: int = 256
    """Most tokens a completion may have; one cut there has no closing tags and fails the format reward."""
    temperature: float = 1.0
    """Sampling temperature of the rollout (the log-probs the engine reports are at this temperature); evaluation's
    greedy rows ignore it."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches ``top_p`` (1.0: all)."""
    top_k: int = 0
    """0 turns top-k off."""
    kv_cache: Literal["static", "dynamic"] = "static"
    """transformers engine: ``static`` preallocates the key/value cache for prompt + ``max_new_tokens`` (no
    concatenation per decoded token: 1.2-1.3x faster decoding of the demo on 2 CPU cores, experiments/bench/
    demo_speed.py); ``dynamic`` grows it token by token. vLLM manages its own cache."""


@dataclass
class SFTConfig:
    """Stage 1, the warm-start on dense <seg><think><answer> targets (transformers' Trainer)."""

    output_dir: str = "runs/sft"
    """Where ``rlad sft`` writes (checkpoints, ``final/``, ``report.json``); inside ``rlad train`` it is
    ``<run_dir>/sft``."""
    lr: float = 1e-4
    """Paper: 1e-4."""
    weight_decay: float = 0.03
    """Paper: 0.03."""
    epochs: float = 3.0
    """Passes over the SFT examples (fractional allowed); ``max_steps`` > 0 overrides it."""
    max_steps: int = -1
    """> 0 overrides ``epochs``."""
    batch_size: int = 4
    """Per device."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step (effective batch = ``batch_size * grad_accum * processes``)."""
    warmup_ratio: float = 0.03
    """Share of the steps over which the learning rate rises linearly from 0."""
    lr_scheduler: str = "cosine"
    """transformers' schedule name after warm-up (``cosine``, ``linear``, ``constant``, ...)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    logging_steps: int = 10
    """Steps between loss/learning-rate points in TensorBoard (``<output_dir>/tensorboard``)."""
    save_steps: int = 200
    """Steps between resumable checkpoints (``checkpoint-N/``)."""
    save_total_limit: int = 2
    """Checkpoints kept on disk; older ones are deleted."""
    resume: bool = True
    """Continue from the last checkpoint in ``output_dir`` when there is one."""
    deepspeed: str | None = None
    """Path of a DeepSpeed JSON config, passed to the Trainer (GPU runs; e.g. configs/deepspeed/zero2.json)."""
    eval_samples: int = 64
    """Held-out questions scored (greedy) before and after training; 0 skips the check."""
    num_workers: int = 0
    """DataLoader processes that load and preprocess images."""
    share_prefix: bool = True
    """Run the leading tokens every example of a batch has in common (the system prompt: a third of the demo's
    sequence) once per batch instead of once per example, the rest behind their key/value cache
    (``rlad.sft.shared_prefix_forward``): the same loss and gradients up to float rounding (tested), less
    compute. Off, or with ``model.gradient_checkpointing`` (checkpointed layers drop the cache): the plain
    forward."""
    seg_loss_weight: float = 1.0
    """Weight of the ``<seg>…</seg>`` tokens in the SFT loss, relative to the other completion tokens (a weighted
    token mean). 1: the paper's plain loss. The mask is a short span of a long target whose think text would
    otherwise dominate the loss; > 1 is a departure from the paper, measured in the README."""
    grounding_position_weight: float = 0.0
    """Weight of the auxiliary position loss (rlad/grounding.py; **not in the paper's recipe**): a linear head on
    each image token's hidden state predicts the token's row and column. 0: off, the paper's plain SFT."""
    grounding_mask_weight: float = 0.0
    """Weight of the auxiliary per-token mask loss (rlad/grounding.py; **not in the paper's recipe**): the same
    head predicts whether the ground-truth patch mask covers each query-image token's cell; needs
    ``mask.grid`` equal to the merged token grid (``model.image_size`` / 28). 0: off."""
    grounding_kind_weight: float = 0.0
    """Weight of the auxiliary per-token defect-kind loss (rlad/grounding.py; **not in the paper's recipe**): the
    same head names the defect kind (one of the training set's defect names) of every query-image token the
    ground-truth mask covers — the label the SFT target's think text already names. 0: off."""
    grounding_look_weight: float = 0.0
    """Weight of the auxiliary per-token defect-look loss (rlad/grounding.py; **not in the paper's recipe**): the
    same head names the colour and the shape the generator drew the defect in (``rlad.data.render``'s names) on
    every query-image token the ground-truth mask covers — what a Defect Description question asks and the think
    text names; needs the generated benchmark's metadata. 0: off (at 0.1 it cost patch F1 0.18 and moved Description
    by nothing: README, "Teaching the tower the defect's look")."""
    grounding_layer: int = 1
    """The language model hidden state the grounding head reads: 0 the input embeddings (the vision tower's
    output), k the output of layer k."""

    def __post_init__(self) -> None:
        check_output_path("sft.output_dir", self.output_dir)
        if self.seg_loss_weight <= 0:
            raise ConfigError(f"sft.seg_loss_weight must be > 0, got {self.seg_loss_weight}")
        weights = {
            "grounding_position_weight": self.grounding_position_weight,
            "grounding_mask_weight": self.grounding_mask_weight,
            "grounding_kind_weight": self.grounding_kind_weight,
            "grounding_look_weight": self.grounding_look_weight,
            "grounding_layer": self.grounding_layer,
        }
        for name, value in weights.items():
            if value < 0:
                raise ConfigError(f"sft.{name} must be >= 0, got {value}")
        if self.lr <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("sft.lr must be > 0, sft.batch_size and sft.grad_accum >= 1")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("sft needs epochs > 0 or max_steps > 0")

    @property
    def grounding(self) -> bool:
        """Whether the auxiliary grounding loss is on."""
        weights = (self.grounding_position_weight, self.grounding_mask_weight, self.grounding_kind_weight,
                   self.grounding_look_weight)  # fmt: skip
        return any(weights)


@dataclass
class GRPOConfig:
    """Stage 2, GRPO with verifiable rewards: the algorithm (``rlad.grpo``) and its step schedule."""

    steps: int = 200
    """Optimizer steps (one per batch of prompts)."""
    prompts_per_step: int = 8
    """Questions sampled per step; each gets ``group_size`` completions."""
    group_size: int = 16
    """Completions per question (paper: 16)."""
    lr: float = 1e-6
    """Paper: 1e-6."""
    weight_decay: float = 0.1
    """Paper: 0.1."""
    warmup_steps: int = 0
    """Linear warm-up, then a constant rate (so extending ``steps`` on resume keeps the schedule)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm, per optimizer step."""
    max_nonfinite_steps: int = 3
    """An optimizer step whose loss or gradients hold a NaN or an infinity is skipped (weights and optimizer
    state untouched), counted and logged; this many in a row stop the run (NonFiniteError)."""
    epochs_per_step: int = 1
    """mu: passes over each step's batch (> 1 makes the importance ratio and clipping matter)."""
    clip_eps_low: float = 0.2
    """Lower clip of the policy ratio: ``ratio >= 1 - clip_eps_low`` (PPO's epsilon)."""
    clip_eps_high: float = 0.28
    """Upper clip of the policy ratio: ``ratio <= 1 + clip_eps_high`` (DAPO's clip-higher when above
    ``clip_eps_low``)."""
    kl_coef: float = 0.0
    """KL to the frozen warm-start policy, in the loss; 0 skips the reference model entirely."""
    kl_kind: Literal["k1", "k3"] = "k3"
    """KL estimator against the reference when ``kl_coef`` > 0: ``k1`` (log-ratio) or ``k3`` (unbiased,
    non-negative; GRPO's)."""
    advantage_scale: Literal["group", "batch", "none"] = "group"
    """``group`` (divide by the group's std, GRPO), ``batch`` (the batch's std) or ``none`` (Dr.GRPO)."""
    baseline: Literal["group", "greedy"] = "group"
    """What a completion's reward is measured against: ``group`` (GRPO: its group's mean) or ``greedy``
    (**not in the paper**; the self-critical baseline of SCST, Rennie et al. 2017): each prompt is also answered
    greedily, and a sample's advantage is its reward less the greedy answer's, so GRPO is told what beats the
    policy's greedy mode, which evaluation reads. The greedy completions are scored, logged (``reward_greedy/*``)
    and stored (replay row ``index`` -1), never learned from; one more generation call per step. On the demo over
    3 seeds (README, "More levers") it left the greedy policy a little below the group mean's."""
    credit: Literal["completion", "block"] = "completion"
    """Which tokens an advantage reaches: ``completion`` (GRPO: every token gets the total reward's) or ``block``
    (**not in the paper**; rlad/credit.py): each reward's share reaches only the blocks it judges (detection the
    ``<seg>``, answer the ``<think>`` and ``<answer>``, format and rewards without blocks all tokens)."""
    cell_credit: float = 0.0
    """Weight w of per-run credit inside ``<seg>`` (**not in the paper**; ``rlad.credit.cell_credits``), added to
    each token's advantage by ``cell_credit_rule``. 0: off (GRPO's)."""
    cell_credit_rule: Literal["gain", "relative", "precision"] = "gain"
    """``gain``: a run's tokens get w x what the run added to the mask's patch F1 (the credits of a mask sum to
    w x its F1); ``relative``: the same less their mean over the mask's runs (a mask's credits sum to 0);
    ``precision``: w (2 p - 1) for a run whose patches are a share p anomalous, w (1 - 2 m) on the closing tag
    with a share m of the anomalous patches unnamed. Measured on the demo over 3 seeds (README): none beat
    plain GRPO; ``precision`` shrinks the masks, ``gain`` at w 3 does harm."""
    aggregation: Literal["token_mean", "seq_mean_token_mean", "dr_grpo"] = "token_mean"
    """``token_mean``, ``seq_mean_token_mean`` (GRPO paper) or ``dr_grpo`` (sum / max_new_tokens)."""
    tis_cap: float = 2.0
    """Truncated importance sampling against the rollout engine's log-probs (``rlad.grpo.tis_weights``): each
    token's surrogate is weighted by min(pi_old / pi_engine, tis_cap). It corrects for the one-version lag of
    ``train.async_rollout`` and for engine/learner numeric gaps (bf16 vLLM vs the learner); with the engine on
    the learner's exact weights (fp32 CPU, sync) the weights are 1. 0 turns it off."""
    old_logprobs: Literal["learner", "engine"] = "learner"
    """Where the ratio's denominator comes from: ``learner`` (recomputed under the weights that sampled) or
    ``engine`` (the rollout engine's numbers). Their gap is logged either way (``logprob_mismatch``)."""
    dynamic_sampling: bool = False
    """Drop groups whose completions all score the same (zero advantage; DAPO) from the learner batch."""
    replay_share: float = 0.0
    """Share of the learner batch filled with past groups from the replay store that still carry signal."""
    max_staleness: int = 4
    """Replayed groups were generated at most this many policy versions ago."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.prompts_per_step < 1 or self.group_size < 2 or self.epochs_per_step < 1:
            raise ConfigError("grpo.steps, prompts_per_step, epochs_per_step must be >= 1 and group_size >= 2")
        if self.lr <= 0:
            raise ConfigError(f"grpo.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.replay_share < 1.0:
            raise ConfigError(f"grpo.replay_share must be in [0, 1), got {self.replay_share}")
        if self.max_nonfinite_steps < 1:
            raise ConfigError(f"grpo.max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        if self.tis_cap < 0:
            raise ConfigError(f"grpo.tis_cap must be >= 0 (0 turns TIS off), got {self.tis_cap}")
        if self.kl_coef < 0:
            raise ConfigError(f"grpo.kl_coef must be >= 0, got {self.kl_coef}")
        if not 0 <= self.cell_credit < float("inf"):
            raise ConfigError(f"grpo.cell_credit must be a finite number >= 0 (0 turns it off), got {self.cell_credit}")


@dataclass
class VLLMConfig:
    """Settings of the vLLM engine (``rollout.backend: vllm``; ``rollout/vllm_engine.py``)."""

    gpu_memory_utilization: float = 0.5
    """Share of its GPU the engine may take (weights + KV cache); colocated with a learner keep it low."""
    tensor_parallel_size: int = 1
    """GPUs per engine; the worker's ``rollout.num_gpus`` must cover them."""
    max_model_len: int = 8192
    """Prompt + completion tokens per sequence (a 512 px image is ~330 tokens on Qwen2.5-VL)."""
    enforce_eager: bool = False
    """Skip CUDA graph capture (faster start, slower decoding)."""
    enable_prefix_caching: bool = True
    """A group's completions share their prompt (and its image tokens): computed once."""
    sleep_level: Literal[0, 1, 2] = 0
    """Colocated runs: after generating, the engine sleeps (1: weights to CPU and KV cache freed; 2: both
    freed, the next sync refills the weights) so the learner has the GPU; it wakes for the next sync. 0: off."""
    dtype: str = "auto"
    """``auto`` (bf16 on GPU), ``bfloat16``, ``float32``."""

    def __post_init__(self) -> None:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(
                f"rollout.vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.tensor_parallel_size < 1 or self.max_model_len < 1:
            raise ConfigError("rollout.vllm.tensor_parallel_size and max_model_len must be >= 1")


@dataclass
class RolloutConfig:
    """The rollout workers: Ray actors that generate completions (``rollout/worker.py``)."""

    backend: Literal["transformers", "vllm"] = "transformers"
    """``transformers`` (CPU and GPU) or ``vllm`` (GPU; the ``vllm`` package in the workers' environment)."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """Engine settings used when ``backend: vllm``."""
    weight_sync: Literal["object_store", "broadcast"] = "object_store"
    """How new weights reach the engines: ``object_store`` (Ray's; CPU, small models) or ``broadcast`` (a process
    group of learner rank 0 and the engines: NCCL between GPUs, gloo between CPUs)."""
    lora_sync: Literal["merged", "adapter"] = "merged"
    """With ``model.lora.r > 0``: ``merged`` sends the engines the weights with the adapters merged in (any
    engine, either transport); ``adapter`` writes only the adapters (peft format, ~1 % of the bytes) under
    ``<run_dir>/adapters/`` and the engines load them as LoRA adapters (vLLM's ``LoRARequest``; peft in the
    transformers engine). ``adapter`` needs ``model.freeze_vision`` (vLLM adapts the language model only) and
    a run folder every node reads."""
    sync_bucket_mb: float = 256.0
    """``broadcast``: parameters sent per bucket (under ZeRO-3, gathered per bucket)."""
    freshness_steps: int = 10
    """Every this many steps (and after the first sync) each engine scores one fixed completion and its
    per-token log-probs must match the learner's: the check that weights were not only received but are the
    ones sampling. 0: off (the fingerprint check after every sync stays)."""
    freshness_tolerance: float = 0.05
    """Largest mean |engine - learner| log-prob per token the freshness check accepts (fp32: ~1e-6; bf16
    engines differ from the learner by ~1e-2 by rounding alone; a stale layer measured 0.8)."""
    workers: int = 1
    """Rollout worker actors; each step's prompts are split evenly over them."""
    num_cpus: float = 1.0
    """Ray resources reserved per worker (placement); torch uses ``threads``."""
    num_gpus: float = 0.0
    """GPUs reserved per worker (fractional shares a GPU, e.g. 0.5 when colocated with a learner)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources per worker (e.g. ``{rollout_node: 1}`` to pin workers to nodes started with
    ``ray start --resources '{"rollout_node": 8}'``)."""
    batch_size: int = 64
    """Sequences generated together (prompts x completions)."""
    pack_weights: bool = True
    """The transformers engine in bf16 on a CPU with bf16 units: its linear layers multiply by weights packed once
    for oneDNN rather than on every call (``rollout/packed_linear.py``; the same numbers, repacked whenever the
    weights change; they take the linear weights' memory a second time). false: plain ``torch.nn.Linear``."""
    threads: int = 0
    """torch threads per worker; 0: every core of its node (the sync loop never runs rollout and learner
    at once; with ``train.async_rollout`` on CPUs, half of the driver's cores each)."""
    max_restarts: int = 3
    """Times a dead rollout worker (node lost, OOM-killed) is restarted by Ray during a run; it gets the current
    weights (verified) before it generates again, and its share of the step is generated anew. 0: a dead
    worker stops the run."""

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ConfigError(f"rollout.max_restarts must be >= 0, got {self.max_restarts}")
        if self.sync_bucket_mb <= 0 or self.freshness_steps < 0 or self.freshness_tolerance <= 0:
            raise ConfigError("rollout.sync_bucket_mb and freshness_tolerance must be > 0, freshness_steps >= 0")
        if self.workers < 1 or self.batch_size < 1:
            raise ConfigError("rollout.workers and rollout.batch_size must be >= 1")


@dataclass
class LearnerConfig:
    """The learner workers: Ray actors holding a DeepSpeed engine each, data-parallel (``rlad/learner.py``)."""

    workers: int = 1
    """Data-parallel learner actors (one torch.distributed group; DeepSpeed averages gradients)."""
    num_cpus: float = 1.0
    """Ray CPUs reserved per learner (placement); torch uses ``threads``."""
    num_gpus: float = 0.0
    """GPUs reserved per learner (fractional when colocated with a rollout worker)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources per learner (e.g. ``{learner_node: 1}``; see ``rollout.resources``)."""
    micro_batch_size: int = 8
    """Completions per forward/backward; gradients accumulate over a worker's share of the step's batch. Larger
    pays in bf16 on a CPU, where bigger matmuls reach the AMX units: 32 instead of 8 made the learn phase 1.24x
    faster at width 384 (``experiments/bench/demo_speed.py``, README *Performance*); in fp32 at the demo's
    width 128, 16 was 1.15x faster than 8 (fewer, larger calls; the demo takes 16), 32 no faster than 16."""
    share_prompts: bool = True
    """Score a micro-batch's completions against one forward pass of each distinct prompt, through its key/value
    cache (``rlad/shared_prompt.py``): the prompt and its images run once per group, not once per completion; the
    log-probs are the plain layout's up to rounding. Needs ``model.gradient_checkpointing: false`` (checkpointed
    layers drop the cache). False: one padded row of prompt + completion per completion."""
    zero_stage: Literal[0, 1, 2, 3] = 0
    """DeepSpeed ZeRO stage 0-3 (CPU runs: gloo backend)."""
    deepspeed: str | None = None
    """A DeepSpeed JSON config used as the base instead (batch sizes, clipping, ZeRO stage are still set here)."""
    threads: int = 0
    """torch threads per learner; 0: every core of its node (see ``rollout.threads``)."""
    offload_optimizer: bool = False
    """ZeRO 1-3: keep the optimizer state (and its step) in CPU memory."""
    offload_params: bool = False
    """ZeRO-3: keep the parameters in CPU memory between uses."""

    def __post_init__(self) -> None:
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("learner.offload_optimizer needs learner.zero_stage 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("learner.offload_params needs learner.zero_stage 3")
        if self.workers < 1 or self.micro_batch_size < 1:
            raise ConfigError("learner.workers and learner.micro_batch_size must be >= 1")


@dataclass
class TrainConfig:
    """``rlad train``: the run directory, where the policy starts, the Ray cluster, checkpoints, evaluation."""

    run_dir: str = "runs/train"
    """The run folder: config snapshot, checkpoints, replay store, metrics, ``final/`` (README: The run folder)."""
    warm_start: str | None = None
    """A checkpoint to start GRPO from; null runs the SFT stage first (into ``<run_dir>/sft``); ``base``
    starts GRPO from ``model.path`` itself, with no SFT (the paper's "GRPO only" ablation)."""
    ray_address: str | None = None
    """Join this Ray cluster (also ``--ray-address`` or RAY_ADDRESS); null starts a local one."""
    save_steps: int = 10
    """GRPO steps between checkpoints (the last step is always saved); resume starts from the newest complete one."""
    save_total_limit: int = 2
    """Checkpoints kept on disk; older ones are deleted after a newer one is complete."""
    eval_steps: int = 0
    """Held-out evaluation every this many steps; 0: at the start and the end only."""
    eval_samples: int = 64
    """Held-out questions scored at each evaluation (greedy, one completion each)."""
    eval_sampled: int = 4
    """Also this many sampled completions per held-out question at the rollout temperature (what GRPO
    optimises: the policy's expected reward); 0 evaluates greedy only."""
    eval_examples: int = 4
    """Held-out completions shown in TensorBoard at each evaluation, as text and as overlay images (half hits,
    half misses, a seeded choice); 0 shows none."""
    async_rollout: bool = False
    """Overlap rollout with learning: while the learners train on step t, the engines generate step t+1 with the
    weights of step t-1 (staleness exactly 1 policy version, logged per step as ``async/staleness``); the
    GRPO ratio starts from the learner's recomputed log-probs and ``grpo.tis_cap`` corrects for the lag. Pays
    when rollout and learners have separate devices (split placement) — on one CPU they share the cores.
    A resumed async run regenerates its first step with the checkpoint's weights (no lag), so it is not
    bit-identical to the uninterrupted one (the synchronous loop is)."""
    placement: Literal["split", "colocate"] = "split"
    """Where actors go (one Ray placement group per run): ``split`` gives every rollout worker and learner a
    bundle of its own; ``colocate`` puts rollout worker k and learner k in one bundle (one GPU shared: set
    ``num_gpus`` 0.5 each, and ``rollout.vllm.sleep_level`` so the engine frees memory while the learner works)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Ray's bundle strategy: ``PACK``, ``SPREAD``, ``STRICT_PACK`` or ``STRICT_SPREAD``."""
    max_learner_restarts: int = 0
    """A learner that dies (node lost, OOM-killed) takes the step down with it. 0: the run stops, naming the
    checkpoint ``resume=`` continues from; n > 0: rlad rebuilds the actors and resumes from the last complete
    checkpoint itself, up to n times per run."""

    def __post_init__(self) -> None:
        check_output_path("train.run_dir", self.run_dir)
        if self.max_learner_restarts < 0:
            raise ConfigError(f"train.max_learner_restarts must be >= 0, got {self.max_learner_restarts}")
        if self.save_steps < 1 or self.save_total_limit < 1 or self.eval_steps < 0 or self.eval_samples < 0:
            raise ConfigError("train.save_steps and save_total_limit must be >= 1, eval_steps/eval_samples >= 0")
        if self.eval_sampled < 0 or self.eval_examples < 0:
            raise ConfigError(f"train.eval_sampled and eval_examples must be >= 0, got {self.eval_sampled}, "
                              f"{self.eval_examples}")  # fmt: skip


@dataclass
class ScoringConfig:
    """How the driver scores completions (``rlad/scoring.py``): every reward of the mix on each one, during
    training (the score phase) and in the held-out evaluation."""

    chunk: int = 256
    """Completions scored per Ray task; fewer than this at once are scored in the driver."""

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise ConfigError(f"scoring.chunk must be >= 1, got {self.chunk}")


@dataclass
class Config:
    seed: int = 0
    """Seed for data generation, sampling and initialisation."""
    mask: MaskConfig = field(default_factory=MaskConfig)
    """The patch grid of the Text-as-Mask codec and how pixel masks become patch masks."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy: checkpoint path (or ``tiny``), dtype, image size, LoRA."""
    data: DataConfig = field(default_factory=DataConfig)
    """The dataset: generated or on disk, shots, held-out split."""
    output: OutputConfig = field(default_factory=OutputConfig)
    """The answer layout: which blocks the policy writes, in order."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Sampling settings shared by rollout and the sampled evaluation."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Stage 1: the SFT warm-start (``rlad sft``, or inside ``rlad train``)."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """Stage 2: GRPO's algorithm settings (``rlad/grpo.py``)."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """The rollout workers and their engine (``rollout/``)."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """The learner workers (``rlad/learner.py``)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The run: folder, checkpoints, evaluation, placement, Ray."""
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    """How completions are scored against the rewards below (``rlad/scoring.py``)."""
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
        except OmegaConfBaseException as err:  # e.g. a malformed ${...} interpolation
            raise ConfigError(f"{path}: {_describe_omegaconf_error(err)}") from err
        if not isinstance(from_file, DictConfig):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got a list")
        try:
            merged = OmegaConf.merge(merged, _moved_keys(from_file, str(path)))
        except OmegaConfBaseException as err:
            raise ConfigError(f"{path}: {_describe_omegaconf_error(err)}") from err
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command-line override {item!r} is not of the form key=value")
        try:
            merged = OmegaConf.merge(merged, _moved_keys(OmegaConf.from_dotlist([item]), f"override {item!r}"))
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
    _check_cluster(config, where)
    _check_grounding(config, where)
    base = config.model.base
    if config.model.path == "tiny" and base.images and base.grid != config.mask.grid:
        raise ConfigError(f"{where}: model.base.grid {base.grid} must equal mask.grid {config.mask.grid}: the base "
                          "stage teaches the cells of the grid the run writes")  # fmt: skip
    if config.learner.share_prompts and config.model.gradient_checkpointing:
        raise ConfigError(
            f"{where}: learner.share_prompts needs model.gradient_checkpointing false (checkpointed layers drop the "
            "prompt's key/value cache the completions read); set one of them false"
        )
    return _derive(config)


def _moved_keys(node: DictConfig, where: str) -> DictConfig:
    """``node`` (a loaded file or one override) with every key of ``MOVED`` under its new name, and a warning."""
    for old, new in MOVED.items():
        section, key = old.split(".")
        if isinstance(node.get(section), DictConfig) and key in node[section]:
            value = node[section].pop(key)
            OmegaConf.update(node, new, value, force_add=True)
            log.warning("%s: %s is now %s (read as %s=%s)", where, old, new, new, value)
    return node


def _derive(config: Config) -> Config:
    """Values that follow from others, set once here: the format reward checks the layout ``output.blocks``
    teaches unless the mix names one (``_check_rewards`` made sure the two agree)."""
    fmt = config.rewards.get("format")
    if isinstance(fmt, dict) and "blocks" not in fmt:
        config.rewards["format"] = {**fmt, "blocks": list(config.output.blocks)}
    return config


def _check_grounding(config: Config, where: str) -> None:
    """The SFT stage's auxiliary grounding loss (rlad/grounding.py) where it can run."""
    sft = config.sft
    if not sft.grounding:
        return
    if config.model.lora.r or sft.deepspeed:
        raise ConfigError(f"{where}: sft.grounding_* is implemented for full fine-tuning without DeepSpeed only "
                          "(its head would not reach the LoRA or ZeRO optimiser); set model.lora.r=0 and "
                          "sft.deepspeed=null, or the grounding weights to 0")  # fmt: skip
    if not config.model.image_size:
        raise ConfigError(f"{where}: sft.grounding_* labels image tokens by their cell on one fixed grid: set "
                          "model.image_size")  # fmt: skip
    side = round(config.model.image_size / 28)
    if sft.grounding_mask_weight and side != config.mask.grid:
        raise ConfigError(f"{where}: sft.grounding_mask_weight needs one image token per mask cell: mask.grid "
                          f"{config.mask.grid} against model.image_size {config.model.image_size} "
                          f"({side} merged tokens a side; image_size = 28 * grid)")  # fmt: skip


def _check_cluster(config: Config, where: str) -> None:
    """Settings that only make sense together across the rollout, learner and train sections."""
    r, lc = config.rollout, config.learner
    if config.train.placement == "colocate" and r.workers != lc.workers:
        raise ConfigError(f"{where}: train.placement colocate pairs rollout worker k with learner k: rollout.workers "
                          f"({r.workers}) must equal learner.workers ({lc.workers})")  # fmt: skip
    if r.weight_sync == "broadcast" and (r.num_gpus > 0) != (lc.num_gpus > 0):
        raise ConfigError(f"{where}: rollout.weight_sync broadcast needs the learners and the rollout workers on the "
                          f"same kind of device (NCCL between GPUs, gloo between CPUs); rollout.num_gpus is "
                          f"{r.num_gpus:g}, learner.num_gpus {lc.num_gpus:g}")  # fmt: skip
    if r.lora_sync == "adapter" and config.model.lora.r and not config.model.freeze_vision:
        raise ConfigError(f"{where}: rollout.lora_sync adapter sends the language model's adapters only, so the "
                          "vision tower must stay fixed: set model.freeze_vision=true (or "
                          "rollout.lora_sync=merged)")  # fmt: skip
    if r.lora_sync == "adapter" and config.model.lora.r and r.vllm.sleep_level == 2:
        raise ConfigError(f"{where}: rollout.vllm.sleep_level 2 discards the engine's weights, and "
                          "rollout.lora_sync adapter never sends them again: use sleep_level 1")  # fmt: skip
    if config.model.lora.r and lc.zero_stage == 3:
        raise ConfigError(f"{where}: model.lora.r > 0 with learner.zero_stage 3: LoRA trains few weights, so ZeRO-3's "
                          "parameter sharding buys little and the merged weights sent to the engines would need every "
                          "shard gathered; use zero_stage 0-2")  # fmt: skip
    if r.backend == "vllm" and r.num_gpus and r.num_gpus < r.vllm.tensor_parallel_size:
        raise ConfigError(f"{where}: rollout.vllm.tensor_parallel_size {r.vllm.tensor_parallel_size} needs "
                          f"rollout.num_gpus >= {r.vllm.tensor_parallel_size}, got {r.num_gpus:g}")  # fmt: skip


def _check_rewards(config: Config, where: str) -> None:
    """The mix builds, and agrees with ``output.blocks``: a format reward that names its blocks names the taught
    layout, and no detection reward is trained on without a ``<seg>`` block. Checks only; ``_derive`` fills in."""
    from rewards import RewardMix, RewardSpecError, UnknownRewardError

    blocks = list(config.output.blocks)
    fmt = config.rewards.get("format")
    if isinstance(fmt, dict) and "blocks" in fmt:
        if list(fmt["blocks"]) != blocks:
            raise ConfigError(
                f"{where}: rewards.format.blocks {list(fmt['blocks'])} differs from output.blocks {blocks}; "
                "set output.blocks alone (the format reward follows it)"
            )
    detection = config.rewards.get("detection")
    if "seg" not in blocks and isinstance(detection, dict) and detection.get("weight", 1.0) != 0:
        raise ConfigError(
            f"{where}: output.blocks {blocks} has no 'seg' block, so rewards.detection.weight must be 0 "
            f"(got {detection.get('weight', 1.0)})"
        )
    try:
        RewardMix(config.rewards)
    except (RewardSpecError, UnknownRewardError) as err:
        raise ConfigError(f"{where}: {err}") from err


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config (a run's snapshot); ``load_config`` reads it back unchanged."""
    Path(path).write_text(to_yaml(config))


def absolute_paths(config: Config) -> Config:
    """Paths resolved against the driver's folder: Ray actors run elsewhere (another cwd, another node)."""

    def resolve(p: str | None) -> str | None:
        return str(Path(p).expanduser().resolve()) if p else p

    c = replace
    model_path = config.model.path if config.model.path == "tiny" else resolve(config.model.path)
    return c(
        config,
        model=c(config.model, path=model_path),
        data=c(config.data, root=resolve(config.data.root), mmad=resolve(config.data.mmad),
               sft_jsonl=resolve(config.data.sft_jsonl)),
        sft=c(config.sft, deepspeed=resolve(config.sft.deepspeed), output_dir=resolve(config.sft.output_dir)),
        learner=c(config.learner, deepspeed=resolve(config.learner.deepspeed)),
        train=c(config.train, run_dir=resolve(config.train.run_dir),
                warm_start=config.train.warm_start if config.train.warm_start == "base"
                else resolve(config.train.warm_start)),
    )  # fmt: skip
