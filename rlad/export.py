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
from rlad.inputs import REFERENCE_TEXT, system_prompt
from rlad.run_dir import SNAPSHOT_NAME, atomic_folder, checkpoint_dir

__all__ = ["SERVING_SNIPPET", "Source", "export_policy", "find_source", "serving_chat_template", "serving_snippet"]

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
    from rlad.policy import NO_HUB_KERNELS, model_class

    cls = model_class(source.base)
    if source.kind == "checkpoint":
        return cls.from_pretrained(source.weights, dtype="auto", local_files_only=True, **NO_HUB_KERNELS)
    model = cls.from_pretrained(source.base, dtype="auto", local_files_only=True, **NO_HUB_KERNELS)
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


# Plain transformers, no rlad and no torchvision (which transformers' Qwen2.5-VL *processor* needs): the tokenizer
# and the image processor build the inputs as rlad's input builder does. ``mm_token_type_ids`` (1 at image tokens)
# must be passed: without it transformers 5.x silently gives the image tokens 1-D text positions instead of
# M-RoPE's 2-D ones, and the policy answers from a scrambled picture. Run as ``python card.py FOLDER IMAGE``.
SERVING_SNIPPET = """\
import sys

import numpy as np
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

folder, image_path = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(folder)
image_processor = AutoImageProcessor.from_pretrained(folder)
model = AutoModelForImageTextToText.from_pretrained(folder).eval()

# The policy was trained on {size}x{size} images: pad a non-square image to a square, then resize.
image = Image.open(image_path).convert("RGB")
side = max(image.size)
a = np.asarray(image)  # the padding takes the mean colour of the image's border
border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).mean(axis=0).round().astype(int)
square = Image.new("RGB", (side, side), tuple(int(c) for c in border))
square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
image = square if image.width != image.height else image
image = image.resize(({size}, {size}), Image.BICUBIC)  # as in training

question = "Is there any defect in the object?\\nA. Yes.\\nB. No."  # options on their own lines
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": question}}]}}]
text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)  # trained system prompt
vision = image_processor(images=[image], return_tensors="pt")
n_image_tokens = int(vision["image_grid_thw"][0].prod()) // image_processor.merge_size**2
text = text.replace("<|image_pad|>", "<|image_pad|>" * n_image_tokens)
inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
mm_token_type_ids = (inputs["input_ids"] == image_pad).long()  # needed: M-RoPE's 2-D positions of the image

out = model.generate(**inputs, **vision, mm_token_type_ids=mm_token_type_ids)  # greedy: generation_config.json
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
"""

SEG_SNIPPET = """\
import re

import numpy as np

def decode_seg(completion: str, grid: int = {grid}) -> np.ndarray:
    \"\"\"The {grid}x{grid} boolean patch mask of a completion's <seg> block (empty block: a normal image).\"\"\"
    seg = re.search(r"<seg>(.*?)</seg>", completion, re.S).group(1)
    mask = np.zeros((grid, grid), bool)
    for r0, c0, r1, c1 in re.findall(r"\\((\\d+), *(\\d+)\\)(?:-\\((\\d+), *(\\d+)\\))?", seg):
        r1, c1 = (r1, c1) if r1 else (r0, c0)
        assert r0 == r1, f"a run stays in one row: {{(r0, c0)}}-{{(r1, c1)}}"
        mask[int(r0), int(c0) : int(c1) + 1] = True
    return mask  # row r, column c covers pixels [r*H/grid, (r+1)*H/grid) x [c*W/grid, (c+1)*W/grid)
"""


def serving_snippet(image_size: int | None) -> str:
    """The model card's plain-transformers recipe for a policy trained on ``image_size`` images (None: as given)."""
    text = SERVING_SNIPPET.format(size=image_size or 0)
    if image_size is None:
        text = "\n".join(line for line in text.splitlines() if "# as in training" not in line) + "\n"
        text = text.replace("was trained on 0x0 images", "keeps an image's size")
    return text


def _reward_rows(config: Config) -> tuple[list[list[str]], list[str]]:
    """The reward mix with every parameter (the config's value, else the reward's default), and where each
    reward that is not built into rlad comes from."""
    from rewards import get_reward, reward_origin

    rows, needs = [], []
    for name, spec in config.rewards.items():
        spec = dict(spec or {})
        weight = spec.pop("weight", 1.0)
        params = {**get_reward(name).params, **spec}
        rows.append([name, str(weight), ", ".join(f"{k}={v!r}" for k, v in params.items()) or "—"])
        origin = reward_origin(name)
        if origin != "built into rlad":
            needs.append(f"`{name}`: {origin}")
    return rows, needs


