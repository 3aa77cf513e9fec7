"""Stage 1, the SFT warm-start: teach the policy the <seg><think><answer> format on dense targets.

    rlad sft configs/demo.yaml                  # tiny model, generated benchmark, a few CPU minutes
    rlad sft configs/paper_qwen25vl_7b.yaml model.path=/ckpt/Qwen2.5-VL-7B-Instruct data.root=/data/mmad

OmniAD warm-starts with SFT because GRPO alone collapses (Table 5). The targets are the grounded dense
completions of ``rlad.data.questions.sft_target`` (or the user's JSONL, ``data.sft_jsonl``); the prompt
is built by the one ``InputBuilder`` that rollout and learner use, and the loss is on the completion
tokens only (prompt labels -100), closing end-of-turn token included.

The loop is transformers' ``Trainer``: it brings gradient accumulation, the cosine schedule, DeepSpeed
(``sft.deepspeed``), TensorBoard, the progress bar and checkpoint/resume. TRL's SFTTrainer was not used
because its VLM path builds inputs through the HF processor (torchvision, absent here) and its own chat
templating; our builder would have to be bolted around it. rlad adds only four things:

- a held-out check: greedy completions on ``sft.eval_samples`` held-out questions scored by the reward mix
  before and after training, next to a chance row (empty mask and a random letter), in ``report.json``;
- resume from the last *complete* checkpoint: the Trainer writes ``trainer_state.json`` last, so a
  checkpoint folder without it was cut off mid-write; it is moved aside (never deleted) and the one before
  is used;
- the tokens every example of a batch shares (the system prompt) run once per batch, the rest behind their
  key/value cache (``sft.share_prefix``, ``shared_prefix_forward``): the plain loss for less compute;
- the final policy is written to ``<output_dir>/final`` atomically (built aside, then renamed), LoRA merged
  in, with tokenizer, chat template and image processor: a plain checkpoint ``from_pretrained`` and the
  GRPO stage load.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rlad.config import Config, ConfigError, save_config
from rlad.data.render import DEFECT_COLOURS, DEFECT_SHAPES
from rlad.data.sources import SFTExample, sft_examples
from rlad.evaluate import evaluate_policy
from rlad.grounding import HEAD_NAME, TokenLabels, attach_head, grounding_loss, head_state, strip_head, token_cells
from rlad.inputs import IGNORE_INDEX, InputBuilder
from rlad.policy import NO_HUB_KERNELS, Policy, load_policy, resolve_model_path, torch_dtype
from rlad.run_dir import atomic_folder, partial_path, write_text_atomic
from rlad.sample import VerifiableSample

__all__ = [
    "check_sft_config",
    "defect_kinds",
    "defect_label",
    "label_parts",
    "last_complete_checkpoint",
    "run_sft",
    "save_policy",
    "seg_token_weights",
    "seg_weighted_loss",
    "shared_prefix_forward",
    "shared_prefix_length",
]

log = logging.getLogger(__name__)


class SFTDataset(torch.utils.data.Dataset):
    """Examples encoded lazily (images are read in the DataLoader's workers)."""

    def __init__(self, examples: list[SFTExample], builder: InputBuilder):
        self.examples = examples
        self.builder = builder

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        e = self.examples[i]
        return self.builder.encode_sft(e.sample, e.target)


def defect_kinds(examples: list[SFTExample]) -> list[str]:
    """The defect names of the anomalous training examples, sorted: the grounding head's kind classes."""
    return sorted({e.sample.defect for e in examples if e.sample.anomalous and e.sample.defect != "good"})


def defect_label(sample: VerifiableSample, part: str) -> str | None:
    """What a label part of the grounding loss calls a sample's defect: its kind (``sample.defect``), or the
    colour or shape the generator drew it in (``rlad_meta``; None for a normal image or data that lack it)."""
    if part == "kind":
        return sample.defect
    return sample.extra.get("rlad_meta", {}).get(part)


def label_parts(sft: Any, kinds: list[str]) -> list[tuple[str, float, tuple[str, ...]]]:
    """The grounding loss's label parts that are on, as (name, weight, class names): the defect kind over the
    training set's ``kinds`` (``sft.grounding_kind_weight``), its colour and shape over the generator's names
    (``sft.grounding_look_weight``)."""
    parts = [("kind", sft.grounding_kind_weight, tuple(kinds)), ("colour", sft.grounding_look_weight, DEFECT_COLOURS),
             ("shape", sft.grounding_look_weight, DEFECT_SHAPES)]  # fmt: skip
    return [part for part in parts if part[1]]


class GroundedSFTDataset(SFTDataset):
    """Examples with their query image's patch mask and, for each label part (``label_parts``), the index of the
    example's defect label among the part's classes (−1: a normal image, or no such label), for the auxiliary
    grounding loss (rlad/grounding.py)."""

    def __init__(self, examples: list[SFTExample], builder: InputBuilder, parts: list[tuple[str, float, tuple]]):
        super().__init__(examples, builder)
        self.parts = [(name, {label: i for i, label in enumerate(classes)}) for name, _, classes in parts]

    def __getitem__(self, i: int):
        sample = self.examples[i].sample
        labels = [index.get(defect_label(sample, name), -1) for name, index in self.parts]
        return super().__getitem__(i), sample.mask, labels


def grounded_collate(builder: InputBuilder) -> Callable[[list], dict[str, torch.Tensor]]:
    """The builder's collate, plus ``grounding_mask``: (B, grid, grid) float, each example's query-image mask, and
    ``grounding_labels``: (B, label parts) long, each example's defect label per part (−1: none)."""

    def collate(items: list) -> dict[str, torch.Tensor]:
        batch = builder.collate([encoded for encoded, _, _ in items])
        batch["grounding_mask"] = torch.stack([torch.tensor(mask, dtype=torch.float32) for _, mask, _ in items])
        batch["grounding_labels"] = torch.tensor([labels for _, _, labels in items], dtype=torch.long)
        return batch

    return collate


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` holding ``trainer_state.json``; newer incomplete ones are moved aside."""
    if not output_dir.is_dir():
        return None
    found = sorted(
        (p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    for ckpt in reversed(found):
        if (ckpt / "trainer_state.json").is_file():
            return ckpt
        # renamed out of the Trainer's "checkpoint-*" namespace, or its rotation would delete it
        aside = ckpt.with_name(f"incomplete-{ckpt.name}-{int(time.time())}")
        log.warning("%s was cut off mid-write (no trainer_state.json); moved to %s", ckpt, aside.name)
        ckpt.rename(aside)
    return None


def restore_weights(model: Any, checkpoint: Path) -> None:
    """Load a Trainer checkpoint's weights into ``model`` through ``from_pretrained``.

    transformers 5's Trainer re-reads a checkpoint with a plain ``load_state_dict(strict=False)``, which does
    not apply the key mapping Qwen2.5-VL checkpoints are saved with: every key misses and training would go
    on from the *initial* weights after a warning. ``from_pretrained`` applies the mapping; the Trainer's
    own (no-op) load then still prints its list of missing keys, which can be ignored.
    """
    loaded = type(model).from_pretrained(
        checkpoint, dtype=next(model.parameters()).dtype, local_files_only=True, **NO_HUB_KERNELS
    )
    state = loaded.state_dict()
    if hasattr(model, HEAD_NAME):  # the grounding head is no part of the architecture: from_pretrained drops it
        state |= head_state(checkpoint)
    model.load_state_dict(state)
    log.info("resumed weights from %s (ignore the Trainer's 'missing keys' warning that follows)", checkpoint)


def save_policy(
    write_weights: Callable[[Path], None], policy: Policy, out: Path, config: Config, main: bool = True
) -> Path:
    """Write a loadable checkpoint to ``out`` atomically: built in a sibling folder, then renamed over.
    ``write_weights(folder)`` saves the model's config and weights there; it runs on every rank (a ZeRO-3
    gather is collective), the rest only on the ``main`` one."""
    if not main:
        write_weights(partial_path(out))  # the other ranks take part in the gather; the main one writes
        return out
    with atomic_folder(out) as tmp:  # on an error the previous ``out`` stays as it was
        write_weights(tmp)
        policy.tokenizer.save_pretrained(tmp)
        policy.image_processor.save_pretrained(tmp)
        save_config(config, tmp / "rlad.yaml")
    return out


def _chance_row(samples: list[VerifiableSample], config: Config) -> dict[str, float]:
    """What a policy that always says "normal" and picks a random letter scores (seeded)."""
    from rewards import RewardMix
    from rlad.scoring import ScoredRecord, score_records, summarise

    rng = random.Random(config.seed)
    records = [
        ScoredRecord(f"<seg></seg><think></think><answer>{rng.choice(sorted(s.options))}</answer>", s, "chance")
        for s in samples
    ]
    return summarise(records, score_records(records, RewardMix(config.rewards)))["chance"]


def _single_process_defaults() -> None:
    """Started without a launcher (torchrun, deepspeed), DeepSpeed would look for MPI: say rank 0 of 1."""
    import socket

    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(port))


def check_sft_config(config: Config) -> None:
    """The paths the SFT stage needs: the checkpoint and ``sft.deepspeed``."""
    if config.sft.deepspeed and not Path(config.sft.deepspeed).is_file():
        raise ConfigError(f"sft.deepspeed: {config.sft.deepspeed!r} is not a file (a DeepSpeed JSON config)")
    resolve_model_path(config.model)


def run_sft(config: Config) -> dict[str, Any]:
    """Train, evaluate before and after on held-out questions, save ``final``; returns the report.

    The process is left as it was found: DeepSpeed through Trainer sets process-wide state (the rank variables,
    ``ACCELERATE_USE_DEEPSPEED``, transformers' ZeRO-3 switch). Left behind, a later Trainer in this process, or a
    Ray worker started from it, would take itself for a DeepSpeed rank and look for MPI."""
    env = dict(os.environ)
    try:
        return _train_and_report(config)
    finally:
        if config.sft.deepspeed:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()  # else every later from_pretrained here builds ZeRO-3 partitions
        for name in set(os.environ) - set(env):
            del os.environ[name]
        os.environ.update(env)


def _train_and_report(config: Config) -> dict[str, Any]:
    from torch.utils.tensorboard import SummaryWriter
    from transformers import PrinterCallback, Trainer, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    sft = config.sft
    out = Path(sft.output_dir)
    check_sft_config(config)  # everything the user can get wrong fails here, before anything is written
    examples, held_out = sft_examples(config)
    held_out = random.Random(config.seed).sample(held_out, min(sft.eval_samples, len(held_out)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and held_out:
        # One rank generating while ZeRO-3 ranks wait on collectives would hang: evaluate the saved policy.
        log.warning("%d processes: the held-out check is skipped; evaluate %s/final after the run", world, out)
        held_out = []
    if sft.deepspeed:
        _single_process_defaults()
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "rlad.yaml")
    torch.manual_seed(config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # bf16 on a CPU (model.dtype, or auto where it pays): fp32 weights and optimizer state, bf16 matmuls under
    # the Trainer's autocast. A bf16 model in the Trainer would be updated in bf16, where small steps round away.
    autocast = device == "cpu" and torch_dtype(config.model, device, resolve_model_path(config.model)) == torch.bfloat16
    weights = dataclasses.replace(config.model, dtype="float32") if autocast else config.model
    policy = load_policy(weights, shots=config.data.shots, blocks=config.output.blocks, device=device, trainable=True)
    log.info("SFT: %d training examples, %d held-out questions, model %s", len(examples), len(held_out), policy.path)

    kinds = defect_kinds(examples)
    parts = label_parts(sft, kinds)  # the grounding head's label classes
    if sft.grounding:  # before a resume restores weights: its checkpoints hold the head too
        text = policy.model.config.text_config
        if sft.grounding_layer > text.num_hidden_layers:
            layers = text.num_hidden_layers
            raise ConfigError(f"sft.grounding_layer {sft.grounding_layer}: {policy.path} has {layers} "
                              "language-model layers (0 reads its input embeddings)")  # fmt: skip
        where = config.data.sft_jsonl or config.data.root or "the generated benchmark"
        if sft.grounding_kind_weight and not kinds:
            raise ConfigError(f"sft.grounding_kind_weight > 0 needs anomalous training examples with a defect name; "
                              f"{where} has none (an SFT JSONL names it in a 'defect' field)")  # fmt: skip
        if sft.grounding_look_weight and not any(defect_label(e.sample, "colour") for e in examples):
            raise ConfigError(f"sft.grounding_look_weight > 0 needs training examples whose defect's colour and shape "
                              f"are known (the generated benchmark's rlad_meta); {where} has none")  # fmt: skip
        for name, _, classes in parts:  # a label the head has no class for would silently teach nothing
            for e in examples:
                label = defect_label(e.sample, name)
                if e.sample.anomalous and label is not None and label not in classes:
                    raise ConfigError(f"{where}: {e.sample.sample_id} names the {name} {label!r}, which is not "
                                      f"among the grounding head's {name} classes {list(classes)}")  # fmt: skip
        side = round(config.model.image_size / 28)  # the merged token grid
        attach_head(policy.model, text.hidden_size, side, [len(classes) for _, _, classes in parts])
    resume = last_complete_checkpoint(out) if sft.resume else None
    if resume is not None and not sft.deepspeed and config.model.lora.r == 0:
        restore_weights(policy.model, resume)
    report: dict[str, Any] = {"train_examples": len(examples), "held_out": len(held_out), "rows": {}}
    if held_out:
        report["rows"]["chance"] = _chance_row(held_out, config)
        if resume is None:  # the "before" row is of the initial policy, not of a half-trained one
            report["rows"]["before"] = evaluate_policy(
                policy.model, policy.builder, held_out, config, "before", out / "eval_before.jsonl"
            )

    args = TrainingArguments(
        output_dir=str(out),
        learning_rate=sft.lr,
        weight_decay=sft.weight_decay,
        num_train_epochs=sft.epochs,
        max_steps=sft.max_steps,
        per_device_train_batch_size=sft.batch_size,
        gradient_accumulation_steps=sft.grad_accum,
        warmup_steps=sft.warmup_ratio,  # a float in [0, 1) is a share of the total steps
        lr_scheduler_type=sft.lr_scheduler,
        max_grad_norm=sft.max_grad_norm,
        logging_steps=sft.logging_steps,
        save_steps=sft.save_steps,
        save_total_limit=sft.save_total_limit,
        deepspeed=sft.deepspeed,
        seed=config.seed,
        dataloader_num_workers=sft.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,  # our collator needs pixel_values and image_grid_thw
        include_num_input_tokens_seen="non_padding",  # logs train_tokens_per_second (non-padding tokens)
        report_to="none",  # TensorBoard is added below, writing to <output_dir>/tensorboard
        disable_tqdm=True,  # our own bar (_ProgressBar): Trainer's would be forwarded by Ray line by line
        bf16=autocast or torch_is_bf16(policy.model),
        use_cpu=autocast,  # transformers refuses bf16 on a CPU unless told the CPU is meant
    )
    loss = None
    if sft.seg_loss_weight != 1.0:  # the plain loss stays transformers' own
        tok = policy.tokenizer
        ids = (tok.convert_tokens_to_ids("<seg>"), tok.convert_tokens_to_ids("</seg>"))
        loss = functools.partial(seg_weighted_loss, seg_ids=ids, weight=sft.seg_loss_weight, accum=sft.grad_accum)
    grounding = sft.grounding  # the auxiliary loss, not the paper's recipe (rlad/grounding.py)
    data = (examples, policy.builder)
    share = sft.share_prefix and not config.model.gradient_checkpointing
    trainer = sft_trainer(Trainer, policy, sft, share, parts)(
        model=policy.model,
        args=args,
        compute_loss_func=loss,
        train_dataset=GroundedSFTDataset(*data, parts) if grounding else SFTDataset(*data),
        data_collator=grounded_collate(policy.builder) if grounding else policy.builder.collate,
        processing_class=policy.tokenizer,
        callbacks=[TensorBoardCallback(SummaryWriter(str(out / "tensorboard"))), _progress_callback()],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every logging step's dict; TensorBoard has them
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    report["train"] = {
        "steps": trainer.state.global_step,
        "seconds": round(time.perf_counter() - start, 1),
        "loss": result.training_loss,
        "resumed_from": str(resume) if resume else None,
    }
    model = trainer.model
    strip_head(model)  # the saved policy is a plain checkpoint

    main = trainer.is_world_process_zero()

    def write_weights(folder: Path) -> None:
        if sft.deepspeed:
            trainer.save_model(str(folder))  # every rank: ZeRO-3 gathers shards, the main one writes
        elif not main:
            return
        elif hasattr(model, "merge_and_unload"):
            model.merge_and_unload().save_pretrained(folder)  # LoRA: the exported policy is a plain model
        else:
            model.save_pretrained(folder)

    if held_out:
        report["rows"]["after"] = evaluate_policy(
            model, policy.builder, held_out, config, "after", out / "eval_after.jsonl"
        )
    report["final"] = str(save_policy(write_weights, policy, out / "final", config, main))
    if main:
        write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    return report


def sft_trainer(
    base: type, policy: Policy, sft: Any, share_prefix: bool, parts: Sequence[tuple[str, float, tuple]] = ()
) -> type:
    """``base`` (transformers' Trainer) whose forward runs each batch's common prefix once (``share_prefix``,
    ``shared_prefix_forward``) and whose loss adds the auxiliary grounding loss of rlad/grounding.py when it is on,
    read from the language model's hidden state ``sft.grounding_layer``, with the label ``parts``
    (``label_parts``); its parts are logged with the loss."""
    image_token_id = policy.builder.image_token_id
    merge = policy.model.config.vision_config.spatial_merge_size

    class SFTTrainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.parts: dict[str, list[float]] = {}  # the auxiliary loss's parts since the last log

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            covered_grid = inputs.pop("grounding_mask", None)
            example_labels = inputs.pop("grounding_labels", None)
            start = shared_prefix_length(inputs, image_token_id) if share_prefix else 0
            forward = functools.partial(shared_prefix_forward, model, start) if start else model
            if not sft.grounding:
                return super().compute_loss(forward, inputs, return_outputs, num_items_in_batch)
            inputs["output_hidden_states"] = True
            loss, outputs = super().compute_loss(forward, inputs, True, num_items_in_batch)
            head = getattr(model, HEAD_NAME)
            states = outputs.hidden_states[sft.grounding_layer][inputs["input_ids"][:, start:] == image_token_id]
            rows, cols, side = token_cells(inputs["image_grid_thw"], merge)
            per_sample = len(inputs["image_grid_thw"]) // len(covered_grid)  # the query image is each one's last
            query = torch.arange(len(covered_grid)) * per_sample + per_sample - 1
            query_tokens = (query[:, None] * side * side + torch.arange(side * side)).reshape(-1)
            covered = covered_grid.reshape(-1)
            token_labels = example_labels.repeat_interleave(side * side, dim=0)  # (query tokens, parts)
            labels = [TokenLabels(name, weight, torch.where(covered > 0, token_labels[:, j], -1), len(classes))
                      for j, (name, weight, classes) in enumerate(parts)]  # fmt: skip
            aux, logged = grounding_loss(head(states), rows, cols, side,
                                         position_weight=sft.grounding_position_weight,
                                         mask_weight=sft.grounding_mask_weight, query_tokens=query_tokens,
                                         covered=covered, labels=labels)  # fmt: skip
            for k, v in logged.items():
                self.parts.setdefault(k, []).append(v)
            # Trainer divides the loss by the accumulation steps itself unless it counts it as already scaled
            scaled = getattr(self, "loss_is_scaled_for_ga", None)
            if scaled is None:
                scaled = (getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None) or (
                    self.compute_loss_func is not None
                )
            loss = loss + (aux / self.args.gradient_accumulation_steps if scaled else aux)
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if "loss" in logs and self.parts:
                logs.update({k: round(sum(v) / len(v), 4) for k, v in self.parts.items()})
                self.parts = {}
            super().log(logs, *args, **kwargs)

    return SFTTrainer


def shared_prefix_length(batch: dict[str, torch.Tensor], image_token_id: int, minimum: int = 8) -> int:
    """How many leading tokens every row of a collated SFT batch has in common and can run once: the longest
    prefix of real, unlabelled tokens equal in every row, ending before the first image token (the vision
    features are placed in the remainder). 0 when shorter than ``minimum`` or the batch has one row."""
    ids = batch["input_ids"]
    if len(ids) < 2:
        return 0
    same = (ids == ids[:1]).all(0) & batch["attention_mask"].bool().all(0) & (ids[0] != image_token_id)
    if "labels" in batch:
        same &= (batch["labels"] == IGNORE_INDEX).all(0)
    length = int(same.long().cumprod(0).sum())
    return length if length >= minimum else 0


def shared_prefix_forward(model: Any, start: int, **inputs: Any) -> Any:
    """``model(**inputs)`` for a right-padded batch whose rows share their first ``start`` tokens
    (``shared_prefix_length``), computed as one forward of that prefix for one row, keeping its key/value cache
    with its autograd history, then every row's remainder behind that cache (expanded to the batch: its gradient
    sums over the rows, in a fixed order). The output is the plain forward's at positions ``start`` on — logits,
    hidden states, and the loss, since position ``start - 1`` predicts an unlabelled token — up to float
    rounding (tested), for the prefix's share less compute. M-RoPE positions come from the model's own
    ``get_rope_index`` over the whole batch, as the plain forward computes them (``rlad.shared_prompt``)."""
    from transformers import DynamicCache

    from rlad.shared_prompt import cache_keyword, model_output_cache, prompt_positions, rope_index_of

    keyword = cache_keyword(model)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    positions = prompt_positions(inputs, rope_index_of(model))  # (3, B, L) or (B, L)
    prefix = model(input_ids=ids[:1, :start], attention_mask=mask[:1, :start], position_ids=positions[..., :1, :start],
                   use_cache=True, logits_to_keep=1, **{keyword: DynamicCache()})  # fmt: skip
    cache = DynamicCache()
    for i, layer in enumerate(model_output_cache(prefix).layers):
        cache.update(layer.keys.expand(len(ids), -1, -1, -1), layer.values.expand(len(ids), -1, -1, -1), i)
    rest = {k: v[:, start:] if k in ("input_ids", "labels", "mm_token_type_ids") else v for k, v in inputs.items()}
    return model(**rest, position_ids=positions[..., start:], use_cache=True, **{keyword: cache})


def seg_token_weights(labels: torch.Tensor, seg_ids: tuple[int, int], weight: float) -> torch.Tensor:
    """(B, L) label ids -> (B, L) float weights: ``weight`` from each ``<seg>`` through its ``</seg>`` (both tags
    included), 1 elsewhere on the completion, 0 where the label is ignored (-100: the prompt, padding)."""
    opened = torch.cumsum(labels == seg_ids[0], dim=1)
    closed = torch.cumsum(labels == seg_ids[1], dim=1) - (labels == seg_ids[1]).long()  # a close counts after itself
    inside = (opened - closed) > 0
    w = torch.where(inside, torch.full(labels.shape, weight), torch.ones(labels.shape))
    return w * (labels != -100)


def seg_weighted_loss(
    outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None, *, seg_ids: tuple[int, int], weight: float,
    accum: int = 1,
) -> torch.Tensor:  # fmt: skip
    """The SFT loss with the ``<seg>`` span weighted (``sft.seg_loss_weight``): the weighted mean over completion
    tokens of next-token cross-entropy. ``outputs.logits`` may cover only the last positions (after a shared
    prefix): ``labels`` are aligned to them. Trainer no longer divides a custom loss by the accumulation steps, so it
    is done here (each micro-batch's weighted mean counts 1/accum)."""
    labels = labels[:, labels.shape[1] - outputs.logits.shape[1] :]  # a shared prefix's logits are not computed
    logits = outputs.logits[:, :-1].float()  # (B, L-1, V): position t predicts token t+1
    target = labels[:, 1:].to(logits.device)  # (B, L-1)
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
    ).view_as(target)
    w = seg_token_weights(target, seg_ids, weight).to(ce.device)
    return (ce * w).sum() / w.sum().clamp_min(1e-9) / accum


def _progress_callback() -> Any:
    """One "SFT" bar (steps, with the last logged loss) drawn on the driver's console, from a Ray task too."""
    from transformers import TrainerCallback

    from rlad.console import progress

    class ProgressBar(TrainerCallback):
        bar: Any = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = progress(state.max_steps, "SFT", "step", initial=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix({"loss": f"{float(logs['loss']):.3f}"})

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return ProgressBar()


def torch_is_bf16(model: Any) -> bool:
    return next(model.parameters()).dtype == torch.bfloat16


# -- inside rlad train ------------------------------------------------------------------------------------------


def warm_start(config: Config, run_dir: Path) -> str:
    """The checkpoint GRPO starts from: ``train.warm_start``, else the SFT stage's (run on a learner's
    resources, into ``<run_dir>/sft``; an interrupted SFT resumes itself)."""
    import ray

    if config.train.warm_start:
        return config.train.warm_start
    sft_dir = run_dir / "sft"
    if not (sft_dir / "report.json").is_file():
        lc = config.learner
        sft_config = dataclasses.replace(config, sft=dataclasses.replace(config.sft, output_dir=str(sft_dir)))
        task = ray.remote(_run_sft_task).options(num_cpus=lc.num_cpus, num_gpus=lc.num_gpus)
        sft = ray.get(task.remote(sft_config))
        done = sft["train"]
        print(f"SFT warm-start: {done['steps']} steps in {done['seconds']:g} s, loss {done['loss']:.3f} -> "
              f"{sft['final']} (report {sft_dir / 'report.json'})", flush=True)  # fmt: skip
    return str(sft_dir / "final")


def _run_sft_task(config: Config) -> dict:
    """The SFT stage as one Ray task: a single process, whatever torch.distributed variables the driver's
    environment carried (with LOCAL_RANK or WORLD_SIZE inherited, accelerate would wait for ranks that never come;
    with ACCELERATE_USE_DEEPSPEED, it would start DeepSpeed, which the config did not ask for, and look for MPI)."""
    from rlad.policy import set_threads

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_DEEPSPEED"):
        os.environ.pop(name, None)

    set_threads(config.learner.threads)
    return run_sft(config)
