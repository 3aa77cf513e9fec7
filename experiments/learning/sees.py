"""Can the tiny policy's vision tower *see* the benchmark's defects, and from how many images? A probe, over seeds.

    python experiments/learning/sees.py [--visibility 1 2] [--pool 0 768] [--seeds 0 1 2] [--steps 600]

The demo's SFT policy decides whether to write a mask from the question, not the image (``image_F1_shared``
0.00, ``discrimination`` 0.50 on held-out questions): it never learned to see a defect. This probe asks whether
its vision tower can, with the language model taken out: the tiny model's own tower (its spec, its seed) and a
linear head on each merged image token predict whether the 8x8 ground-truth mask covers that token's cell
(binary cross-entropy), trained with AdamW on generated images — half normal, half with one defect of the
benchmark's six types, every class, at the demo's 224 px.

Variants, each over every seed (same initial weights per seed):
- ``--visibility V`` (``data.synth.visibility``): 1.0 is the benchmark's realism, larger is thicker defects;
- ``--pool N``: train on a fixed set of N images (the demo trains on ~770), or on fresh images every step (0).

``--checkpoint PATH`` starts from a trained policy's tower instead of the tiny model's initialisation (``{seed}`` in
the path is the seed: ``runs/x/seed-{seed}/final``), and ``--freeze`` trains the head alone: how well a policy's
*trained* tower tells each cell's defect apart, read by the best linear head — the most its language model could
read from it, to set against the patch F1 the policy writes.

Per variant and seed, on the same held-out images (never trained on, at the variant's visibility): patch F1
(cells with p > 0.5), image F1 (an image is anomalous when any cell is), image AUROC (from the largest cell
probability: does the tower rank defective images first, whatever the threshold). Printed as mean ± 95 % CI over
seeds, and each variant minus the first paired by seed (``*``: beyond noise). Not the paper's recipe: a
measurement of what the tower can learn, to choose the demo's data and model by.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rlad import mask_text  # noqa: E402
from rlad.config import ModelConfig  # noqa: E402
from rlad.data.render import CLASSES, DEFECTS, inject_defect, render_normal  # noqa: E402
from rlad.policy import load_policy  # noqa: E402
from rlad.stats import mean_ci, paired_difference  # noqa: E402
from rlad.tables import text_table  # noqa: E402

GRID, SIZE = 8, 224
METRICS = ["heldout_bce", "patch_F1", "image_F1", "image_AUROC"]


def generated_image(rng: np.random.Generator, visibility: float) -> tuple[Image.Image, np.ndarray]:
    """One benchmark-like image (a random class; a defect of a random type half the time) and its 8x8 mask."""
    obj = render_normal(list(CLASSES)[rng.integers(len(CLASSES))], rng, SIZE)
    image, cells = obj.image, np.zeros((GRID, GRID), bool)
    if rng.random() < 0.5:
        image, defect = inject_defect(obj, list(DEFECTS)[rng.integers(len(DEFECTS))], rng, visibility)
        cells = mask_text.mask_to_grid(defect.mask, GRID)
    return Image.fromarray((image * 255).round().astype(np.uint8)), cells


class CellProbe(torch.nn.Module):
    """The policy's vision tower and a linear head: one logit per merged image token (one per grid cell)."""

    def __init__(self, visual: torch.nn.Module, width: int) -> None:
        super().__init__()
        self.visual, self.head = visual, torch.nn.Linear(width, 1)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        tokens = self.visual(pixel_values, grid_thw=grid_thw)
        tokens = getattr(tokens, "pooler_output", tokens)  # transformers 5 returns an output object
        return self.head(tokens).reshape(len(grid_thw), GRID * GRID)


