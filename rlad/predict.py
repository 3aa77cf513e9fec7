"""``rlad predict``: one question about one image — what an inspection engineer runs first.

The question is shown to the policy verbatim and must list its options as lines ``A. text``; without one, the
policy is asked the discrimination question the paper evaluates detection with ("Is there any defect in the
object?", A. Yes / B. No). A ``reference`` image (a normal part of the same kind) makes it a 1-shot prompt.
The answer is printed with the decoded ``<seg>`` mask as a grid, and drawn as an overlay PNG.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from rlad import mask_text
from rlad.completion import parse_completion
from rlad.config import Config, ConfigError
from rlad.sample import VerifiableSample

__all__ = ["parse_options", "predict"]

DEFAULT_QUESTION = "Is there any defect in the object?\nA. Yes.\nB. No."
_OPTION = re.compile(r"^\s*([A-Z])[.)]\s+(.+?)\s*$")


def parse_options(question: str) -> dict[str, str]:
    """The ``A. text`` lines of a question, in order; ConfigError when there are none."""
    options = {m.group(1): m.group(2) for line in question.splitlines() if (m := _OPTION.match(line))}
    if not options:
        raise ConfigError(
            f"--question {question[:60]!r} lists no options: write them on their own lines, e.g. "
            "'Is there any defect?\\nA. Yes\\nB. No'"
        )
    return options


def predict(
    checkpoint: Path, image: str | Path, config: Config, question: str | None = None, reference: str | None = None
) -> dict[str, Any]:
    """Greedy answer of the policy at ``checkpoint``; returns the completion, its parts and the decoded mask."""
    import dataclasses

    from rollout.worker import make_engine

    for what, p in (("image", image), ("reference image", reference)):
        if p is not None and not Path(p).is_file():
            raise ConfigError(f"{what} {p} does not exist")
    question = question or DEFAULT_QUESTION
    options = parse_options(question)
    sample = VerifiableSample(
        sample_id=Path(image).name,
        question=question,
        options=options,
        answer=next(iter(options)),  # unknown; nothing is scored, the overlay shows no "right" answer
        mask=np.zeros((config.mask.grid, config.mask.grid), bool),
        anomalous=False,
        image=str(image),
        reference=str(reference) if reference else None,
    )
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, shots=1 if reference else 0))
    completion = make_engine(config, str(checkpoint), standalone=True).generate([sample], n=1, greedy=True)[0]
    parsed = parse_completion(completion.text)
    patches = mask_text.decode_or_none(parsed.seg, config.mask.grid) if "seg" in config.output.blocks else None
    return {"sample": sample, "completion": completion.text, "parsed": parsed, "patches": patches}
