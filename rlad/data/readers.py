"""Readers for the datasets users have on disk, all producing :class:`rlad.sample.VerifiableSample`.

- ``read_mvtec(root)``: MVTec-AD, and VisA converted to its layout: ``<class>/test/<defect>/*.png`` with
  masks ``<class>/ground_truth/<defect>/<stem>_mask.png``;
- ``read_visa(root)``: raw VisA, driven by ``split_csv/1cls.csv`` (object, split, label, image, mask);
- ``read_loco(root)``: MVTec-LOCO, several masks per image under ``ground_truth/<defect>/<stem>/*.png``, OR-ed;
- ``read_mmad(json_path)``: MMAD's ``mmad.json`` (questions, options, answers, mask paths, normal templates
  for 1-shot) — also what ``rlad data synth`` writes.

Image-only datasets (the first three) become Anomaly Discrimination questions ("Is there any defect in the
object?", A. Yes / B. No), the form the paper evaluates detection in. Ground-truth masks are reduced to the
patch grid with ``mask_text.mask_to_grid``; their paths stay in ``sample.extra["mask_paths"]`` for
pixel-level metrics (:func:`load_pixel_mask`).

Bad input — a missing or unreadable image or mask, a mask whose size differs from its image, an entry
without ``Answer``, an answer letter not among the options, a path that leaves the dataset root — raises
:class:`DataError` naming the file and entry; with ``on_bad="skip"`` the sample is left out instead, and the
returned :class:`ReadReport` counts what was skipped and why (also logged). Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from rlad.mask_text import Cover, mask_to_grid
from rlad.metrics import canonical_subtask
from rlad.sample import VerifiableSample

__all__ = [
    "DATASET_FORMATS",
    "DataError",
    "ReadReport",
    "dataset_format",
    "load_pixel_mask",
    "read_dataset",
    "read_loco",
    "read_mmad",
    "read_mvtec",
    "read_visa",
]

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".JPG", ".PNG")
DISCRIMINATION = ("Is there any defect in the object?", {"A": "Yes.", "B": "No."})


class DataError(ValueError):
    """A dataset file or entry that cannot be read; the message names it."""


@dataclass
class ReadReport:
    source: str
    read: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file or entry, reason)

    def summary(self) -> str:
        reasons = Counter(reason.split(":")[0] for _, reason in self.skipped)
        tail = "; ".join(f"{n} {r}" for r, n in reasons.most_common())
        return f"{self.source}: read {self.read} samples, skipped {len(self.skipped)}" + (f" ({tail})" if tail else "")


@dataclass(frozen=True)
class _Grid:
    grid: int
    cover: Cover
    tau: float


class _Collector:
    """Runs one entry's reading; on DataError either raises (on_bad="error") or records the skip."""

    def __init__(self, source: str, on_bad: str):
        if on_bad not in ("error", "skip"):
            raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
        self.report, self.on_bad, self.samples = ReadReport(source), on_bad, []

    def add(self, entry: str, build: Callable[[], Iterable[VerifiableSample]]) -> None:
        try:
            new = list(build())
        except DataError as err:
            if self.on_bad == "error":
                raise
            self.report.skipped.append((entry, str(err)))
            return
        self.samples.extend(new)
        self.report.read += len(new)

    def finish(self) -> tuple[list[VerifiableSample], ReadReport]:
        if self.report.skipped:
            log.warning("%s", self.report.summary())
            for entry, reason in self.report.skipped[:20]:
                log.warning("  skipped %s: %s", entry, reason)
        if not self.samples:
            raise DataError(f"{self.report.source}: no samples could be read ({self.report.summary()})")
        return self.samples, self.report


