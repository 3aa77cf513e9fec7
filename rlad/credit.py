"""Per-block credit (``grpo.credit: block``; not in the paper): which tokens a reward's advantage reaches.

GRPO gives every token of a completion the advantage of its total reward. The completion here is three
blocks, each judged by its own reward: the detection reward judges ``<seg>``, the answer reward the
``<answer>`` and the ``<think>`` that leads to it, the format reward all of it. With one total, a right answer
also rewards the mask written before it, and the policy learns masks from the answer's reward (README,
*Why the policy does not localise*). Under ``block`` credit a token's advantage is the sum of the shares
(``rlad.grpo.component_advantages``) of the rewards that judge its block, plus those of the rewards that
judge the whole completion (``"all"``); tokens outside every block (white space between blocks, the end of
text) get only the latter. A reward declares its blocks when it is registered (``@reward(..., blocks=...)``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from rlad import mask_text
from rlad.completion import BLOCKS

__all__ = ["ALL", "block_shares", "cell_credits", "token_advantages", "token_blocks", "token_pieces"]

ALL = "all"  # the key of the rewards that judge the whole completion
_BLOCK = re.compile(rf"<({'|'.join(BLOCKS)})>.*?</\1>", re.DOTALL)


def token_pieces(decode: Callable[[list[int]], str], ids: Sequence[int]) -> list[str]:
    """The text each token adds to the completion: ``decode(ids[:k + 1])`` minus ``decode(ids[:k])``.

    Tokens decoded one by one, when that joins to the whole text (byte-level BPE, as Qwen's); prefix by prefix
    otherwise (tokenizers that drop a leading space or hold part of a character in a token).
    """
    pieces = [decode([t]) for t in ids]
    if "".join(pieces) == decode(list(ids)):
        return pieces
    texts = [""] + [decode(list(ids[: k + 1])) for k in range(len(ids))]
    return [b[len(a) :] if b.startswith(a) else b for a, b in itertools.pairwise(texts)]


def token_blocks(pieces: Sequence[str]) -> list[str | None]:
    """The block (``seg``, ``think``, ``answer``) each token's text starts in, or None outside every block.

    ``pieces``: the text of each generated token, in order; their concatenation is the completion. A block is
    its tags and what lies between them, the first of each name.

    >>> token_blocks(["<seg>", "(1, 1)", "</seg>", " ", "<answer>", "A", "</answer>"])
    ['seg', 'seg', 'seg', None, 'answer', 'answer', 'answer']
    """
    text = "".join(pieces)
    spans: dict[str, tuple[int, int]] = {}
    for m in _BLOCK.finditer(text):
        spans.setdefault(m.group(1), m.span())
    out: list[str | None] = []
    start = 0
    for piece in pieces:  # an empty piece (the end-of-text token) is in no block
        out.append(next((name for name, (a, b) in spans.items() if a <= start < b), None) if piece else None)
        start += len(piece)
    return out


def block_shares(shares: Mapping[str, float], blocks: Mapping[str, tuple[str, ...] | None]) -> dict[str, float]:
    """Reward name -> advantage share, and reward name -> blocks it judges (None: all) -> block -> advantage.

    >>> block_shares({"format": 0.1, "detection": 0.5, "answer": -0.2}, {"format": None, "detection": ("seg",),
    ...              "answer": ("think", "answer")})
    {'all': 0.1, 'seg': 0.5, 'think': -0.2, 'answer': -0.2}
    """
    out: dict[str, float] = {}
    for name, share in shares.items():
        for block in blocks.get(name) or (ALL,):
            out[block] = out.get(block, 0.0) + float(share)
    return out


def token_advantages(pieces: Sequence[str], per_block: Mapping[str, float]) -> list[float]:
    """One advantage per token: the ``all`` share plus its block's (``block_shares``)."""
    base = per_block.get(ALL, 0.0)
    return [base + (per_block.get(b, 0.0) if b else 0.0) for b in token_blocks(pieces)]


def cell_credits(pieces: Sequence[str], truth: np.ndarray, weight: float) -> list[float]:
    """Per-token credit of the ``<seg>`` mask's runs against the ``grid x grid`` ground truth (module docstring):
    ``weight * (2 p - 1)`` on the tokens that start inside a run, ``weight * (1 - 2 m)`` on the token that
    writes the closing tag's ``<``, 0 elsewhere; all 0 when the completion has no well-formed ``<seg>`` (the
    format and detection rewards judge that). A token that both ends a run and starts the closing tag gets both;
    the separators between runs get nothing.

    >>> truth = np.zeros((4, 4), bool); truth[1, 1:3] = True
    >>> cell_credits(["<seg>", "(1, 1)-(1, 2)", ",", " (3, 3)", "</seg>", "<answer>A</answer>"], truth, 1.0)
    [0.0, 1.0, 0.0, -1.0, 1.0, 0.0]
    >>> cell_credits(["<seg>", "(1, 2)", "</seg>"], truth, 0.5)
    [0.0, 0.5, 0.0]
    """
    truth = np.asarray(truth, dtype=bool)
    out = [0.0] * len(pieces)
    text = "".join(pieces)
    block = next((m for m in _BLOCK.finditer(text) if m.group(1) == "seg"), None)
    if block is None or weight == 0.0:
        return out
    opening, closing = block.start() + len("<seg>"), block.end() - len("</seg>")
    try:
        found = mask_text.runs(text[opening:closing], truth.shape[0])
    except mask_text.MaskTextError:
        return out
    named = np.zeros_like(truth)
    spans: list[tuple[int, int, float]] = []
    for run in found:
        cells = np.zeros_like(truth)
        cells[run.row, run.col_start : run.col_end + 1] = True
        right = np.count_nonzero(cells & truth & ~named)
        spans.append((opening + run.start, opening + run.end, float(right) / np.count_nonzero(cells)))
        named |= cells
    anomalous = np.count_nonzero(truth)
    missed = float(np.count_nonzero(truth & ~named)) / anomalous if anomalous else 0.0
    start = 0
    for k, piece in enumerate(pieces):
        end = start + len(piece)
        for a, b, right in spans:
            if a <= start < b:
                out[k] += float(weight * (2.0 * right - 1.0))
        if piece and start <= closing < end:
            out[k] += float(weight * (1.0 - 2.0 * missed))
        start = end
    return out
