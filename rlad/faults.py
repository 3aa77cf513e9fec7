"""The faults a run reports by name (not by traceback): what died or went wrong, and how to continue.

Kept free of heavy imports so the command line can catch them cheaply.
"""

from __future__ import annotations

__all__ = ["LearnerLostError", "NonFiniteError"]


class LearnerLostError(RuntimeError):
    """A learner actor died mid-run; the message names the checkpoint ``rlad train resume=`` continues from."""


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient (``grpo.max_nonfinite_steps``)."""
