"""Samples for a run, from the config's ``data`` section: a dataset on disk, or the generated benchmark.

- ``data.root`` empty: the benchmark of ``data.synth`` is generated once into the cache
  (``$RLAD_CACHE``/synth-<hash>) and read through the MMAD reader, like any user dataset.
- ``data.root`` set: its ``mmad.json`` (or ``data.mmad``) through the MMAD reader, else the MVTec-AD reader.
- ``data.sft_jsonl``: the user's own SFT examples, one JSON object per line.

Held-out evaluation images are chosen by a hash of the image path, so every question about an image lands
on the same side and the split does not move when the dataset grows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from rlad import mask_text
from rlad.cache import built_once
from rlad.completion import parse_completion
from rlad.config import Config
from rlad.data.questions import sft_target
from rlad.data.readers import DataError, read_mmad, read_mvtec
from rlad.data.synth import SYNTH_FORMAT, SynthSpec, synthesize
from rlad.jsonl import json_objects
from rlad.sample import VerifiableSample

__all__ = [
    "SFTExample",
    "dataset_root",
    "held_out",
    "load_samples",
    "per_image",
    "read_sft_jsonl",
    "sft_examples",
    "split",
    "synth_cache_name",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTExample:
    sample: VerifiableSample
    target: str  # the full completion to learn: <seg>...</seg><think>...</think><answer>X</answer>


def _synth_spec(config: Config, draw: int = 0) -> SynthSpec:
    s = config.data.synth
    classes = tuple(s.classes) or SynthSpec.classes
    return SynthSpec(
        classes,
        s.images_per_class,
        s.references_per_class,
        s.size,
        config.seed,
        fixed_options=s.fixed_options,
        visibility=s.visibility,
        draw=draw,
    )


def dataset_root(config: Config, draw: int = 0) -> Path:
    """The dataset folder of this config, generating (once) the synthetic benchmark when none is given
    (``draw`` > 0: another draw of it, every image new; only for the generated benchmark)."""
    if config.data.root:
        root = Path(config.data.root).expanduser()
        if not root.is_dir():
            raise DataError(f"data.root {config.data.root!r} is not a directory")
        return root
    spec = _synth_spec(config, draw)
    return built_once(synth_cache_name(spec), "mmad.json", lambda folder: synthesize(spec, folder))


def synth_cache_name(spec: SynthSpec) -> str:
    """The cache entry of a generated benchmark: a hash of its spec and of ``SYNTH_FORMAT``, so a generator that
    writes other files for the same spec never reads an old entry."""
    fields = asdict(spec)
    if not fields["draw"]:
        del fields["draw"]  # the benchmark's own entries keep the names they had before draws existed
    key = json.dumps({"spec": fields, "format": SYNTH_FORMAT}, sort_keys=True)
    return f"synth-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def load_samples(config: Config, draw: int = 0) -> list[VerifiableSample]:
    """Every sample of the configured dataset (``draw``: of that draw of the generated one), at its grid."""
    root = dataset_root(config, draw)
    m = config.mask
    mmad = Path(config.data.mmad) if config.data.mmad else root / "mmad.json"
    if config.data.mmad or mmad.is_file():
        samples, report = read_mmad(mmad, root, m.grid, m.cover, m.tau, config.data.shots, config.data.on_bad)
    else:
        samples, report = read_mvtec(root, m.grid, m.cover, m.tau, on_bad=config.data.on_bad)
    if report.skipped:
        log.warning(report.summary())
    if not samples:
        raise DataError(f"{root}: no samples read ({report.summary()})")
    return samples


def held_out(sample: VerifiableSample, fraction: float, root: str | Path) -> bool:
    """Whether the sample's image is held out. Hashes the path *relative to the dataset root*, so the split
    is the same wherever the dataset lies (another machine, another cache folder)."""
    relative = os.path.relpath(sample.image, root).replace(os.sep, "/")
    digest = hashlib.sha256(relative.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split(
    samples: list[VerifiableSample], fraction: float, root: str | Path
) -> tuple[list[VerifiableSample], list[VerifiableSample]]:
    """(train, held-out) by image; see the module docstring."""
    train = [s for s in samples if not held_out(s, fraction, root)]
    evaluation = [s for s in samples if held_out(s, fraction, root)]
    return train, evaluation


def per_image(samples: list[VerifiableSample], k: int, seed: int) -> list[VerifiableSample]:
    """At most ``k`` questions per image (0: all), chosen with a seeded shuffle; order kept."""
    if k <= 0:
        return samples
    by_image: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_image.setdefault(s.image, []).append(i)
    rng = random.Random(seed)
    keep = {i for idx in by_image.values() for i in rng.sample(idx, min(k, len(idx)))}
    return [s for i, s in enumerate(samples) if i in keep]


def read_sft_jsonl(path: str | Path, grid: int) -> list[SFTExample]:
    """User SFT data: one JSON object per line with ``image``, ``question`` (shown verbatim, options
    included), ``options`` ({letter: text}), ``answer`` (letter) and ``target`` (the completion); optional
    ``reference`` (1-shot image), ``mask`` (Text-as-Mask string; default: the target's <seg>), ``id``, ``type``
    (the MMAD subtask), ``defect`` (the defect's name, for ``sft.grounding_kind_weight``).
    Relative image paths are read from the file's folder. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"SFT file {path} does not exist")
    examples = []
    for where, row in json_objects(path, DataError):
        missing = [k for k in ("image", "question", "options", "answer", "target") if k not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing}")
        seg = row["mask"] if "mask" in row else parse_completion(row["target"]).seg
        if seg is None:
            raise DataError(f"{where}: no 'mask' field and the target has no single <seg> block")
        try:
            mask = mask_text.decode(seg, grid)
        except mask_text.MaskTextError as err:
            raise DataError(f"{where}: mask {seg[:60]!r} does not decode on a {grid}x{grid} grid: {err}") from err
        image = path.parent / row["image"]
        if not image.is_file():
            raise DataError(f"{where}: image {image} does not exist")
        reference = path.parent / row["reference"] if row.get("reference") else None
        if reference is not None and not reference.is_file():
            raise DataError(f"{where}: reference image {reference} does not exist")
        try:
            sample = VerifiableSample(
                sample_id=str(row.get("id", f"{path.name}:{where.rsplit(':', 1)[-1]}")),  # file:line
                question=row["question"],
                options=dict(row["options"]),
                answer=row["answer"],
                mask=mask,
                anomalous=bool(row.get("anomalous", mask.any())),
                image=str(image),
                reference=str(reference) if reference else None,
                subtask=row.get("type", ""),
                defect=str(row.get("defect", "good")),
            )
        except (ValueError, TypeError) as err:
            raise DataError(f"{where}: {err}") from err
        examples.append(SFTExample(sample, row["target"]))
    if not examples:
        raise DataError(f"SFT file {path} holds no examples")
    return examples


def sft_examples(config: Config) -> tuple[list[SFTExample], list[VerifiableSample]]:
    """(training examples, held-out samples). From ``data.sft_jsonl`` when set (its held-out share by
    image, as for datasets), else the dataset's samples with their grounded dense targets."""
    if config.data.sft_jsonl:
        examples = read_sft_jsonl(config.data.sft_jsonl, config.mask.grid)
        folder = Path(config.data.sft_jsonl).parent
        train = [e for e in examples if not held_out(e.sample, config.data.eval_fraction, folder)]
        evaluation = [e.sample for e in examples if held_out(e.sample, config.data.eval_fraction, folder)]
        return train, evaluation
    train, evaluation = split(load_samples(config), config.data.eval_fraction, dataset_root(config))
    train = without_images(per_image(train, config.data.questions_per_image, config.seed), config)
    return [SFTExample(s, sft_target(s, config.output.blocks)) for s in train], without_images(evaluation, config)


def rl_samples(config: Config) -> tuple[list[VerifiableSample], list[VerifiableSample]]:
    """(training, held-out) samples for GRPO: the same split by image as SFT's, so the held-out images of
    one stage are never trained on by the other. With ``data.grpo_fresh_images`` the training samples are
    every question of another draw of the generated benchmark instead (images neither SFT nor the held-out
    split hold; ids prefixed ``draw1/``), and the held-out split is the same."""
    train, evaluation = split(load_samples(config), config.data.eval_fraction, dataset_root(config))
    if config.data.grpo_fresh_images:
        train = [dataclasses.replace(s, sample_id=f"draw1/{s.sample_id}") for s in load_samples(config, draw=1)]
    train = per_image(train, config.data.questions_per_image, config.seed)
    return without_images(train, config), without_images(evaluation, config)


def without_images(samples: list[VerifiableSample], config: Config) -> list[VerifiableSample]:
    """With ``data.text_only``, the same questions with no images (after the split by image, so both splits
    stay the image-based ones): for text-only models and benchmarks beside text-only trainers."""
    if not config.data.text_only:
        return samples
    return [dataclasses.replace(s, image="", reference=None) for s in samples]
