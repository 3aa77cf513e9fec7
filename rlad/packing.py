"""Shared-prefix packing: a group's completions laid out behind one copy of their prompt, for the learner.

A GRPO group is ``group_size`` completions of one prompt, and the prompt (system text, question and, for a VLM,
every image token) is most of each sequence. Collated the plain way, the learner runs the vision tower and the
language model over that prompt once per completion. Packed, one row holds

    prompt | completion 1 | completion 2 | ... | padding

and a 4-D attention mask lets each completion token see the prompt and the earlier tokens of its own
completion, never another completion. Each completion's positions continue from the end of the prompt, as if
it stood alone (M-RoPE: the text positions after the images, from the model's own ``get_rope_index``), so the
log-probs are those of the plain layout up to float rounding (tested), at a fraction of the work: the demo's
8 completions of a 218-token prompt are 2.6x fewer language-model tokens and 8x fewer vision-tower patches.

Completion ``j``'s first token is predicted by the prompt's last position (shared by the whole row); its
token ``t > 0`` by its own token ``t - 1``. ``PackedBatch.index`` holds those columns.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlad.inputs import EncodedSample, InputBuilder, to_model

__all__ = ["PackedBatch", "pack_groups", "rope_index_of"]

RopeIndex = Callable[[dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class PackedBatch:
    """Model inputs of packed rows and where each completion's log-probs are read from them."""

    inputs: dict[str, torch.Tensor]  # input_ids (R, W), attention_mask (R, 1, W, W), position_ids, vision
    row: torch.Tensor  # (N,) long: the packed row holding completion n
    index: torch.Tensor  # (N, T) long: the column whose logits predict completion n's token t (0 past its end)
    targets: torch.Tensor  # (N, T) long: completion n's token t (0 past its end)
    mask: torch.Tensor  # (N, T) bool: t < len(completion n)
    first: int  # the smallest column in ``index``: logits are needed from there on

    def to(self, device: torch.device | str, dtype: torch.dtype) -> PackedBatch:
        """On ``device``, pixels in the model's ``dtype``, the attention mask additive (0 or -inf) in it too:
        SDPA then adds it as it is instead of converting a boolean mask in every layer."""
        tensors = {k: getattr(self, k).to(device) for k in ("row", "index", "targets", "mask")}
        inputs = to_model(self.inputs, device, dtype)
        sees = inputs["attention_mask"]
        if sees.dtype == torch.bool:
            additive = torch.zeros(sees.shape, dtype=dtype, device=device)
            inputs["attention_mask"] = additive.masked_fill(~sees, -torch.inf)
        return PackedBatch(inputs, **tensors, first=self.first)


def rope_index_of(model: Any) -> RopeIndex | None:
    """The model's M-RoPE position function as ``f(collated prompts) -> position_ids (3, R, L)``; None for a
    model with 1-D positions (a text-only language model). Finds ``get_rope_index`` under DeepSpeed and peft
    wrappers."""
    module = getattr(model, "module", model)
    found = next((m.get_rope_index for m in module.modules() if hasattr(m, "get_rope_index")), None)
    if found is None:
        return None
    names = _parameters(found.__func__ if hasattr(found, "__func__") else found)

    def positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        extra = {"mm_token_type_ids": batch["mm_token_type_ids"]} if "mm_token_type_ids" in names else {}
        return found(
            batch["input_ids"], image_grid_thw=batch.get("image_grid_thw"), attention_mask=batch["attention_mask"],
            **extra,
        )[0]  # fmt: skip

    return positions


@functools.cache
def _parameters(fn: Callable) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters)