def _inside(root: Path, rel: str, what: str) -> Path:
    """``root/rel`` resolved, refusing anything that leaves ``root`` (``..``, absolute paths, symlinks out)."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DataError(f"{what}: path {rel!r} leaves the dataset root {root}")
    return path


def _image_size(path: Path, what: str) -> tuple[int, int]:
    """(H, W) of a readable image; DataError if it is missing or corrupt."""
    if not path.is_file():
        raise DataError(f"{what}: image file {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()  # decode fully: a truncated file fails here, not in a training step
            return img.height, img.width
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{what}: image file {path} is unreadable: {err}") from err


def _read_mask(paths: list[Path], shape: tuple[int, int], what: str) -> np.ndarray:
    """The OR of the masks at ``paths`` (non-zero = anomalous), each checked to be ``shape``."""
    out = np.zeros(shape, bool)
    for path in paths:
        if not path.is_file():
            raise DataError(f"{what}: mask file {path} does not exist")
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("L"))
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DataError(f"{what}: mask file {path} is unreadable: {err}") from err
        if arr.shape != shape:
            raise DataError(
                f"{what}: mask {path} is {arr.shape[1]}x{arr.shape[0]} but its image is {shape[1]}x{shape[0]}"
            )
        out |= arr > 0
    return out


def load_pixel_mask(sample: VerifiableSample) -> np.ndarray | None:
    """The full-resolution ground-truth mask of a sample (OR of its mask files), or None for a normal image."""
    paths = [Path(p) for p in sample.extra.get("mask_paths", [])]
    if not paths:
        return None
    with Image.open(sample.image) as img:
        shape = (img.height, img.width)
    return _read_mask(paths, shape, sample.sample_id)


def _discrimination_sample(
    sample_id: str, image: Path, mask_paths: list[Path], grid: _Grid, class_name: str, defect: str, what: str
) -> VerifiableSample:
    shape = _image_size(image, what)
    pixels = _read_mask(mask_paths, shape, what) if mask_paths else np.zeros(shape, bool)
    anomalous = defect != "good"
    if anomalous and mask_paths and not pixels.any():
        log.info("%s: anomalous image with an empty mask (kept: image label anomalous, grid mask empty)", what)
    question, options = DISCRIMINATION
    return VerifiableSample(
        sample_id=sample_id,
        question=f"{question}\nA. {options['A']}\nB. {options['B']}",
        options=options,
        answer="A" if anomalous else "B",
        mask=mask_to_grid(pixels, grid.grid, grid.cover, grid.tau),
        anomalous=anomalous,
        image=str(image),
        class_name=class_name,
        defect=defect,
        subtask="Anomaly Discrimination",
        extra={"mask_paths": [str(p) for p in mask_paths]},
    )


def _class_dirs(root: Path, classes: Iterable[str] | None) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"dataset root {root} is not a folder")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "test").is_dir())
    if classes is not None:
        wanted = set(classes)
        missing = wanted - {p.name for p in dirs}
        if missing:
            raise DataError(f"{root}: classes {sorted(missing)} not found (found: {[p.name for p in dirs]})")
        dirs = [p for p in dirs if p.name in wanted]
    if not dirs:
        raise DataError(f"{root}: no class folder with a test/ subfolder (expected <root>/<class>/test/<defect>/)")
    return dirs


def _read_test_folders(
    root: Path,
    g: _Grid,
    classes: Iterable[str] | None,
    on_bad: str,
    masks_of: Callable[[Path, str, Path], list[Path]],
) -> tuple[list[VerifiableSample], ReadReport]:
    """Walk ``<class>/test/<defect>/<image>``; ``masks_of(class_dir, defect, image)`` locates the mask files."""
    col = _Collector(str(root), on_bad)
    for cdir in _class_dirs(root, classes):
        for ddir in sorted(p for p in (cdir / "test").iterdir() if p.is_dir()):
            for img in sorted(p for p in ddir.iterdir() if p.suffix in IMAGE_SUFFIXES):
                rel = img.relative_to(root).as_posix()

                def build(img=img, rel=rel, cdir=cdir, defect=ddir.name):
                    masks = [] if defect == "good" else masks_of(cdir, defect, img)
                    return [_discrimination_sample(rel, img, masks, g, cdir.name, defect, rel)]

                col.add(rel, build)
    return col.finish()


def read_mvtec(
    root: str | Path,
    grid: int = 24,
    cover: Cover | str = Cover.any,
    tau: float = 0.5,
    classes: Iterable[str] | None = None,
    on_bad: str = "error",
) -> tuple[list[VerifiableSample], ReadReport]:
    """MVTec-AD (or VisA converted to its layout): every test image, one Discrimination question each."""

    def masks_of(cdir: Path, defect: str, img: Path) -> list[Path]:
        return [cdir / "ground_truth" / defect / f"{img.stem}_mask.png"]

    return _read_test_folders(Path(root), _Grid(grid, Cover(cover), tau), classes, on_bad, masks_of)


def read_loco(
    root: str | Path,
    grid: int = 24,
    cover: Cover | str = Cover.any,
    tau: float = 0.5,
    classes: Iterable[str] | None = None,
    on_bad: str = "error",
) -> tuple[list[VerifiableSample], ReadReport]:
    """MVTec-LOCO: like MVTec-AD, but each anomalous image's masks are ``ground_truth/<defect>/<stem>/*.png``, OR-ed."""

    def masks_of(cdir: Path, defect: str, img: Path) -> list[Path]:
        mdir = cdir / "ground_truth" / defect / img.stem
        masks = sorted(mdir.glob("*.png")) if mdir.is_dir() else []
        if not masks:
            raise DataError(f"{img.relative_to(cdir.parent).as_posix()}: no mask files in {mdir}")
        return masks

    return _read_test_folders(Path(root), _Grid(grid, Cover(cover), tau), classes, on_bad, masks_of)


