"""Procedural industrial images and the defects injected into them (the generated benchmark's pixels).

Eight classes that look unlike each other (three textures, five objects) and six defect types of different
appearance. A defect is drawn as its own layer (colour/texture) and composited through a soft alpha whose
shape is cut by value noise, so edges blend into the surface rather than forming a solid rectangle (as in
anomalib's Perlin masks). The ground-truth mask is exactly the pixels where that alpha is >= 0.5; outside it
the image changes by at most half the defect's contrast, inside by at least half.

Everything is a pure function of a ``numpy.random.Generator``: same seed, same pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "CLASSES", "DEFECTS", "DEFECT_COLOURS", "DEFECT_SHAPES", "Defect", "ObjectImage", "inject_defect", "render_normal",
]  # fmt: skip

DEFECT_COLOURS = ("dark", "bright", "brown", "red", "black", "white", "yellow", "blue", "background")
"""Every colour name a defect below is given: a Defect Description's distractors are drawn from these, so each must
be here (an answer with a word no distractor has would give itself away)."""
DEFECT_SHAPES = ("line", "round", "irregular", "branching")
"""Every shape name a defect below is given, likewise."""


@dataclass(frozen=True)
class ObjectImage:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    support: np.ndarray  # (H, W) bool: where a defect may sit (the object, or all of a texture)
    colour: str  # main colour name of the object, for Object Analysis questions


@dataclass(frozen=True)
class Defect:
    kind: str  # one of DEFECTS
    mask: np.ndarray  # (H, W) bool, exact ground truth
    colour: str  # how it looks, for Defect Description questions: one of DEFECT_COLOURS
    shape: str  # one of DEFECT_SHAPES
    blobs: int  # connected pieces placed (several = "scattered")


# ----------------------------------------------------------------------------------------------- helpers


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: a cells x cells random lattice, bicubically upsampled."""
    lattice = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(lattice).resize((size, size), Image.BICUBIC), np.float32) / 255.0


def _fractal(rng: np.random.Generator, size: int, octaves: tuple[int, ...] = (4, 8, 16, 32)) -> np.ndarray:
    out = sum(_noise(rng, size, c) / (i + 1) for i, c in enumerate(octaves))
    return (out - out.min()) / (np.ptp(out) + 1e-6)


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return y / size, x / size


def _rgb(*c: float) -> np.ndarray:
    return np.array(c, np.float32).reshape(1, 1, 3)


def _draw(size: int, paint: Callable[[ImageDraw.ImageDraw], None], blur: float = 0.0) -> np.ndarray:
    """Rasterise shapes into a (H, W) float mask in [0, 1]."""
    img = Image.new("L", (size, size), 0)
    paint(ImageDraw.Draw(img))
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(img, np.float32) / 255.0


def _on(base: np.ndarray, layer: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return base * (1 - alpha[..., None]) + layer * alpha[..., None]


# ----------------------------------------------------------------------------------------------- classes


def _woven(rng, s):
    y, x = _coords(s)
    f = rng.uniform(14, 22)
    weave = 0.5 + 0.25 * np.sin(2 * np.pi * f * x) * np.sign(np.sin(2 * np.pi * f * y)) + 0.1 * _fractal(rng, s)
    base = _rgb(0.55, 0.42, 0.30) * (0.6 + 0.6 * weave[..., None])
    return ObjectImage(np.clip(base, 0, 1), np.ones((s, s), bool), "beige")


def _wood(rng, s):
    _, x = _coords(s)
    warp = _fractal(rng, s, (3, 6))
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (rng.uniform(8, 14) * (x + 0.15 * warp)) + 3 * warp)
    base = _rgb(0.62, 0.40, 0.20) * (0.75 + 0.35 * grain[..., None]) + 0.05 * _fractal(rng, s)[..., None]
    return ObjectImage(np.clip(base, 0, 1), np.ones((s, s), bool), "brown")