def pack_groups(
    builder: InputBuilder,
    prompts: Sequence[EncodedSample],
    completions: Sequence[tuple[int, Sequence[int]]],
    rope_index: RopeIndex | None = None,
) -> PackedBatch:
    """One packed row per prompt; ``completions`` are (prompt index, token ids) in the order the outputs keep.
    Every prompt must have at least one completion. ``rope_index``: ``rope_index_of(model)``."""
    if not completions:
        raise ValueError("pack_groups needs at least one completion")
    per_prompt: list[list[int]] = [[] for _ in prompts]
    for n, (p, ids) in enumerate(completions):
        if not ids:
            raise ValueError(f"completion {n} (prompt {p}) has no tokens")
        per_prompt[p].append(n)
    if any(not members for members in per_prompt):
        raise ValueError("every prompt in a packed batch needs a completion")

    lengths = [len(e.input_ids) + sum(len(completions[n][1]) for n in members)
               for e, members in zip(prompts, per_prompt, strict=True)]  # fmt: skip
    rows, width = len(prompts), max(lengths)
    pad_id = builder.tokenizer.pad_token_id
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    segment = torch.full((rows, width), -1, dtype=torch.long)  # 0: prompt, j + 1: completion j, -1: padding
    text_position = torch.zeros((rows, width), dtype=torch.long)  # completions: their offset after the prompt

    steps = max(len(ids) for _, ids in completions)
    row = torch.zeros(len(completions), dtype=torch.long)
    index = torch.zeros((len(completions), steps), dtype=torch.long)
    targets = torch.zeros((len(completions), steps), dtype=torch.long)
    mask = torch.zeros((len(completions), steps), dtype=torch.bool)
    for r, (prompt, members) in enumerate(zip(prompts, per_prompt, strict=True)):
        end = len(prompt.input_ids)
        input_ids[r, :end] = prompt.input_ids
        segment[r, :end] = 0
        column = end
        for j, n in enumerate(members):
            ids = torch.as_tensor(list(completions[n][1]), dtype=torch.long)
            span = slice(column, column + len(ids))
            input_ids[r, span] = ids
            segment[r, span] = j + 1
            text_position[r, span] = torch.arange(1, len(ids) + 1)
            row[n] = r
            # token 0 is predicted by the prompt's last column, token t by this completion's token t - 1
            index[n, : len(ids)] = torch.cat([torch.tensor([end - 1]), torch.arange(column, column + len(ids) - 1)])
            targets[n, : len(ids)] = ids
            mask[n, : len(ids)] = True
            column += len(ids)

    # prompt positions as the plain layout has them; a completion's token t sits at (last prompt position) + 1 + t
    prompt_batch = builder.collate(list(prompts), padding_side="right")
    prompt_width = prompt_batch["input_ids"].shape[1]
    if rope_index is not None:
        prompt_positions = rope_index(prompt_batch)  # (3, R, prompt_width)
    else:
        prompt_positions = torch.arange(prompt_width).expand(1, rows, prompt_width)
    prompt_positions = prompt_positions.to(torch.long)
    axes = prompt_positions.shape[0]
    positions = torch.zeros((axes, rows, width), dtype=torch.long)
    for r, prompt in enumerate(prompts):
        end = len(prompt.input_ids)
        positions[:, r, :end] = prompt_positions[:, r, :end]
        last = prompt_positions[:, r, end - 1].max()
        completion_columns = segment[r] > 0
        positions[:, r, completion_columns] = last + text_position[r, completion_columns]

    causal = torch.ones((width, width), dtype=torch.bool).tril()
    sees = (segment[:, None, :] == 0) | (segment[:, None, :] == segment[:, :, None])  # (R, query, key)
    attention = (causal & sees).unsqueeze(1)  # padding sees padding only: no row of the mask is empty

    inputs: dict[str, torch.Tensor] = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "position_ids": positions if rope_index is not None else positions[0],
    }
    for key in ("pixel_values", "image_grid_thw"):
        if key in prompt_batch:
            inputs[key] = prompt_batch[key]
    if "mm_token_type_ids" in prompt_batch:
        types = torch.zeros((rows, width), dtype=prompt_batch["mm_token_type_ids"].dtype)
        types[:, :prompt_width] = prompt_batch["mm_token_type_ids"]
        inputs["mm_token_type_ids"] = types
    first = int(index[mask].min())
    return PackedBatch(inputs, row, index, targets, mask, first)
