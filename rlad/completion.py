"""The one parser of policy output: ``<seg>…</seg><think>…</think><answer>…</answer>``.

Every reward and every metric reads completions through :func:`parse_completion`, so "what the policy
said" has a single definition. Rules (SPEC.md):

- a block (seg, think or answer) is read only when its opening and closing tag each occur exactly once,
  opening first; two ``<answer>`` blocks, a nested or an unbalanced tag leave that block unread (``None``);
- :attr:`ParsedCompletion.layout` is the order of the blocks when the text is nothing but blocks separated
  by white space (each tag pair once, no tag inside another block, nothing outside); otherwise ``None``.
  The format reward compares it with the expected layout, so ablations without ``<seg>`` or ``<think>``
  use the same parser with another expected layout;
- the answer letter is read only from ``<answer>``, and only when that block holds exactly one capital
  letter (white space around it allowed). An empty ``<answer></answer>`` has no letter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["BLOCKS", "ParsedCompletion", "parse_completion"]

BLOCKS = ("seg", "think", "answer")  # the paper's output layout, in order

_TAG = re.compile(r"<(/?)(seg|think|answer)>")
_LETTER = re.compile(r"\s*([A-Z])\s*")


@dataclass(frozen=True, slots=True)
class ParsedCompletion:
    seg: str | None  # text inside <seg>…</seg>, or None when the block is missing or ambiguous
    think: str | None
    answer: str | None
    layout: tuple[str, ...] | None  # block order when the whole text is well-formed blocks, else None

    @property
    def answer_letter(self) -> str | None:
        """The single capital letter inside <answer>, or None (missing, empty, several letters, words)."""
        if self.answer is None:
            return None
        m = _LETTER.fullmatch(self.answer)
        return m.group(1) if m else None

    def is_well_formed(self, blocks: tuple[str, ...] = BLOCKS) -> bool:
        """True when the text is exactly ``blocks`` in this order, each once, white space between."""
        return self.layout == tuple(blocks)


def parse_completion(text: str) -> ParsedCompletion:
    """Split a completion into its blocks; never raises for any string.

    >>> p = parse_completion("<seg></seg><think>clean surface</think><answer>B</answer>")
    >>> p.seg, p.answer_letter, p.layout
    ('', 'B', ('seg', 'think', 'answer'))
    """
    if not isinstance(text, str):
        raise TypeError(f"completion must be str, got {type(text).__name__}")
    tags = [(m.start(), m.end(), m.group(1) == "/", m.group(2)) for m in _TAG.finditer(text)]

    contents: dict[str, str | None] = {}
    for name in BLOCKS:
        opens = [t for t in tags if t[3] == name and not t[2]]
        closes = [t for t in tags if t[3] == name and t[2]]
        if len(opens) == 1 and len(closes) == 1 and opens[0][1] <= closes[0][0]:
            contents[name] = text[opens[0][1] : closes[0][0]]
        else:
            contents[name] = None

    return ParsedCompletion(
        seg=contents["seg"], think=contents["think"], answer=contents["answer"], layout=_layout(text, tags)
    )


def _layout(text: str, tags: list[tuple[int, int, bool, str]]) -> tuple[str, ...] | None:
    """Block names in order if tags come as open/close pairs, each name once, only white space outside."""
    if not tags or len(tags) % 2:
        return None
    names: list[str] = []
    outside_from = 0  # start of the stretch of text that lies outside every block
    for (o_start, _, o_close, o_name), (_, c_end, c_close, c_name) in zip(tags[::2], tags[1::2], strict=True):
        if o_close or not c_close or o_name != c_name or o_name in names:
            return None
        if text[outside_from:o_start].strip():
            return None
        names.append(o_name)
        outside_from = c_end
    if text[outside_from:].strip():
        return None
    return tuple(names)
