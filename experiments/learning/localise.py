"""Can a tiny policy learn to *write where it sees*? A localisation probe for tiny-model specs, over seeds.

    python experiments/learning/localise.py --spec '' --spec 'rope_theta=50 mrope_section=2,7,7' [--seeds 0 1 2]

The demo's SFT policy answers questions but barely localises (patch F1 ~0.09). This probe takes the benchmark's
defects out of the question: each image is one of the generated classes with 0-2 plain discs of a colour
opposite to the background (radius 12-30 px, never subtle) and the target is only ``<seg>cells</seg>`` of
the discs. A tiny model trained from scratch on fresh images each step (the demo's prompt, system prompt
included, built by rlad's ``InputBuilder``) shows whether the spec can carry positions from image tokens to
the ``(row, col)`` it writes at all.

Per spec and seed (``model.tiny.seed`` = the seed: same initial weights across specs that change only the
rotary layout), after ``--steps`` AdamW steps: the held-out teacher-forced loss of the target, the greedy
patch F1 on the 8x8 grid, and the F1 of the rows and of the columns the masks touch (which axis is lost);
``--eval-every N`` prints them along the way too (is it a matter of steps?).
Printed as mean ± 95 % CI over seeds, and each spec minus the first paired by seed (``*``: beyond noise).

``--aux-position W`` / ``--aux-mask W`` add the auxiliary grounding loss of ``rlad/grounding.py`` (not the paper's
recipe; ``sft.grounding_*`` in the SFT stage) read from hidden state ``--aux-layer``: does asking each image
token's state for its row, column and cover make the text path localise sooner?
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rlad import mask_text  # noqa: E402
from rlad.config import ModelConfig  # noqa: E402
from rlad.data.render import CLASSES, render_normal  # noqa: E402
from rlad.grounding import GroundingHead, grounding_loss, token_cells  # noqa: E402
from rlad.inputs import to_model  # noqa: E402
from rlad.policy import load_policy  # noqa: E402
from rlad.sample import VerifiableSample  # noqa: E402
from rlad.stats import mean_ci, paired_difference  # noqa: E402
from rlad.tables import text_table  # noqa: E402

GRID, SIZE = 8, 224
QUESTION = "Mark the patches covered by spots."
METRICS = ["heldout_loss", "patch_F1", "row_F1", "col_F1"]


def parse_spec(text: str) -> dict:
    """``'rope_theta=50 mrope_section=2,7,7'`` -> TinySpec fields (numbers, comma lists as tuples)."""
    out = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if not _:
            raise SystemExit(f"--spec item {item!r} is not key=value")
        parts = [float(v) if "." in v else int(v) for v in value.split(",")]
        out[key] = tuple(parts) if "," in value else parts[0]
    return out


def spotted_image(rng: np.random.Generator, folder: Path, name: str) -> VerifiableSample:
    """A generated class image with 0-2 contrasting discs, saved to ``folder``; the sample's mask is theirs."""
    img = render_normal(list(CLASSES)[rng.integers(len(CLASSES))], rng, SIZE).image
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    pixels = np.zeros((SIZE, SIZE), bool)
    for _ in range(rng.integers(0, 3)):
        r = rng.uniform(12, 30)
        cy, cx = rng.uniform(r, SIZE - r, 2)
        disc = ((yy - cy) / (r * rng.uniform(0.5, 1.5))) ** 2 + ((xx - cx) / r) ** 2 < 1
        colour = np.clip(1 - img.mean((0, 1)) + rng.normal(0, 0.1, 3), 0, 1)
        img = np.where(disc[..., None], colour[None, None], img)
        pixels |= disc
    path = folder / f"{name}.png"
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    grid = mask_text.mask_to_grid(pixels, GRID)
    return VerifiableSample(name, QUESTION, {"A": "spots", "B": "none"}, "A" if grid.any() else "B", grid,
                            bool(grid.any()), image=str(path))  # fmt: skip


def target(sample: VerifiableSample) -> str:
    return f"<seg>{mask_text.encode(sample.mask)}</seg>"


