"""An auxiliary grounding loss for the SFT stage — **not part of OmniAD's recipe**, off by default.

Why it exists: in Qwen2.5-VL an image token's place reaches the language model only as M-RoPE phases, which
move attention weights but never the values a head copies, so to *write* ``(row, col)`` the model must first
build each image token's place into its hidden state, and a tiny model trained from scratch learns that slowly
(README, "Why the policy does not localise"). The auxiliary loss asks for it directly: a linear head reads the
language model's hidden state of every image token after layer ``sft.grounding_layer`` and predicts

- the token's row and column on the merged token grid (cross-entropy; ``sft.grounding_position_weight``) —
  free labels, the token's own place, no anomaly information;
- whether the ground-truth patch mask covers the token's cell (binary cross-entropy, query image only;
  ``sft.grounding_mask_weight``) — the same mask the SFT target already writes in ``<seg>``;
- the defect's kind on every covered cell (cross-entropy over the training set's defect names, query image only;
  ``sft.grounding_kind_weight``) — the same label the SFT target's think text already names;
- the defect's colour and shape on every covered cell (two cross-entropies over the generator's colour and shape
  names, ``rlad.data.render.DEFECT_COLOURS`` / ``DEFECT_SHAPES``; ``sft.grounding_look_weight``) — the look the
  think text names and a Defect Description question asks for.

The last two are *label parts* (``TokenLabels``): a class per covered query token, over the part's own slice of
the head's outputs.

The head lives only while SFT runs: the saved policy is a plain Qwen2.5-VL checkpoint (``strip_head``).

The maths here is pure (``token_cells``, ``grounding_loss``) and tested against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["HEAD_NAME", "GroundingHead", "TokenLabels", "attach_head", "grounding_loss", "head_state", "strip_head",
           "token_cells"]  # fmt: skip

HEAD_NAME = "rlad_grounding_head"  # the attribute the head sits under on the policy while SFT runs


def token_cells(image_grid_thw: torch.Tensor, merge: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(rows, cols, side) of every image token of a batch, in the order the image tokens appear: images in
    batch order, each image's merged tokens row by row. ``image_grid_thw`` is (n_images, 3) in patches before
    the ``merge x merge`` merge. All images must share one square merged grid of ``side`` tokens (rlad pins the
    image size); anything else is refused by name."""
    if image_grid_thw.numel() == 0:
        raise ValueError("the grounding loss needs images in the batch")
    t, h, w = (int(v) for v in image_grid_thw[0])
    if not bool((image_grid_thw == image_grid_thw[0]).all()) or t != 1 or h != w or h % merge:
        raise ValueError(
            f"the grounding loss needs every image on one square grid of single frames; got image_grid_thw "
            f"{image_grid_thw.tolist()} (set model.image_size)"
        )
    side = h // merge
    cell = torch.arange(side * side).repeat(len(image_grid_thw))
    return cell // side, cell % side, side


@dataclass(frozen=True)
class TokenLabels:
    """One label part of the grounding loss: a class for each query-image token, over ``classes``."""

    name: str  # logged as ``grounding/<name>_loss``
    weight: float
    targets: torch.Tensor  # (M,) long, one per query token; −1: no label (a cell no defect covers)
    classes: int


def grounding_loss(
    logits: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    side: int,
    *,
    position_weight: float,
    mask_weight: float = 0.0,
    query_tokens: torch.Tensor | None = None,
    covered: torch.Tensor | None = None,
    labels: Sequence[TokenLabels] = (),
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted auxiliary loss and its parts (floats, for logging).

    ``logits``: (N, 2 * side + 1 + sum of the label parts' classes) head outputs for the batch's N image tokens —
    ``side`` row classes, ``side`` column classes, one mask logit, then each of ``labels`` its ``classes``, in
    order. ``rows``/``cols``: (N,) each token's place. ``query_tokens``: (M,) indices of the query images' tokens
    and ``covered``: (M,) float 0/1, whether the mask covers each (needed when ``mask_weight`` > 0). Each label
    part (needs ``query_tokens``) is a cross-entropy over its own slice, its mean over the tokens it labels (a
    batch with none adds 0)."""
    classes = [part.classes for part in labels]
    if logits.shape[-1] != 2 * side + 1 + sum(classes):
        named = ", ".join(f"{part.classes} {part.name}" for part in labels) or "no label classes"
        raise ValueError(f"grounding head has {logits.shape[-1]} outputs for a {side}x{side} token grid and "
                         f"{named} (needs {2 * side + 1 + sum(classes)}): the images are not the size the head "
                         "was built for, or the data not its labels")  # fmt: skip
    ce = torch.nn.functional.cross_entropy
    logits = logits.float()
    row_loss = ce(logits[:, :side], rows.to(logits.device))
    col_loss = ce(logits[:, side : 2 * side], cols.to(logits.device))
    total = position_weight * (row_loss + col_loss)
    parts = {"grounding/row_loss": row_loss.item(), "grounding/col_loss": col_loss.item()}
    if mask_weight:
        if query_tokens is None or covered is None:
            raise ValueError("mask_weight > 0 needs query_tokens and covered")
        mask_logits = logits[query_tokens.to(logits.device), 2 * side]
        mask_loss = torch.nn.functional.binary_cross_entropy_with_logits(mask_logits, covered.to(logits.device))
        total = total + mask_weight * mask_loss
        parts["grounding/mask_loss"] = mask_loss.item()
    start = 2 * side + 1
    for part in labels:
        if query_tokens is None:
            raise ValueError(f"the {part.name} part needs query_tokens")
        targets = part.targets.to(logits.device)
        labelled = targets >= 0
        if labelled.any():
            part_logits = logits[query_tokens.to(logits.device)[labelled], start : start + part.classes]
            part_loss = ce(part_logits, targets[labelled])
            total = total + part.weight * part_loss
            parts[f"grounding/{part.name}_loss"] = part_loss.item()
        start += part.classes
    return total, parts


class GroundingHead(torch.nn.Linear):
    """hidden state of an image token -> ``side`` row logits, ``side`` column logits, one mask logit, then each
    label part's ``classes`` logits (``TokenLabels``, in order)."""

    def __init__(self, hidden_size: int, side: int, classes: Sequence[int] = ()):
        super().__init__(hidden_size, 2 * side + 1 + sum(classes))
        self.side = side
        self.classes = tuple(classes)


def attach_head(model: torch.nn.Module, hidden_size: int, side: int, classes: Sequence[int] = ()) -> GroundingHead:
    """Put a fresh head on ``model`` (so the Trainer's optimiser and checkpoints include it) and return it."""
    head = GroundingHead(hidden_size, side, classes).to(next(model.parameters()).device)
    setattr(model, HEAD_NAME, head)
    return head


def strip_head(model: torch.nn.Module) -> None:
    """Take the head off again, so what is saved is the plain policy."""
    if hasattr(model, HEAD_NAME):
        delattr(model, HEAD_NAME)


def head_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The head's tensors in a mid-run SFT checkpoint (``from_pretrained`` drops them as unknown keys)."""
    from safetensors import safe_open

    out = {}
    for file in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            out |= {k: f.get_tensor(k) for k in f.keys() if k.startswith(HEAD_NAME + ".")}
    if not out:
        raise FileNotFoundError(f"{checkpoint}: no {HEAD_NAME} tensors to resume the grounding head from")
    return out
