"""Every reward, and the mix, returns a finite float for any string and never raises; the metrics of an
evaluation and of a training step are computed for any string too, in bounded time."""

import math
import random
import time

import pytest
from conftest import make_sample
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import RewardMix
from rlad.completion import BLOCKS
from rlad.config import paper_rewards
from rlad.evaluate import evaluation_metrics
from rlad.scoring import ScoredRecord, summarise

MIX = RewardMix(paper_rewards())
SAMPLES = [make_sample([(1, 1), (1, 2)], grid=24, answer="B", options="ABCD"), make_sample([], grid=24)]

TAGS = ["<seg>", "</seg>", "<think>", "</think>", "<answer>", "</answer>"]
PIECES = [*TAGS, "(1, 2)", "-", "(1, 3)", ", ", "A", "B", " ", "\n", "é", "\x00", "<", ">", "(", ")", "99", "\ud7ff"]

ADVERSARIAL = [
    "",
    " ",
    "\x00\xff\ufffd" * 100,
    bytes(range(256)).decode("latin-1"),
    "x" * 1_000_000,
    "<seg>" + "(1, 2)-(1, 3), " * 100_000 + "</seg><think>x</think><answer>B</answer>",  # ~1.5 MB seg
    "<seg>" + ", ".join(f"({r % 24}, {c % 24})" for r in range(100) for c in range(100)) + "</seg>",  # 10k runs
    "<seg>" * 10_000 + "</seg>" * 10_000,
    "<seg></seg><think></think><answer></answer>",
    "<seg><think><answer>B</answer></think></seg>",  # nested
    "<answer>B</answer><think>x</think><seg></seg>",  # wrong order
    "<seg></seg><think>x</think><answer>B</answer><answer>B</answer>",  # two answers
    "<seg></seg><think>x</think><answer>B",  # unbalanced
    "<seg>(1, 1)-(1, 2)</seg><think>" + "é😀" * 50_000 + "</think><answer>B</answer>",
    "<seg>(" + "9" * 5000 + ", 1)</seg><think>x</think><answer>B</answer>",
    "<seg>" + "(" * 100_000 + "</seg>",
    "<SEG></SEG><THINK></THINK><ANSWER>B</ANSWER>",
    "<seg>\u0661, \u0662</seg><think>x</think><answer>\uff22</answer>",  # other scripts' digits, full-width B
]


def check(texts):
    """Every reward finite, and the metrics of ``rlad eval`` and of a training step computed, for each sample."""
    for sample in SAMPLES:
        scores = MIX.score(texts, [sample] * len(texts))
        for name, values in [("total", scores.total), *scores.components.items()]:
            assert all(isinstance(v, float) and math.isfinite(v) for v in values.tolist()), name
        records = [ScoredRecord(t, sample, "fuzz") for t in texts]
        rows = [{"total": float(scores.total[i])} for i in range(len(texts))]
        for blocks in (BLOCKS, ("think", "answer")):
            metrics = evaluation_metrics(records, rows, blocks)
            assert 0.0 <= metrics["format_rate"] <= 1.0 and metrics["n"] == len(texts)
        assert summarise(records, rows)["fuzz"]["n"] == len(texts)


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_completions_score_quickly_without_raising(text):
    start = time.perf_counter()
    check([text])
    # Not a speed target (see experiments/bench_rewards.py): a guard against catastrophic backtracking.
    assert time.perf_counter() - start < 5.0


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40).map("".join))
def test_tag_soup(text):
    check([text])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_unicode(text):
    check([text, f"<seg>{text}</seg><think>{text}</think><answer>{text}</answer>"])


def test_random_binary_junk():
    rng = random.Random(0)
    texts = [
        bytes(rng.randrange(256) for _ in range(rng.randrange(2000))).decode("utf-8", "replace") for _ in range(200)
    ]
    check(texts)
