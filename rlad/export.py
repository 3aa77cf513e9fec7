"""``rlad export``: a trained policy as a plain Hugging Face folder that serving stacks load as they are.

What it reads (:func:`find_source`): a run folder of ``rlad train`` (its ``final/``, or with ``step`` the
DeepSpeed checkpoint ``checkpoints/step-N``, ZeRO shards consolidated to full fp32 weights), an output folder
of ``rlad sft`` (its ``final/``, or with ``step`` the Trainer's ``checkpoint-N``), any checkpoint folder, or a
LoRA adapter folder (merged into its base model). What it writes (atomically: built aside, then renamed):

- ``model.safetensors`` (+ ``config.json``): full weights, never pickles;
- the tokenizer, the image processor (with the run's min/max pixels), and a chat template whose default
  system message is rlad's system prompt for the run's answer layout, so a client that sends only the image
  and the question gets the behaviour the policy was trained for (``chat_template.jinja`` and
  ``chat_template.json``, where transformers' and vLLM's processors look);
- ``generation_config.json``: greedy decoding (as ``rlad eval`` scores it), the run's ``max_new_tokens``, the
  end-of-turn token as a stop token;
- ``rlad.yaml`` (the training config) and ``README.md``, a model card with the training recipe, the reward mix,
  the evaluation numbers found for it, and how to serve and query it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlad.config import Config, ConfigError, load_config, save_config, to_yaml
from rlad.inputs import system_prompt
from rlad.run_dir import SNAPSHOT_NAME, atomic_folder, checkpoint_dir

__all__ = ["Source", "export_policy", "find_source", "serving_chat_template"]

DEFAULT_SYSTEM = "You are a helpful assistant."


@dataclass(frozen=True)
class Source:
    kind: str  # "checkpoint" | "deepspeed" | "lora"
    weights: Path  # the folder holding the weights (for "deepspeed", the checkpoint folder handed to DeepSpeed)
    base: Path  # a plain checkpoint folder with config.json, tokenizer and image processor
    config: Config  # the training config
    run: Path | None  # the run / SFT folder it came from, for the model card's numbers


def _config_of(*candidates: Path) -> Config:
    for c in candidates:
        if c.is_file():
            return load_config(c)
    return load_config()


def find_source(path: str | Path, step: int | None = None) -> Source:
    """What ``path`` (and ``step``) names; see the module docstring. Errors name the path and what is missing."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"export: {path} does not exist")
    if (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
        if not (Path(base) / "config.json").is_file():
            raise ConfigError(f"export: LoRA adapter {path} names base model {base!r}, which is not a local checkpoint")
        return Source("lora", path, Path(base), _config_of(path / "rlad.yaml", Path(base) / "rlad.yaml"), None)
    is_run = ((path / SNAPSHOT_NAME).is_file() and (path / "checkpoints").is_dir()) or (path / "report.json").is_file()
    if step is None:
        if (path / "config.json").is_file():
            return Source("checkpoint", path, path, _config_of(path / "rlad.yaml"), path.parent)
        if (path / "final" / "config.json").is_file():
            final = path / "final"
            return Source("checkpoint", final, final, _config_of(final / "rlad.yaml"), path)
        raise ConfigError(f"export: {path} holds neither config.json nor a final/ policy; "
                          "for an unfinished run name a checkpoint with --step N")  # fmt: skip
    if not is_run:
        raise ConfigError(f"export: --step needs a run folder of rlad train or rlad sft, got {path}")
    ds = checkpoint_dir(path, step)
    if (ds / "state.json").is_file():  # rlad train: a DeepSpeed checkpoint; the architecture is the warm start's
        report = json.loads((path / "report.json").read_text()) if (path / "report.json").is_file() else {}
        config = _config_of(path / SNAPSHOT_NAME)
        warm = report.get("warm_start") or config.train.warm_start or str(path / "sft" / "final")
        if not (Path(warm) / "config.json").is_file():
            raise ConfigError(f"export: {path}: the warm-start checkpoint {warm} (the model's architecture) is gone")
        return Source("deepspeed", ds / "learner", Path(warm), config, path)
    trainer = path / f"checkpoint-{step}"
    if (trainer / "config.json").is_file() or (trainer / "adapter_config.json").is_file():
        config = _config_of(path / "rlad.yaml")
        if (trainer / "adapter_config.json").is_file():
            return Source("lora", trainer, Path(_base_of(config)), config, path)
        return Source("checkpoint", trainer, trainer, config, path)
    found = sorted(p.name for p in [*path.glob("checkpoints/step-*"), *path.glob("checkpoint-*")])
    raise ConfigError(f"export: {path} has no complete checkpoint for step {step}; found: {found or 'none'}")


def _base_of(config: Config) -> str:
    from rlad.policy import resolve_model_path

    return str(resolve_model_path(config.model))


def _deepspeed_state(folder: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a learner checkpoint: ZeRO shards consolidated, else the saved module."""
    from rlad.learner import CHECKPOINT_TAG

    tag_dir = folder / CHECKPOINT_TAG
    if any(tag_dir.glob("*zero_pp_rank_*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=CHECKPOINT_TAG)
    states = tag_dir / "mp_rank_00_model_states.pt"
    if not states.is_file():
        raise ConfigError(f"export: {folder} holds no DeepSpeed model states (expected {states})")
    return torch.load(states, map_location="cpu", weights_only=True)["module"]


def _load_model(source: Source) -> Any:
    from rlad.policy import model_class

    cls = model_class(source.base)
    if source.kind == "checkpoint":
        return cls.from_pretrained(source.weights, dtype="auto", local_files_only=True)
    model = cls.from_pretrained(source.base, dtype="auto", local_files_only=True)
    if source.kind == "lora":
        from peft import PeftModel

        return PeftModel.from_pretrained(model, source.weights, local_files_only=True).merge_and_unload()
    state = _deepspeed_state(source.weights)
    lora = source.config.model.lora
    if lora.r:  # a LoRA run of rlad train: its checkpoint holds peft's names and the adapters, merged here
        from rlad.policy import merge_lora_state

        state = merge_lora_state(state, lora.alpha / lora.r)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (lm_head = embed_tokens in small Qwen configs) may be stored once; anything else is an error.
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ConfigError(f"export: {source.weights} does not fit {source.base}'s architecture: "
                          f"missing {missing[:5]}, unexpected {unexpected[:5]}")  # fmt: skip
    return model


def serving_chat_template(template: str, prompt: str) -> str:
    """The chat template with ``prompt`` as the system message used when the client sends none (Qwen's
    templates write their default, "You are a helpful assistant.", as plain template text)."""
    if DEFAULT_SYSTEM not in template:
        raise ValueError(f"the chat template has no default system message ({DEFAULT_SYSTEM!r}) to replace")
    if "{" in prompt or "}" in prompt:
        raise ValueError("a system prompt with braces would be read as template syntax")
    return template.replace(DEFAULT_SYSTEM, prompt)


def _model_card(config: Config, source: Source, out_name: str, evals: dict[str, Any]) -> str:
    from rlad.tables import markdown_table

    g = config.grpo
    blocks = list(config.output.blocks)
    layout = "".join(f"<{b}>…</{b}>" for b in blocks)
    mix = "\n".join(f"| {name} | {spec.get('weight', 1.0)} | "
                    f"{', '.join(f'{k}={v}' for k, v in spec.items() if k != 'weight') or '—'} |"
                    for name, spec in config.rewards.items())  # fmt: skip
    parts = [
        "---\nlibrary_name: transformers\npipeline_tag: image-text-to-text\n"
        "tags: [anomaly-detection, industrial-inspection, grpo, rlad]\n---\n",
        f"# {out_name}\n",
        f"A vision-language policy for industrial inspection trained with rlad ({_stages(source)}). "
        "It answers a multiple-choice question about an "
        f"image in one pass, `{layout}`: the anomalous patches of a {config.mask.grid}x{config.mask.grid} grid "
        "as run-length text (`(row, col_start)-(row, col_end)`, 0-based), its reasoning, and the option letter.\n",
        f"Exported from `{source.weights}` ({source.kind}).\n",
        "## Training\n",
        markdown_table(
            ["setting", "value"],
            [
                ["base model", f"`{config.model.path}`"],
                ["images", f"resized to {config.model.image_size} px, {config.data.shots}-shot"],
                ["SFT", f"lr {config.sft.lr}, {config.sft.epochs} epochs, batch {config.sft.batch_size}"],
                [
                    "GRPO",
                    f"{g.steps} steps x {g.prompts_per_step} prompts x {g.group_size} completions, lr {g.lr}, "
                    f"clip [{g.clip_eps_low}, {g.clip_eps_high}], KL {g.kl_coef} ({g.kl_kind}), "
                    f"advantages / {g.advantage_scale}",
                ],
                ["data", config.data.root or "the generated benchmark (rlad data synth)"],
            ],
        ),
        "\n## Reward mix\n\n| reward | weight | parameters |\n|---|---|---|\n" + mix + "\n",
    ]
    if evals:
        parts.append("\n## Evaluation (greedy)\n")
        for name, rows in evals.items():
            parts.append(f"\n{name}\n\n" + rows)
    parts.append(
        "\n## Use\n\nServe it with vLLM (GPU; the chat template carries the system prompt):\n\n"
        f"```\nvllm serve {out_name} --max-model-len 4096 --limit-mm-per-prompt '{{\"image\": 2}}'\n```\n\n"
        "or answer one image with rlad (prints the mask as a grid, writes an overlay PNG):\n\n"
        f"```\nrlad predict {out_name} part.png  # the default question: is there any defect?\n```\n\n"
        f"System prompt used in training:\n\n> {system_prompt(blocks)}\n\n"
        "The full training config is `rlad.yaml` beside this card:\n\n"
        f"<details><summary>rlad.yaml</summary>\n\n```yaml\n{to_yaml(config)}```\n</details>\n"
    )
    return "\n".join(parts)


def _stages(source: Source) -> str:
    """How the policy was trained, read from its run folder."""
    report = source.run / "report.json" if source.run else None
    info = json.loads(report.read_text()) if report is not None and report.is_file() else {}
    if "warm_start" not in info:  # an rlad sft folder (or a bare checkpoint)
        return "SFT on dense targets" if info.get("train") else "training history unknown"
    base = str(source.config.model.path)
    alone = Path(info["warm_start"]).resolve() == Path(base).resolve()
    return "GRPO with verifiable rewards from the base model" if alone else "SFT warm-start, then GRPO"


def _evaluations(source: Source, eval_files: list[Path]) -> dict[str, str]:
    """Evaluation tables for the card: the run's held-out check, and the ``rlad eval`` results given."""
    from rlad.tables import detection_table, markdown_table, understanding_table

    found: dict[str, str] = {}
    report = source.run / "report.json" if source.run else None
    if report is not None and report.is_file():
        rows = json.loads(report.read_text()).get("rows", {})
        if rows:
            cols = ["total", "format", "detection", "answer", "image_F1", "patch_F1", "answer_acc"]
            header = ["policy", "n", *cols]
            body = [[name, str(int(r.get("n", 0))), *(f"{r[c]:.3f}" if c in r else "—" for c in cols)]
                    for name, r in rows.items()]  # fmt: skip
            found["Held-out check during training (mean rewards, F1 on the patch grid):"] = markdown_table(header, body)
    for path in eval_files:
        path = path / "eval.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"export: --eval {path}: no such eval.json (written by rlad eval --out DIR)")
        result = json.loads(path.read_text())
        rows = {"all": result["overall"]}
        found[f"`rlad eval` on {result['dataset']} ({result['questions']} questions, {result['shots']}-shot):"] = (
            understanding_table(rows) + "\n" + detection_table(rows)
        )
    return found


def export_policy(
    path: str | Path,
    out: str | Path,
    step: int | None = None,
    overwrite: bool = False,
    evals: list[str | Path] = (),
) -> Path:
    """Export what ``path`` names into ``out``; see the module docstring. ``evals``: ``rlad eval`` output
    folders (or their eval.json) whose numbers go into the model card. Returns ``out``."""
    from transformers import AutoTokenizer, GenerationConfig

    from rlad.policy import load_image_processor, processor_template

    source = find_source(path, step)
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"export: {out} already exists and is not empty (pass --overwrite to replace it)")
    config = source.config
    with atomic_folder(out) as tmp:  # nothing half-written under ``out``; an old one is replaced at the end
        model = _load_model(source)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer = AutoTokenizer.from_pretrained(source.base, local_files_only=True)
        template = processor_template(source.base) or tokenizer.chat_template
        template = serving_chat_template(template, system_prompt(config.output.blocks))
        tokenizer.chat_template = template
        tokenizer.save_pretrained(tmp)
        (tmp / "chat_template.jinja").write_text(template)
        (tmp / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2))
        load_image_processor(source.base, config.model).save_pretrained(tmp)
        stops = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
            stops.append(tokenizer.eos_token_id)
        GenerationConfig(do_sample=False, max_new_tokens=config.generation.max_new_tokens, eos_token_id=stops,
                         pad_token_id=tokenizer.pad_token_id).save_pretrained(tmp)  # fmt: skip
        save_config(config, tmp / "rlad.yaml")
        (tmp / "README.md").write_text(
            _model_card(config, source, out.name, _evaluations(source, [Path(e) for e in evals]))
        )
    return out


def export_from_learners(learners: list[Any], warm: str, out: Path, config: Config) -> Path:
    """The trained policy as a plain checkpoint (weights from the learners; tokenizer, chat template and image
    processor from the warm start), written atomically like the SFT stage's."""
    import ray
    from transformers import AutoTokenizer

    from rlad.policy import Policy, load_image_processor
    from rlad.sft import save_policy

    tokenizer = AutoTokenizer.from_pretrained(warm, local_files_only=True)
    image_processor = load_image_processor(Path(warm), config.model)
    carrier = Policy(None, tokenizer, image_processor, None, Path(warm))

    def write_weights(folder: Path) -> None:
        ray.get([learner.save_pretrained.remote(str(folder)) for learner in learners])

    return save_policy(write_weights, carrier, out, config)
