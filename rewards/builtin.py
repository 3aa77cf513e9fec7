"""The paper's three verifiable rewards (OmniAD section 3.2): format, detection, answer.

Each reads the completion through :func:`rlad.completion.parse_completion` and returns a float for any
string. Hand-computed values are in ``tests/unit/test_rewards.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rewards.registry import reward
from rlad import mask_text
from rlad.completion import BLOCKS, parse_completion
from rlad.sample import VerifiableSample

__all__ = ["answer", "detection", "detection_score", "format_reward"]


def _check_blocks(params: dict) -> None:
    blocks = list(params.get("blocks", BLOCKS))
    unknown = [b for b in blocks if b not in BLOCKS]
    if unknown or not blocks or len(set(blocks)) != len(blocks):
        raise ValueError(f"blocks must be distinct names among {list(BLOCKS)}, got {blocks}")


@reward("format", check=_check_blocks)
def format_reward(completion: str, sample: VerifiableSample, *, blocks: Sequence[str] = BLOCKS) -> float:
    """1.0 if the completion is exactly the ``blocks`` in order (white space between), else 0.0.

    ``blocks`` is the paper's ``seg, think, answer``; the reasoning ablations set ``[think, answer]``,
    ``[seg, answer]`` or ``[answer]``.

    >>> format_reward("<seg></seg> <think>ok</think>\\n<answer>A</answer>", None)
    1.0
    """
    return 1.0 if parse_completion(completion).is_well_formed(tuple(blocks)) else 0.0


def detection_score(pred: np.ndarray, truth: np.ndarray, alpha: float, found: float = 0.0) -> float:
    """The detection rule on patch masks: 1 if both empty, 0 if only the truth is empty, else alpha * F1,
    plus ``found`` when the truth is not empty and the prediction is not either.

    F1 = 2|P∩G| / (|P| + |G|) over patches: P predicted, G ground truth. ``found`` is 0 in the paper.
    """
    n_truth = int(np.count_nonzero(truth))
    n_pred = int(np.count_nonzero(pred))
    if n_truth == 0:
        return 1.0 if n_pred == 0 else 0.0
    hits = int(np.count_nonzero(pred & truth))
    return alpha * 2.0 * hits / (n_pred + n_truth) + (found if n_pred else 0.0)


@reward("detection", blocks=("seg",))
def detection(completion: str, sample: VerifiableSample, *, alpha: float = 2.0, found: float = 0.0) -> float:
    """Detection accuracy of the ``<seg>`` patch mask against the sample's ground truth.

    A missing, ambiguous or malformed ``<seg>`` earns 0, on normal images too: junk is never "no anomaly".

    ``found`` (0 in the paper) pays a non-empty mask on an anomalous image, whatever its F1: the image-level
    half of detection. Under the paper's rule a policy that cannot yet tell the two labels apart, and whose
    masks score F1 < 1 / alpha, earns more by never writing a mask (1 on every normal image) than by writing
    one (alpha * F1 on the anomalous ones); ``found`` = 1 pays both labels' right call alike (README, Rewards).
    """
    pred = mask_text.decode_or_none(parse_completion(completion).seg, sample.grid)
    return 0.0 if pred is None else detection_score(pred, sample.mask, alpha, found)


@reward("answer", blocks=("think", "answer"))
def answer(completion: str, sample: VerifiableSample, *, correct: float = 1.0, wrong: float = 0.1) -> float:
    """``correct`` if the letter in ``<answer>`` is the right option, ``wrong`` if it is another option, else 0.

    The paper gives 0.1 to every non-correct output; here a missing, empty or non-option answer earns 0,
    so an empty ``<answer></answer>`` is never rewarded.
    """
    letter = parse_completion(completion).answer_letter
    if letter is None or letter not in sample.options:
        return 0.0
    return correct if letter == sample.answer else wrong
