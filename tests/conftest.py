"""Shared test helpers: small verifiable samples built by hand."""

import numpy as np
import pytest

from rlad.sample import VerifiableSample


def make_sample(patches=(), grid=4, answer="A", options="AB", sample_id="s0", anomalous=None, subtask=""):
    """A sample whose ground-truth grid mask marks ``patches`` [(row, col), ...]."""
    mask = np.zeros((grid, grid), bool)
    for r, c in patches:
        mask[r, c] = True
    return VerifiableSample(
        sample_id=sample_id,
        question="Is there any defect in the object?",
        options={k: f"option {k}" for k in options},
        answer=answer,
        mask=mask,
        anomalous=bool(mask.any()) if anomalous is None else anomalous,
        subtask=subtask,
    )


@pytest.fixture
def sample_factory():
    return make_sample
