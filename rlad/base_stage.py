"""The tiny model's base stage: the stand-in for an instruct model's pretraining, built once and cached.

    model:
      path: tiny
      base: {images: 4000}      # rlad sft / rlad train then start from the tiny model after its base stage

``with_base_stage(config)`` is how a command starts from it (``rlad sft``, ``rlad train``): the config with
``model.path`` at the built entry. ``base_model_dir(spec, stage)`` is that entry, ``tiny-base-<hash>`` (hash of
the tiny spec and the ``model.base`` section). On first use it writes the base set (``rlad.data.base_set``:
generated objects with pasted spots, generic questions, no defect and no anomaly label) into a temporary
folder, runs the ordinary SFT stage on it from the tiny model (``rlad.sft.run_sft``, its held-out check
included), and keeps the final checkpoint with ``rlad_base_stage.json``: the spec, the section, the training
summary and the held-out rows (the spots' patch F1 shows whether the stage taught the model to point at what
it sees). The set and the intermediate checkpoints are deleted; the entry appears atomically
(``rlad.cache.built_once``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from rlad.cache import built_once
from rlad.config import BaseStageConfig, Config, DataConfig, GenerationConfig, MaskConfig, ModelConfig, SFTConfig
from rlad.data.base_set import BaseSetSpec, write_base_set
from rlad.tiny import TinySpec, tiny_model_dir

__all__ = ["BASE_STAGE_FILE", "base_model_dir", "build_base", "with_base_stage"]

BASE_STAGE_FILE = "rlad_base_stage.json"
VERSION = 1  # bump when the base set or the stage's training changes, so cached entries are rebuilt


def with_base_stage(config: Config) -> Config:
    """``config`` with ``model.path: tiny`` + ``model.base.images`` replaced by the base stage's checkpoint folder
    (built first if it is not cached); any other config as it is."""
    model = config.model
    if model.path != "tiny" or not model.base.images:
        return config
    folder = base_model_dir(TinySpec(**model.tiny), model.base)
    return dataclasses.replace(config, model=dataclasses.replace(model, path=str(folder)))


def base_model_dir(spec: TinySpec, stage: BaseStageConfig) -> Path:
    """The tiny model of ``spec`` after the base stage ``stage``, built on first use."""
    blob = json.dumps({"tiny": spec.key(), **asdict(stage), "version": VERSION}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return built_once(f"tiny-base-{key}", BASE_STAGE_FILE, lambda folder: build_base(spec, stage, folder))


def base_config(spec: TinySpec, stage: BaseStageConfig, data: Path, work: Path) -> Config:
    """The SFT run of the base stage: the tiny model on the base set's JSONL, 0-shot, at the spec's image size."""
    return Config(
        seed=spec.seed,
        mask=MaskConfig(grid=stage.grid),
        model=ModelConfig(path=str(tiny_model_dir(spec)), image_size=spec.image_size),
        data=DataConfig(sft_jsonl=str(data), shots=0),
        generation=GenerationConfig(max_new_tokens=160),  # a base target is under 120 tokens
        sft=SFTConfig(
            output_dir=str(work),
            lr=stage.lr,
            epochs=stage.epochs,
            batch_size=stage.batch_size,
            eval_samples=128,
            save_steps=10**9,  # nothing to resume: a cut-off build starts again
        ),
    )


def build_base(spec: TinySpec, stage: BaseStageConfig, out: str | Path) -> Path:
    """Run the base stage into ``out`` (a new folder): a loadable checkpoint plus ``rlad_base_stage.json``."""
    from rlad.sft import run_sft

    out = Path(out)
    print(f"Base stage of the tiny model ({stage.images} images, {stage.epochs:g} epochs), once: it is cached",
          flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="rlad-base-") as tmp:
        data = write_base_set(BaseSetSpec(stage.images, spec.image_size, stage.grid, spec.seed), Path(tmp, "data"))
        report = run_sft(base_config(spec, stage, data, Path(tmp, "sft")))
        shutil.copytree(Path(tmp, "sft", "final"), out)
    (out / "rlad.yaml").unlink()  # the stage's SFT config names its deleted temporary folders
    shutil.copy(tiny_model_dir(spec) / "rlad_tiny.json", out / "rlad_tiny.json")
    summary = {"tiny": asdict(spec), "base": asdict(stage), "train": report["train"], "held_out": report["rows"]}
    (out / BASE_STAGE_FILE).write_text(json.dumps(summary, indent=2, default=str))
    return out