def _grid(rng, s):
    y, x = _coords(s)
    pitch = rng.uniform(10, 16)
    lines = np.maximum(np.cos(2 * np.pi * pitch * x), np.cos(2 * np.pi * pitch * y)) > 0.82
    base = _rgb(0.12, 0.13, 0.15) + lines[..., None] * _rgb(0.55, 0.57, 0.6) + 0.06 * _fractal(rng, s)[..., None]
    return ObjectImage(np.clip(base, 0, 1), np.ones((s, s), bool), "silver")


def _background(rng, s, tone):
    return np.clip(_rgb(*tone) + 0.04 * _fractal(rng, s)[..., None] + np.zeros((s, s, 3), np.float32), 0, 1)


def _pill(rng, s):
    img = _background(rng, s, (0.18, 0.2, 0.25))
    c, r = s / 2 + rng.normal(0, s * 0.02, 2), s * rng.uniform(0.3, 0.36)
    body = _draw(s, lambda d: d.ellipse([c[0] - r, c[1] - r * 0.8, c[0] + r, c[1] + r * 0.8], fill=255), blur=1)
    speck = (_noise(rng, s, 40) > 0.8) * 0.12
    img = _on(img, _rgb(0.93, 0.92, 0.88) - speck[..., None], body)
    return ObjectImage(img, body > 0.9, "white")


def _capsule(rng, s):
    img = _background(rng, s, (0.1, 0.1, 0.12))
    w, h = s * 0.8, s * rng.uniform(0.3, 0.36)
    x0, y0 = (s - w) / 2, (s - h) / 2
    half = _draw(s, lambda d: d.rectangle([0, 0, s / 2, s], fill=255))
    body = _draw(s, lambda d: d.rounded_rectangle([x0, y0, x0 + w, y0 + h], radius=h / 2, fill=255), blur=1)
    shade = 0.85 + 0.15 * np.cos(np.pi * (_coords(s)[0] - 0.5) * 2)[..., None]
    colour = _on(_rgb(0.2, 0.45, 0.85), _rgb(0.95, 0.8, 0.2), half) * shade
    return ObjectImage(_on(img, colour, body), body > 0.9, "blue and yellow")


def _nut(rng, s):
    img = _background(rng, s, (0.85, 0.85, 0.82))
    c, r_out, r_in = s / 2, s * rng.uniform(0.36, 0.42), s * rng.uniform(0.15, 0.2)
    ring = _draw(s, lambda d: d.regular_polygon((c, c, r_out), 6, rotation=rng.uniform(0, 60), fill=255), blur=1)
    hole = _draw(s, lambda d: d.ellipse([c - r_in, c - r_in, c + r_in, c + r_in], fill=255), blur=1)
    body = ring * (1 - hole)
    metal = _rgb(0.45, 0.46, 0.5) + 0.15 * _fractal(rng, s)[..., None]
    return ObjectImage(_on(img, metal, body), body > 0.9, "grey")