def axis_f1(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """(2 * hits, predicted + true) for the rows (axis 1) or columns (axis 0) a mask touches."""
    return 2 * int((pred & truth).sum()), int(pred.sum() + truth.sum())


def evaluate(policy, held: list[VerifiableSample]) -> dict[str, float]:
    model, builder = policy.model, policy.builder
    model.eval()
    sums = {"patch": [0, 0], "row": [0, 0], "col": [0, 0]}
    losses = []
    with torch.no_grad():
        for k in range(0, len(held), 16):
            chunk = held[k : k + 16]
            batch = to_model(builder.collate([builder.encode_sft(s, target(s)) for s in chunk]), "cpu", torch.float32)
            losses.append(float(model(**batch).loss))
            prompts = to_model(builder.collate([builder.encode_prompt(s) for s in chunk], "left"), "cpu", torch.float32)
            out = model.generate(**prompts, max_new_tokens=96, do_sample=False)
            width = prompts["input_ids"].shape[1]
            for sample, ids in zip(chunk, out[:, width:], strict=True):
                text = policy.tokenizer.decode(ids, skip_special_tokens=True)
                inner = text.split("<seg>", 1)[1].split("</seg>", 1)[0] if "<seg>" in text else None
                pred = mask_text.decode_or_none(inner, GRID) if inner is not None else None
                pred = np.zeros((GRID, GRID), bool) if pred is None else pred
                for name, p, t in (("patch", pred, sample.mask), ("row", pred.any(1), sample.mask.any(1)),
                                   ("col", pred.any(0), sample.mask.any(0))):  # fmt: skip
                    hits, total = axis_f1(p, t)
                    sums[name][0] += hits
                    sums[name][1] += total
    model.train()
    out = {"heldout_loss": float(np.mean(losses))}
    out.update({f"{k}_F1": h / t if t else 1.0 for k, (h, t) in sums.items()})
    return out


def aux_loss(head, hidden, batch, chunk, image_token_id: int, args) -> torch.Tensor:
    """The auxiliary grounding loss of rlad/grounding.py on this batch (one image per sample, the query)."""
    rows, cols, side = token_cells(batch["image_grid_thw"], merge=2)
    states = hidden[batch["input_ids"] == image_token_id]
    covered = torch.tensor(np.stack([s.mask.reshape(-1) for s in chunk]), dtype=torch.float32).reshape(-1)
    weights = {"position_weight": args.aux_position, "mask_weight": args.aux_mask}
    loss, _ = grounding_loss(head(states), rows, cols, side, **weights, query_tokens=torch.arange(len(states)),
                             covered=covered)  # fmt: skip
    return loss


def run(spec: dict, seed: int, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    torch.manual_seed(seed)
    model = ModelConfig(path="tiny", image_size=SIZE, tiny={**spec, "seed": seed})
    policy = load_policy(model, shots=0, trainable=True)
    held_rng, rng = np.random.default_rng(10_000 + seed), np.random.default_rng(seed)
    held = [spotted_image(held_rng, folder, f"held-{seed}-{i}") for i in range(args.held_out)]
    params = list(policy.model.parameters())
    head = None
    if args.aux_position or args.aux_mask:
        head = GroundingHead(policy.model.config.text_config.hidden_size, GRID)
        params += list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    builder, started = policy.builder, time.time()
    for step in range(1, args.steps + 1):
        chunk = [spotted_image(rng, folder, f"train-{i}") for i in range(args.batch_size)]
        batch = to_model(builder.collate([builder.encode_sft(s, target(s)) for s in chunk]), "cpu", torch.float32)
        for group in opt.param_groups:  # linear warm-up over 50 steps, then cosine to 0
            group["lr"] = args.lr * min(1.0, step / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        out = policy.model(**batch, output_hidden_states=head is not None)
        loss = out.loss
        if head is not None:
            loss = loss + aux_loss(head, out.hidden_states[args.aux_layer], batch, chunk, builder.image_token_id, args)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        if step % 100 == 0:
            print(f"  step {step} loss {loss.item():.3f} ({time.time() - started:.0f} s)", flush=True)
        if args.eval_every and step % args.eval_every == 0 and step < args.steps:  # the learning curve
            print(f"  step {step}: " + "  ".join(f"{k} {v:.3f}" for k, v in evaluate(policy, held).items()), flush=True)
    return evaluate(policy, held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", action="append", default=None, help="TinySpec fields, e.g. 'rope_theta=50'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--held-out", type=int, default=128)
    parser.add_argument("--aux-position", type=float, default=0.0, help="weight of the auxiliary position loss")
    parser.add_argument("--aux-mask", type=float, default=0.0, help="weight of the auxiliary per-token mask loss")
    parser.add_argument("--aux-layer", type=int, default=1, help="hidden state the auxiliary heads read (0: inputs)")
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (0: at the end only)")
    args = parser.parse_args()
    specs = args.spec or [""]
    results: dict[str, list[dict[str, float]]] = {s: [] for s in specs}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for text in specs:
                print(f"spec {text or 'default'!r} seed {seed}", flush=True)
                results[text].append(run(parse_spec(text), seed, args, Path(tmp)))
                print("  " + "  ".join(f"{k} {v:.3f}" for k, v in results[text][-1].items()), flush=True)
    rows = [[text or "default", *(str(mean_ci([r[m] for r in results[text]])) for m in METRICS)] for text in specs]
    base = results[specs[0]]
    for text in specs[1:]:
        diffs = [paired_difference([r[m] for r in results[text]], [r[m] for r in base]) for m in METRICS]
        rows.append([f"{text} - {specs[0] or 'default'}", *(f"{d}{'*' if d.excludes_zero() else ''}" for d in diffs)])
    print(f"\n{len(args.seeds)} seeds, {args.steps} steps of {args.batch_size}, {args.held_out} held-out images")
    print(text_table(["spec", *METRICS], rows))


if __name__ == "__main__":
    main()
