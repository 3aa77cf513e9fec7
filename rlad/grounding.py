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
  ``sft.grounding_kind_weight``) — the same label the SFT target's think text already names.

The head lives only while SFT runs: the saved policy is a plain Qwen2.5-VL checkpoint (``strip_head``).

The maths here is pure (``token_cells``, ``grounding_loss``) and tested against hand-computed values.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["HEAD_NAME", "GroundingHead", "attach_head", "grounding_loss", "head_state", "strip_head", "token_cells"]

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
    kind_weight: float = 0.0,
    kinds: torch.Tensor | None = None,
    n_kinds: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted auxiliary loss and its parts (floats, for logging).

    ``logits``: (N, 2 * side + 1 + n_kinds) head outputs for the batch's N image tokens — ``side`` row classes,
    ``side`` column classes, one mask logit, ``n_kinds`` defect-kind classes. ``rows``/``cols``: (N,) each
    token's place. ``query_tokens``: (M,) indices of the query images' tokens and ``covered``: (M,) float 0/1,
    whether the mask covers each (needed when ``mask_weight`` > 0). ``kinds``: (M,) long, the defect kind of each
    query token, −1 where no defect covers it (needed when ``kind_weight`` > 0; the mean runs over the labelled
    tokens, and a batch with none adds 0)."""
    if logits.shape[-1] != 2 * side + 1 + n_kinds:
        raise ValueError(f"grounding head has {logits.shape[-1]} outputs for a {side}x{side} token grid and "
                         f"{n_kinds} defect kinds (needs {2 * side + 1 + n_kinds}): the images are not the size "
                         "the head was built for, or the data not its defect kinds")  # fmt: skip
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
    if kind_weight:
        if query_tokens is None or kinds is None or not n_kinds:
            raise ValueError("kind_weight > 0 needs query_tokens, kinds and n_kinds")
        kinds = kinds.to(logits.device)
        labelled = kinds >= 0
        if labelled.any():
            kind_logits = logits[query_tokens.to(logits.device)[labelled], 2 * side + 1 :]
            kind_loss = ce(kind_logits, kinds[labelled])
            total = total + kind_weight * kind_loss
            parts["grounding/kind_loss"] = kind_loss.item()
    return total, parts


class GroundingHead(torch.nn.Linear):
    """hidden state of an image token -> ``side`` row logits, ``side`` column logits, one mask logit, ``n_kinds``
    defect-kind logits."""

    def __init__(self, hidden_size: int, side: int, n_kinds: int = 0):
        super().__init__(hidden_size, 2 * side + 1 + n_kinds)
        self.side = side
        self.n_kinds = n_kinds


def attach_head(model: torch.nn.Module, hidden_size: int, side: int, n_kinds: int = 0) -> GroundingHead:
    """Put a fresh head on ``model`` (so the Trainer's optimiser and checkpoints include it) and return it."""
    head = GroundingHead(hidden_size, side, n_kinds).to(next(model.parameters()).device)
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
