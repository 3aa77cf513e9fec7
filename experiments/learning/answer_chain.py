"""Where a defect question's answer is lost: in what the policy saw, in carrying it to the answer, or in the letter.

    python experiments/learning/answer_chain.py COMPLETIONS.jsonl [...] [--against OTHER.jsonl ...]

The SFT target's think text (``rlad.data.questions.sft_target``) answers a defect question in steps: it first
states what it sees ("There is a small dark line mark in the top left of the image … it is a scratch"), then
names the answer's text and letter ("The answer is top left, option A."), then the ``<answer>`` block repeats the
letter. For Defect Classification (``cls``), Localization (``loc``) and Description (``des``) this script follows
each completion of ``rlad eval``'s ``completions.jsonl`` along those steps (``rlad.data.questions.think_claims``)
and prints, per file and as mean ± 95 % CI over files, the share of the subtask's questions where

- ``seen``: the think's own claim (the kind, the region, the look) is the right option's text;
- ``carried``: the answer text the think names is its own claim (the claim made it across the think);
- ``letter``: the letter the think names stands for that text among the question's options;
- ``acc``: the ``<answer>`` letter is right (the subtask's accuracy);

and, for Description, which part of the look the think's claim gets right: ``des_size``, ``des_colour``,
``des_shape`` (a claim that is not "a SIZE COLOUR SHAPE mark" counts against all three).

Were the think consistent and the ``<answer>`` its letter, ``acc`` would be ``seen``: ``seen`` is what the policy
perceives, ``carried`` and ``letter`` how consistently the think reads it out. ``acc`` near ``seen`` while ``letter``
is low means the letter is a second readout of the same perception rather than a copy of the think's text.
A completion without the claim counts against ``seen`` and ``carried``. ``--against``: the same seeds under
another recipe, paired (``per_file.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import per_file  # noqa: E402

from rlad.completion import parse_completion  # noqa: E402
from rlad.data.questions import LOOK, think_claims  # noqa: E402
from rlad.scoring import ScoredRecord  # noqa: E402

CLAIM_OF = {"Defect Classification": ("cls", "kind"), "Defect Localization": ("loc", "region"),
            "Defect Description": ("des", "look")}  # fmt: skip
"""Each defect subtask's column prefix, and the think's claim that answers it."""
STEPS = ("seen", "carried", "letter", "acc")
LOOK_PARTS = ("size", "colour", "shape")
COLUMNS = (*(f"{prefix}_{step}" for prefix, _ in CLAIM_OF.values() for step in STEPS),
           *(f"des_{part}" for part in LOOK_PARTS))  # fmt: skip


def look_parts(claim: str | None, right: str) -> dict[str, bool]:
    """Which parts of a claimed look (``rlad.data.questions.LOOK``) are the right answer's."""
    said, truth = LOOK.fullmatch(claim or ""), LOOK.fullmatch(right)
    return {part: bool(said and truth and said[part] == truth[part]) for part in LOOK_PARTS}


def answer_chain(records: Iterable[ScoredRecord]) -> dict[str, float]:
    """Per defect subtask, the share of its questions passing each step (``STEPS``), and ``n``: their number."""
    hits = {column: 0 for column in COLUMNS}
    asked = dict.fromkeys(CLAIM_OF, 0)
    for record in records:
        sample = record.sample
        if sample.subtask not in CLAIM_OF:
            continue
        prefix, claim_name = CLAIM_OF[sample.subtask]
        asked[sample.subtask] += 1
        parsed = parse_completion(record.completion)
        claims = think_claims(parsed.think or "")
        claim, said = claims.get(claim_name), claims.get("answer_text")
        right = sample.options[sample.answer].rstrip(".")
        hits[f"{prefix}_seen"] += claim == right
        hits[f"{prefix}_carried"] += claim is not None and said == claim
        named = sample.options.get(claims.get("answer_letter", ""))
        hits[f"{prefix}_letter"] += said is not None and named is not None and named.rstrip(".") == said
        hits[f"{prefix}_acc"] += parsed.answer_letter == sample.answer
        if prefix == "des":
            for part, hit in look_parts(claim, right).items():
                hits[f"des_{part}"] += hit
    missing = [subtask for subtask, n in asked.items() if n == 0]
    if missing:
        raise ValueError(f"no questions of {', '.join(missing)} in these rows")
    shares = {f"{prefix}_{step}": hits[f"{prefix}_{step}"] / asked[subtask]
              for subtask, (prefix, _) in CLAIM_OF.items() for step in STEPS}  # fmt: skip
    looks = {f"des_{part}": hits[f"des_{part}"] / asked["Defect Description"] for part in LOOK_PARTS}
    return {"n": sum(asked.values())} | shares | looks


if __name__ == "__main__":
    per_file.main(__doc__, answer_chain, COLUMNS)