def read_visa(
    root: str | Path,
    grid: int = 24,
    cover: Cover | str = Cover.any,
    tau: float = 0.5,
    split: str = "test",
    csv_path: str = "split_csv/1cls.csv",
    on_bad: str = "error",
) -> tuple[list[VerifiableSample], ReadReport]:
    """Raw VisA: rows of ``split_csv/1cls.csv`` (object, split, label, image, mask) of the given split."""
    root, g = Path(root), _Grid(grid, Cover(cover), tau)
    table = root / csv_path
    if not table.is_file():
        raise DataError(f"VisA split file {table} does not exist")
    col = _Collector(str(table), on_bad)
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"object", "split", "label", "image", "mask"}
        if not need <= set(reader.fieldnames or ()):
            raise DataError(f"{table}: columns {sorted(need)} expected, found {reader.fieldnames}")
        for lineno, row in enumerate(reader, 2):
            if row["split"] != split:
                continue
            what = f"{table}:{lineno}"

            def build(row=row, what=what):
                if row["label"] not in ("normal", "anomaly"):
                    raise DataError(f"{what}: label {row['label']!r} is neither 'normal' nor 'anomaly'")
                img = _inside(root, row["image"], what)
                anomalous = row["label"] == "anomaly"
                if anomalous and not row["mask"]:
                    raise DataError(f"{what}: anomalous image without a mask path")
                masks = [_inside(root, row["mask"], what)] if anomalous else []
                defect = "anomaly" if anomalous else "good"
                return [_discrimination_sample(row["image"], img, masks, g, row["object"], defect, what)]

            col.add(what, build)
    return col.finish()


def _mmad_samples(root: Path, key: str, entry: Any, g: _Grid, shots: int, what: str) -> Iterable[VerifiableSample]:
    if not isinstance(entry, dict):
        raise DataError(f"{what}: entry must be an object, got {type(entry).__name__}")
    img = _inside(root, entry.get("image_path", key), what)
    shape = _image_size(img, what)
    mask_rel = entry.get("mask_path")
    masks: list[Path] = []
    if mask_rel:
        masks = [_mmad_mask(root, key, mask_rel, what)]
    pixels = _read_mask(masks, shape, what) if masks else np.zeros(shape, bool)
    meta = entry.get("rlad_meta", {})
    parts = Path(key).parts
    defect = meta.get("defect") or (parts[-2] if len(parts) >= 2 else "unknown")
    class_name = meta.get("class_name") or (parts[-4] if len(parts) >= 4 else parts[0])
    anomalous = defect != "good"
    reference = None
    if shots == 1:
        templates = entry.get("similar_templates") or entry.get("random_templates") or []
        if not templates:
            raise DataError(
                f"{what}: 1-shot needs a normal template, but similar_templates and random_templates are empty"
            )
        reference = str(_inside(root, templates[0], what))
        _image_size(Path(reference), f"{what} (reference)")
    grid_mask = mask_to_grid(pixels, g.grid, g.cover, g.tau)
    conversation = entry.get("conversation")
    if not isinstance(conversation, list) or not conversation:
        raise DataError(f"{what}: no 'conversation' list of questions")
    for qi, q in enumerate(conversation):
        qwhat = f"{what} question {qi}"
        if not isinstance(q, dict):
            raise DataError(f"{qwhat}: must be an object")
        for fld in ("Question", "Options", "Answer"):
            if fld not in q:
                raise DataError(f"{qwhat}: missing field {fld!r}")
        options = q["Options"]
        if not isinstance(options, dict) or not options:
            raise DataError(f"{qwhat}: 'Options' must be a non-empty mapping of letters to text")
        if q["Answer"] not in options:
            raise DataError(f"{qwhat}: answer {q['Answer']!r} is not among the options {sorted(options)}")
        lines = "\n".join(f"{k}. {v}" for k, v in options.items())
        yield VerifiableSample(
            sample_id=f"{key}#{qi}",
            question=f"{q['Question']}\n{lines}",
            options={str(k): str(v) for k, v in options.items()},
            answer=q["Answer"],
            mask=grid_mask,
            anomalous=anomalous,
            image=str(img),
            reference=reference,
            class_name=class_name,
            defect=defect,
            subtask=canonical_subtask(str(q.get("type", ""))),
            extra={"mask_paths": [str(p) for p in masks], "rlad_meta": meta},
        )