def _base_model(config: Config) -> tuple[str, str | None]:
    """How the card names the base model (never a local cache path), and its hub-style name if it has one."""
    path = Path(config.model.path)
    # A run's snapshot names the tiny model by its cache folder (tiny-qwen2.5-vl-<spec hash>, with rlad_tiny.json)
    if config.model.path == "tiny" or (path / "rlad_tiny.json").is_file() or path.name.startswith("tiny-"):
        based = (path / "rlad_base_stage.json").is_file() or path.name.startswith("tiny-base-")
        stage = (", then rlad's base stage (`model.base`: generic questions about generated objects with pasted "
                 "spots, no defects)") if based else ""  # fmt: skip
        return ("rlad's tiny Qwen2.5-VL-architecture model, built from `model.tiny` on the training machine: random "
                f"initialisation and rlad's own small tokenizer, no pretrained weights{stage}"), None  # fmt: skip
    name = path.name
    return f"`{name}` (a local checkpoint folder of that name)", name


def _model_card(config: Config, source: Source, model: Any, evals: dict[str, Any]) -> str:
    from rlad.tables import markdown_table

    g, grid, size = config.grpo, config.mask.grid, config.model.image_size
    blocks = list(config.output.blocks)
    layout = "".join(f"<{b}>…</{b}>" for b in blocks)
    params = sum(p.numel() for p in model.parameters())
    size_words = f"{params / 1e9:.2f} B" if params >= 1e9 else f"{params / 1e6:.1f} M"
    base, base_name = _base_model(config)
    reward_rows, plugins = _reward_rows(config)
    title = f"rlad inspection policy ({size_words} parameters, Qwen2.5-VL architecture)"
    front = ("---\nlibrary_name: transformers\npipeline_tag: image-text-to-text\n"
             + (f"base_model: {base_name}\n" if base_name else "")
             + "tags: [anomaly-detection, industrial-inspection, grpo, rlad]\n---\n")  # fmt: skip
    parts = [
        front,
        f"# {title}\n",
        f"A vision-language policy for industrial inspection trained with rlad ({_stages(source)}). It answers "
        f"a multiple-choice question about an image in one pass, `{layout}`: the anomalous patches of a "
        f"{grid}x{grid} grid over the image as text, its reasoning, and the option's letter.\n",
        markdown_table(
            ["", ""],
            [
                ["base model", base],
                ["parameters", f"{params:,}"],
                [
                    "trained on",
                    config.data.root
                    or "rlad's generated benchmark (8 object classes, 6 synthetic defect types; `rlad data synth`)",
                ],
                [
                    "input",
                    f"one image ({config.data.shots}-shot: "
                    + ("a normal reference image of the same part first" if config.data.shots else "no reference")
                    + f"), resized to {size}x{size}",
                ],
                ["exported from", f"`{source.weights.name}` ({source.kind})"],
            ],
        ),
        "\n## Intended use and limitations\n",
        "- For: finding and explaining defects on parts like the ones it was trained on, as a research artefact "
        "of the method (SFT warm-start, then GRPO with verifiable rewards). A person checks its answers.\n"
        "- Not for: safety decisions, parts or defect kinds unlike its training data, free-form chat. The mask is "
        f"coarse ({grid}x{grid} patches), and a patch counts as anomalous when it touches the defect.\n"
        "- Square images: a non-square image must be padded to a square (below) or its parts are stretched.\n"
        "- Trust the numbers below only for data like the evaluation data they name.\n"
        + (
            "- This is the demo's **tiny** model: it shows the pipeline end to end on generated images; it is not "
            "an inspection model for real parts.\n"
            if base_name is None
            else ""
        ),
        "\n## Prompt format\n",
        "The chat template carries the trained system prompt as its default system message, so a client sends "
        "only the user turn: the image (after a normal reference image and the text "
        f"`{REFERENCE_TEXT.strip()}` for 1-shot), then the question with one option per line (`A. text`). "
        "The completion is one line:\n",
        f"```\n{_example_completion(blocks)}\n```\n",
        f"System prompt used in training:\n\n> {system_prompt(blocks)}\n",
    ]
    if "seg" in blocks:
        parts += [
            "\n## Decoding `<seg>`\n",
            f"The block lists the anomalous patches of a {grid}x{grid} grid, row by row: `(row, col_start)-(row, "
            "col_end)` runs of touching patches in one row, 0-based, joined by `, ` (a single patch may be `(r, c)`);"
            " an empty block means no anomaly. Without rlad:\n",
            f"```python\n{SEG_SNIPPET.format(grid=grid)}```\n",
            "With rlad installed, `rlad.mask_text.decode(text, grid)` does the same and refuses malformed text.\n",
        ]
    parts += [
        "\n## Training\n",
        markdown_table(
            ["setting", "value"],
            [
                ["SFT", f"lr {config.sft.lr}, {config.sft.epochs} epochs, batch {config.sft.batch_size}"],
                [
                    "GRPO",
                    f"{g.steps} steps x {g.prompts_per_step} prompts x {g.group_size} completions, lr {g.lr}, "
                    f"clip [{g.clip_eps_low}, {g.clip_eps_high}], KL {g.kl_coef} ({g.kl_kind}), "
                    f"advantages / {g.advantage_scale}, {g.credit} credit",
                ],
                [
                    "sampling",
                    f"temperature {config.generation.temperature}, top_p {config.generation.top_p}, "
                    f"up to {config.generation.max_new_tokens} new tokens",
                ],
            ],
        ),
        "\n## Reward mix\n\nEvery parameter, as used in training (`total = sum(weight x reward)`):\n\n"
        + markdown_table(["reward", "weight", "parameters"], reward_rows),
        "\nRewards are needed only to train or re-score (`rlad rescore`), not to serve. "
        + (
            "Not built into rlad, so install them first:\n\n" + "\n".join(f"- {p}" for p in plugins) + "\n"
            if plugins
            else "All are built into rlad.\n"
        ),
    ]
    if evals:
        parts.append("\n## Evaluation (greedy)\n")
        for name, rows in evals.items():
            parts.append(f"\n{name}\n\n" + rows)
    parts += [
        "\n## Use\n",
        "**vLLM** (GPU; the chat template carries the system prompt):\n\n"
        "```\nvllm serve FOLDER --max-model-len 4096 --limit-mm-per-prompt '{\"image\": 2}'\n```\n",
        "**transformers with torchvision**: `AutoProcessor.from_pretrained(FOLDER)` builds the inputs (its output "
        "includes `mm_token_type_ids`); resize the image as below first.\n",
        "\n**Plain transformers without torchvision** (transformers' Qwen2.5-VL processor needs torchvision; the "
        "tokenizer and the image processor do not). Pass `mm_token_type_ids`: without it transformers gives the "
        "image tokens text positions and the answer is garbage. `python this.py FOLDER IMAGE`:\n",
        f"```python\n{serving_snippet(size)}```\n",
        "**rlad** (prints the mask as a grid, writes an overlay PNG):\n\n"
        "```\nrlad predict FOLDER part.png  # the default question: is there any defect?\n```\n",
        "\nThe full training config is `rlad.yaml` beside this card:\n\n"
        f"<details><summary>rlad.yaml</summary>\n\n```yaml\n{to_yaml(config)}```\n</details>\n",
    ]
    return "\n".join(parts)


def _example_completion(blocks: list[str]) -> str:
    example = {"seg": "(2, 3)-(2, 4), (3, 3)", "think": "A dark scratch crosses the upper middle of the part.",
               "answer": "A"}  # fmt: skip
    return "".join(f"<{b}>{example[b]}</{b}>" for b in blocks)


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
        _drop_loading_flags(tmp / "tokenizer_config.json")
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
            _model_card(config, source, model, _evaluations(source, [Path(e) for e in evals]))
        )
    return out


def _drop_loading_flags(path: Path) -> None:
    """transformers writes the flags this process loaded with (``local_files_only``, ``is_local``) into the saved
    tokenizer config; a served folder should not tell its users' loaders how to behave."""
    if path.is_file():
        data = json.loads(path.read_text())
        for key in ("local_files_only", "is_local"):
            data.pop(key, None)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


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