def _pcb(rng, s):
    img = _rgb(0.05, 0.35, 0.15) + 0.05 * _fractal(rng, s)[..., None] + np.zeros((s, s, 3), np.float32)

    def traces(d):
        for _ in range(14):
            x, y = rng.integers(0, s, 2)
            for _ in range(3):
                nx, ny = (
                    (x + rng.integers(-s // 3, s // 3), y)
                    if rng.random() < 0.5
                    else (x, y + rng.integers(-s // 3, s // 3))
                )
                d.line([x, y, nx, ny], fill=255, width=max(2, s // 80))
                x, y = nx, ny
            d.ellipse([x - s // 50, y - s // 50, x + s // 50, y + s // 50], fill=255)

    copper = _draw(s, traces)
    img = _on(img, _rgb(0.8, 0.65, 0.3), copper)
    chip = _draw(s, lambda d: d.rectangle([s * 0.35, s * 0.35, s * 0.65, s * 0.62], fill=255))
    img = _on(img, _rgb(0.08, 0.08, 0.09), chip)
    return ObjectImage(np.clip(img, 0, 1), np.ones((s, s), bool), "green")


def _bottle_top(rng, s):
    img = _background(rng, s, (0.05, 0.05, 0.06))
    c, r = s / 2, s * rng.uniform(0.38, 0.44)
    y, x = _coords(s)
    dist = np.hypot(y - 0.5, x - 0.5) * s / r  # 0 at centre, 1 at the rim
    body = _draw(s, lambda d: d.ellipse([c - r, c - r, c + r, c + r], fill=255), blur=1)
    rings = 0.65 + 0.25 * np.cos(dist * np.pi * 5) ** 2
    glass = _rgb(0.35, 0.5, 0.3) * rings[..., None] + 0.05 * _fractal(rng, s)[..., None]
    return ObjectImage(_on(img, glass, body), body > 0.9, "green")


CLASSES: dict[str, Callable[[np.random.Generator, int], ObjectImage]] = {
    "woven_fabric": _woven,
    "wood": _wood,
    "metal_grid": _grid,
    "pill": _pill,
    "capsule": _capsule,
    "metal_nut": _nut,
    "pcb": _pcb,
    "bottle_top": _bottle_top,
}


def render_normal(class_name: str, rng: np.random.Generator, size: int) -> ObjectImage:
    return CLASSES[class_name](rng, size)


# ----------------------------------------------------------------------------------------------- defects


def _point_on(support: np.ndarray, rng: np.random.Generator, margin: int) -> tuple[int, int]:
    inner = np.zeros_like(support)
    inner[margin:-margin, margin:-margin] = support[margin:-margin, margin:-margin]
    ys, xs = np.nonzero(inner if inner.any() else support)
    i = int(rng.integers(len(ys)))
    return int(ys[i]), int(xs[i])


def _blob_alpha(rng, s, cy, cx, radius):
    """A soft irregular blob: an ellipse whose edge is cut by value noise."""
    ry, rx = radius * rng.uniform(0.6, 1.4, 2)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    d = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
    wobble = 0.5 * (_noise(rng, s, max(4, int(s / max(radius, 1)))) - 0.5)
    return np.clip((1.0 - d + wobble) * 3.0, 0, 1)


def _stroke_alpha(rng, s, cy, cx, length, width, branches=0, jagged=0.0):
    def paint(d):
        stack = [(cx, cy, rng.uniform(0, 2 * np.pi), length, branches)]
        while stack:
            x, y, ang, ln, br = stack.pop()
            pts = [(x, y)]
            for _ in range(8):
                ang += rng.normal(0, 0.15 + jagged)
                x, y = x + np.cos(ang) * ln / 8, y + np.sin(ang) * ln / 8
                pts.append((x, y))
                if br and rng.random() < 0.25:
                    stack.append((x, y, ang + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0), ln * 0.5, br - 1))
                    br -= 1
            d.line(pts, fill=255, width=max(1, int(width)), joint="curve")

    return _draw(s, paint, blur=0.8)


def _scratch(rng, img, support, v=1.0):
    s = img.image.shape[0]
    cy, cx = _point_on(support, rng, s // 8)
    alpha = _stroke_alpha(rng, s, cy, cx, s * rng.uniform(0.12, 0.4), v * s * rng.uniform(0.006, 0.012))
    bright = rng.random() < 0.5
    layer = img.image * 0.35 + (0.6 if bright else 0.0)
    return alpha, layer, ("bright" if bright else "dark"), "line", 1


def _hole(rng, img, support, v=1.0):
    s = img.image.shape[0]
    cy, cx = _point_on(support, rng, s // 8)
    alpha = _blob_alpha(rng, s, cy, cx, v * s * rng.uniform(0.02, 0.07))
    layer = np.zeros_like(img.image) + _rgb(0.03, 0.03, 0.03)
    return alpha, layer, "black", "round", 1


def _stain(rng, img, support, v=1.0):
    s = img.image.shape[0]
    cy, cx = _point_on(support, rng, s // 8)
    alpha = _blob_alpha(rng, s, cy, cx, v * s * rng.uniform(0.04, 0.14)) * 0.85
    opacity = min(0.55 * v, 1.0)  # a stain: faint but visible (more opaque at visibility > 1)
    alpha = np.where(alpha >= 0.5, np.maximum(alpha, opacity), alpha * 0.6)
    tint, name = [(_rgb(0.45, 0.25, 0.05), "brown"), (_rgb(0.6, 0.55, 0.1), "yellow"), (_rgb(0.1, 0.1, 0.4), "blue")][
        int(rng.integers(3))
    ]
    layer = img.image * 0.3 + tint
    return alpha, np.clip(layer, 0, 1), name, "irregular", 1


def _crack(rng, img, support, v=1.0):
    s = img.image.shape[0]
    cy, cx = _point_on(support, rng, s // 8)
    alpha = _stroke_alpha(rng, s, cy, cx, s * rng.uniform(0.15, 0.35), v * s * 0.008, branches=2, jagged=0.45)
    layer = img.image * 0.15
    return alpha, layer, "dark", "branching", 1


def _contamination(rng, img, support, v=1.0):
    s = img.image.shape[0]
    n = int(rng.choice([1, 1, 3, 4]))
    alpha = np.zeros((s, s), np.float32)
    for _ in range(n):
        cy, cx = _point_on(support, rng, s // 10)
        alpha = np.maximum(alpha, _blob_alpha(rng, s, cy, cx, v * s * rng.uniform(0.015, 0.05)))
    tint, name = [(_rgb(0.85, 0.1, 0.1), "red"), (_rgb(0.1, 0.1, 0.1), "black"), (_rgb(0.9, 0.9, 0.95), "white")][
        int(rng.integers(3))
    ]
    layer = tint + 0.15 * _fractal(rng, s)[..., None]
    return alpha, np.clip(layer, 0, 1), name, "round" if n == 1 else "irregular", n


def _missing(rng, img, support, v=1.0):
    """A chipped or missing part: the background (or a flat cut surface) shows where material was."""
    s = img.image.shape[0]
    boundary = support & ~np.asarray(Image.fromarray(support).filter(ImageFilter.MinFilter(9)), bool)
    if not support.all() and boundary.any():  # an object: bite into its edge
        ys, xs = np.nonzero(boundary)
        i = int(rng.integers(len(ys)))
        cy, cx = ys[i], xs[i]
    else:
        cy, cx = _point_on(support, rng, s // 8)
    alpha = _blob_alpha(rng, s, cy, cx, v * s * rng.uniform(0.05, 0.1)) * support
    corner = img.image[: s // 16, : s // 16].reshape(-1, 3).mean(0)
    layer = np.zeros_like(img.image) + (corner if not support.all() else img.image.mean((0, 1)) * 0.4)
    return alpha, layer, "background", "irregular", 1


DEFECTS: dict[str, Callable] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "crack": _crack,
    "contamination": _contamination,
    "missing_part": _missing,
}


def inject_defect(
    img: ObjectImage, kind: str, rng: np.random.Generator, visibility: float = 1.0
) -> tuple[np.ndarray, Defect]:
    """The image with one defect of ``kind`` composited in, and the defect with its exact mask.

    ``visibility`` scales how easy the defect is to see: its thickness (a stroke's width, a blob's radius) and a
    stain's opacity grow by that factor. 1.0 is the benchmark's realism (thin lines, faint stains)."""
    if not visibility > 0:
        raise ValueError(f"visibility must be > 0, got {visibility}")
    for _ in range(8):  # a defect that lands (almost) entirely off the object is drawn again
        alpha, layer, colour, shape, blobs = DEFECTS[kind](rng, img, img.support, visibility)
        alpha = alpha * img.support if kind != "missing_part" else alpha
        mask = alpha >= 0.5
        if mask.sum() >= 6:
            break
    out = _on(img.image, layer, alpha)
    return np.clip(out, 0, 1), Defect(kind=kind, mask=mask, colour=colour, shape=shape, blobs=blobs)