def _mmad_mask(root: Path, key: str, mask_rel: str, what: str) -> Path:
    """An entry's mask file, found as MMAD's own code finds it: ``mask_path`` relative to the first three parts
    of the image key (``'/'.join(key.split('/')[:3])``, e.g. ``MVTec-AD/bottle/test`` + ``../ground_truth/…``),
    so it may climb with ``..`` from the image's folder; also relative to the dataset root (how rlad's own
    ``mmad.json`` writes it). Either way the file must stay inside ``root``."""
    if Path(mask_rel).is_absolute():
        raise DataError(f"{what}: path {mask_rel!r} leaves the dataset root {root} (an absolute path)")
    prefix = "/".join(key.split("/")[:3])
    candidates = [f"{prefix}/{mask_rel}", mask_rel] if key.count("/") >= 2 else [mask_rel]
    inside = [p for p in ((root / rel).resolve() for rel in candidates) if p.is_relative_to(root.resolve())]
    if not inside:
        raise DataError(f"{what}: path {mask_rel!r} leaves the dataset root {root} (read from {prefix!r} and the root)")
    for path in inside:
        if path.is_file():
            return path
    raise DataError(f"{what}: mask file not found at {' or '.join(map(str, inside))}")


def read_mmad(
    json_path: str | Path,
    root: str | Path | None = None,
    grid: int = 24,
    cover: Cover | str = Cover.any,
    tau: float = 0.5,
    shots: int = 0,
    on_bad: str = "error",
) -> tuple[list[VerifiableSample], ReadReport]:
    """Every question of an MMAD-format ``mmad.json``; image and mask paths relative to ``root``
    (default: the JSON's folder). ``shots=1`` attaches the first normal template as reference image."""
    json_path = Path(json_path)
    root = Path(root) if root is not None else json_path.parent
    if shots not in (0, 1):
        raise ValueError(f"shots must be 0 or 1, got {shots}")
    if not json_path.is_file():
        raise DataError(f"MMAD file {json_path} does not exist")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{json_path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DataError(f"{json_path}: top level must be an object keyed by image path")
    g = _Grid(grid, Cover(cover), tau)
    col = _Collector(str(json_path), on_bad)
    for key, entry in data.items():
        what = f"{json_path} entry {key!r}"
        col.add(what, lambda key=key, entry=entry, what=what: _mmad_samples(root, key, entry, g, shots, what))
    return col.finish()


DATASET_FORMATS = ("mmad", "mvtec", "visa", "loco")


def dataset_format(path: str | Path) -> str:
    """Which reader a dataset path needs: an ``mmad.json`` (or a folder holding one) is MMAD, a folder with
    ``split_csv/1cls.csv`` raw VisA, class folders whose ground truth is one folder per image MVTec-LOCO,
    other class folders MVTec-AD layout (MVTec-AD, converted VisA, the generated benchmark's images)."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".json":
            return "mmad"
        raise DataError(f"{path}: a dataset is a folder or an mmad.json file")
    if not path.is_dir():
        raise DataError(f"dataset {path} does not exist")
    if (path / "mmad.json").is_file():
        return "mmad"
    if (path / "split_csv" / "1cls.csv").is_file():
        return "visa"
    for cdir in _class_dirs(path, None):
        for ddir in sorted((cdir / "ground_truth").glob("*")):
            if ddir.is_dir() and any(p.is_dir() for p in ddir.iterdir()):
                return "loco"
    return "mvtec"


def read_dataset(
    path: str | Path,
    grid: int = 24,
    cover: Cover | str = Cover.any,
    tau: float = 0.5,
    shots: int = 0,
    on_bad: str = "error",
    fmt: str = "auto",
) -> tuple[list[VerifiableSample], ReadReport]:
    """Every sample of the dataset at ``path`` through the reader of ``fmt`` (``auto``: :func:`dataset_format`)."""
    fmt = dataset_format(path) if fmt == "auto" else fmt
    if fmt not in DATASET_FORMATS:
        raise DataError(f"dataset format {fmt!r} is not one of auto, {', '.join(DATASET_FORMATS)}")
    path = Path(path)
    if fmt == "mmad":
        json_path = path / "mmad.json" if path.is_dir() else path
        return read_mmad(json_path, grid=grid, cover=cover, tau=tau, shots=shots, on_bad=on_bad)
    if shots:
        raise DataError(f"{path}: 1-shot needs normal references, which only the MMAD format names (use --shots 0)")
    reader = {"mvtec": read_mvtec, "loco": read_loco, "visa": read_visa}[fmt]
    return reader(path, grid=grid, cover=cover, tau=tau, on_bad=on_bad)