def encode(processor, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    vision = processor(images=images, return_tensors="pt")
    return vision["pixel_values"].float(), vision["image_grid_thw"]


def evaluate(probe: CellProbe, held: tuple[torch.Tensor, torch.Tensor, np.ndarray]) -> dict[str, float]:
    pixels, thw, cells = held
    probe.eval()
    with torch.no_grad():
        per_image = pixels.shape[0] // len(thw)
        logits = torch.cat([probe(pixels[k * per_image : (k + 16) * per_image], thw[k : k + 16])
                            for k in range(0, len(thw), 16)])  # fmt: skip
    probe.train()
    truth = torch.tensor(cells.reshape(len(thw), -1), dtype=torch.float32)
    prob = torch.sigmoid(logits).numpy()
    pred, gold = prob > 0.5, truth.numpy() > 0.5
    hits = 2 * (pred & gold).sum()
    image_pred, image_gold = pred.any(1), gold.any(1)
    image_hits = 2 * (image_pred & image_gold).sum()
    return {
        "heldout_bce": float(torch.nn.functional.binary_cross_entropy_with_logits(logits, truth)),
        "patch_F1": float(hits / max(1, pred.sum() + gold.sum())),
        "image_F1": float(image_hits / max(1, image_pred.sum() + image_gold.sum())),
        "image_AUROC": float(roc_auc_score(image_gold, prob.max(1))),
    }


def build_probe(seed: int, checkpoint: str | None, freeze: bool) -> tuple[CellProbe, object]:
    """The probe on the tiny model's tower (initialised by ``seed``) or a checkpoint's, frozen or not; and the
    policy's image processor."""
    torch.manual_seed(seed)
    model = ModelConfig(path=checkpoint.format(seed=seed), image_size=SIZE) if checkpoint else None
    policy = load_policy(
        model or ModelConfig(path="tiny", image_size=SIZE, tiny={"seed": seed}), shots=0, trainable=True
    )
    probe = CellProbe(policy.model.model.visual, policy.model.config.text_config.hidden_size)
    if freeze:
        probe.visual.requires_grad_(False)
    return probe, policy.builder.image_processor


def run(visibility: float, pool: int, seed: int, args: argparse.Namespace) -> dict[str, float]:
    probe, processor = build_probe(seed, args.checkpoint, args.freeze)
    held_rng = np.random.default_rng(10_000 + seed)
    held_images, held_cells = zip(*(generated_image(held_rng, visibility) for _ in range(args.held_out)), strict=True)
    held = (*encode(processor, list(held_images)), np.stack(held_cells))
    rng = np.random.default_rng(seed)
    fixed = [generated_image(rng, visibility) for _ in range(pool)]
    opt = torch.optim.AdamW([w for w in probe.parameters() if w.requires_grad], lr=args.lr, weight_decay=0.01)
    started = time.time()
    for step in range(1, args.steps + 1):
        if pool:
            batch = [fixed[i] for i in rng.integers(pool, size=args.batch_size)]
        else:
            batch = [generated_image(rng, visibility) for _ in range(args.batch_size)]
        pixels, thw = encode(processor, [b[0] for b in batch])
        truth = torch.tensor(np.stack([b[1].reshape(-1) for b in batch]), dtype=torch.float32)
        for group in opt.param_groups:  # linear warm-up over 50 steps, then cosine to 0
            group["lr"] = args.lr * min(1.0, step / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(pixels, thw), truth)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(probe.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if args.eval_every and step % args.eval_every == 0 and step < args.steps:
            row = evaluate(probe, held)
            where = f"    step {step} ({time.time() - started:.0f} s): "
            print(where + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    return evaluate(probe, held)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--visibility", type=float, nargs="+", default=[1.0], help="defect thickness factors to compare")
    p.add_argument("--pool", type=int, nargs="+", default=[0], help="fixed training images (0: fresh every step)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--held-out", type=int, default=256)
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (0: at the end only)")
    p.add_argument("--checkpoint", help="a trained policy's folder ({seed}: the seed) instead of the tiny init")
    p.add_argument("--freeze", action="store_true", help="train the linear head alone, the tower as it is")
    args = p.parse_args()
    variants = list(itertools.product(args.visibility, args.pool))
    names = [f"visibility {v:g}, {f'pool {n}' if n else 'fresh'}" for v, n in variants]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for seed in args.seeds:  # seed-major: a stopped run has whole seeds to pair
        for name, (visibility, pool) in zip(names, variants, strict=True):
            started = time.time()
            row = run(visibility, pool, seed, args)
            results[name].append(row)
            print(f"  {name}, seed {seed} ({time.time() - started:.0f} s): "
                  + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)  # fmt: skip
    body = [[name, *(str(mean_ci([r[m] for r in rows])) for m in METRICS)] for name, rows in results.items()]
    if len(args.seeds) > 1:
        base = results[names[0]]
        for name in names[1:]:
            cells = []
            for m in METRICS:
                d = paired_difference([r[m] for r in results[name]], [r[m] for r in base])
                cells.append(d.marked())
            body.append([f"{name} − {names[0]}", *cells])
    tower = f"{args.checkpoint}'s tower" if args.checkpoint else "the tiny init's tower"
    tower += ", frozen (the head alone learns)" if args.freeze else ""
    print(f"\n{tower}; {args.steps} steps of {args.batch_size}, {args.held_out} held-out images, seeds {args.seeds}")
    print(text_table(["variant", *METRICS], body), end="")


if __name__ == "__main__":
    main()
