"""Per-block credit (``grpo.credit: block``; not in the paper): which tokens a reward's advantage reaches.

GRPO gives every token of a completion the advantage of its total reward. The completion here is three
blocks, each judged by its own reward: the detection reward judges ``<seg>``, the answer reward the
``<answer>`` and the ``<think>`` that leads to it, the format reward all of it. With one total, a right answer
also rewards the mask written before it, and the policy learns masks from the answer's reward (README,
*Why the policy does not localise*). Under ``block`` credit a token's advantage is the sum of the shares
(``rlad.grpo.component_advantages``) of the rewards that judge its block, plus those of the rewards that
judge the whole completion (``"all"``); tokens outside every block (white space between blocks, the end of
text) get only the latter. A reward declares its blocks when it is registered (``@reward(..., blocks=...)``).

Per-run credit (``grpo.cell_credit``; not in the paper) adds a verifier's judgement of each decision inside
``<seg>`` to those advantages (``cell_credits``), by one of three rules (``grpo.cell_credit_rule``):

- ``gain``: the tokens of each run the policy wrote get ``w`` times what that run added to the mask's score
  Φ — the detection rule with alpha 1 (``rewards.builtin.detection_score``): its patch F1 against the truth, or
  for an image without a defect 1 while the mask is empty and 0 after.
  The credits of a mask add up to ``w (Φ(mask) - Φ(empty))``: the detection reward's F1, handed out run by
  run (reward shaping by a potential), so a right run is paid where it was written and a wrong one charged.
- ``relative``: the ``gain`` credits less their mean over the mask's runs, so a mask's credits add up to 0 and
  the group advantage alone judges the whole mask; the credit says which of its runs did better than its
  average. On an image without a defect every run is equally wrong: no credit.
- ``precision``: the tokens of a run get ``w (2 p - 1)``, p the share of its patches that are anomalous and
  not named before, and the token that closes the mask ``w (1 - 2 m)``, m the share of anomalous patches left
  unnamed (``+w`` for an image with no defect). Measured: it shrinks the masks (README).

The group advantage says which completion was better; this says which of its runs were. A group whose
completions all wrote the same mask carries no GRPO signal, but its runs still carry this one.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from rewards.builtin import detection_score
from rlad import mask_text
from rlad.completion import BLOCKS, parse_completion

__all__ = ["ALL", "block_shares", "cell_credits", "token_advantages", "token_blocks", "token_pieces"]

ALL = "all"  # the key of the rewards that judge the whole completion
RULES = ("gain", "relative", "precision")  # grpo.cell_credit_rule
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


def cell_credits(pieces: Sequence[str], truth: np.ndarray, weight: float, rule: str = "gain") -> list[float]:
    """Per-token credit of the ``<seg>`` mask's runs against the ``grid x grid`` ground truth (module docstring):
    the run's credit on the tokens that start inside it, under ``precision`` also the close's on the token that
    writes the closing tag's ``<``, 0 elsewhere; all 0 where the detection reward reads no mask (no ``<seg>``
    block, more than one, or a malformed mask: the format and detection rewards judge that). A token that both
    ends a run and starts the closing tag gets both; the separators between runs get nothing.

    >>> truth = np.zeros((4, 4), bool); truth[1, 1:3] = True
    >>> pieces = ["<seg>", "(1, 1)-(1, 2)", ",", " (3, 3)", "</seg>", "<answer>A</answer>"]
    >>> [round(c, 6) for c in cell_credits(pieces, truth, 1.0)]  # F1 0 -> 1 -> 2 * 2 / (3 + 2) = 0.8
    [0.0, 1.0, 0.0, -0.2, 0.0, 0.0]
    >>> [round(c, 6) for c in cell_credits(pieces, truth, 1.0, "relative")]  # gains 1, -0.2 less their mean 0.4
    [0.0, 0.6, 0.0, -0.6, 0.0, 0.0]
    >>> cell_credits(pieces, truth, 1.0, "precision")
    [0.0, 1.0, 0.0, -1.0, 1.0, 0.0]
    """
    if rule not in RULES:
        raise ValueError(f"cell credit rule {rule!r}: one of {', '.join(map(repr, RULES))}")
    truth = np.asarray(truth, dtype=bool)
    out = [0.0] * len(pieces)
    text = "".join(pieces)
    if weight == 0.0 or parse_completion(text).seg is None:  # no credit where the detection reward reads no mask
        return out
    block = next(m for m in _BLOCK.finditer(text) if m.group(1) == "seg")  # well-formed: the one <seg> block
    opening, closing = block.start() + len("<seg>"), block.end() - len("</seg>")
    try:
        found = mask_text.runs(text[opening:closing], truth.shape[0])
    except mask_text.MaskTextError:
        return out
    named = np.zeros_like(truth)
    spans: list[tuple[int, int, float]] = []  # each run's characters and credit
    for run in found:
        cells = np.zeros_like(truth)
        cells[run.row, run.col_start : run.col_end + 1] = True
        if rule in ("gain", "relative"):
            credit = detection_score(named | cells, truth, 1.0) - detection_score(named, truth, 1.0)
        else:
            credit = 2.0 * np.count_nonzero(cells & truth & ~named) / np.count_nonzero(cells) - 1.0
        spans.append((opening + run.start, opening + run.end, float(weight * credit)))
        named |= cells
    if rule == "relative" and spans:
        mean = sum(c for _, _, c in spans) / len(spans) if truth.any() else None
        spans = [(a, b, c - mean if mean is not None else 0.0) for a, b, c in spans]
    close = 0.0
    if rule == "precision":
        anomalous = np.count_nonzero(truth)
        close = float(weight * (1.0 - 2.0 * np.count_nonzero(truth & ~named) / anomalous)) if anomalous else weight
    start = 0
    for k, piece in enumerate(pieces):
        end = start + len(piece)
        out[k] += sum(credit for a, b, credit in spans if a <= start < b)
        if piece and start <= closing < end:
            out[k] += close
        start = end
    return [float(x) for x in out]
