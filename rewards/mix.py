"""A reward mix: which rewards, their weights and parameters -> a total plus every component.

Built from the config's ``rewards`` section, one entry per reward::

    rewards:
      format:    {weight: 1.0}
      detection: {weight: 1.0, alpha: 2.0}
      answer:    {weight: 1.0, correct: 1.0, wrong: 0.1}

``total = sum(weight * component)``. A reward with weight 0 is still computed and returned, so an
ablation without, say, the detection reward still logs detection F1. Names and parameters are checked
when the mix is built (that is, when the config loads), not at the first training step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rewards.registry import RegisteredReward, get_reward

__all__ = ["MixScores", "RewardMix", "RewardSpecError"]


class RewardSpecError(ValueError):
    """A reward entry in a config that cannot be used: bad weight, unknown parameter."""


@dataclass(frozen=True)
class MixScores:
    total: np.ndarray  # (N,) float64, the weighted sum
    components: dict[str, np.ndarray]  # reward name -> (N,) float64, unweighted

    def means(self) -> dict[str, float]:
        """Batch means, ``total`` and one entry per reward: what gets logged every step."""
        out = {"total": float(self.total.mean()) if len(self.total) else 0.0}
        out.update({k: float(v.mean()) if len(v) else 0.0 for k, v in self.components.items()})
        return out


def _check_param_type(reward: str, key: str, value: Any, default: Any) -> None:
    """A config value must have the kind of its default: boolean, integer (exactly: 100.7 is refused), number
    (an integer is a number), string or list."""
    kinds = ((bool, "a boolean"), (int, "an integer"), ((int, float), "a number"), (str, "a string"),
             ((list, tuple), "a list"))  # fmt: skip
    for kind, words in kinds:
        if isinstance(default, kind):
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
            if not ok:
                raise RewardSpecError(f"rewards.{reward}.{key} must be {words} (default {default!r}), got {value!r}")
            return


class RewardMix:
    def __init__(self, spec: Mapping[str, Mapping[str, Any] | None]):
        if not spec:
            raise RewardSpecError("the reward mix is empty: name at least one reward")
        self.weights: dict[str, float] = {}
        self.params: dict[str, dict[str, Any]] = {}
        self._rewards: dict[str, RegisteredReward] = {}
        for name, entry in spec.items():
            registered = get_reward(name)  # UnknownRewardError lists the known names
            entry = dict(entry or {})
            weight = entry.pop("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise RewardSpecError(f"rewards.{name}.weight must be a finite number, got {weight!r}")
            unknown = sorted(set(entry) - set(registered.params))
            if unknown:
                allowed = ", ".join(["weight", *registered.params]) or "weight"
                raise RewardSpecError(f"rewards.{name}: unknown parameter(s) {unknown}; allowed: {allowed}")
            for key, value in entry.items():
                _check_param_type(name, key, value, registered.params[key])
            if registered.check is not None:
                try:
                    registered.check(entry)
                except ValueError as err:
                    raise RewardSpecError(f"rewards.{name}: {err}") from err
            self.weights[name] = float(weight)
            self.params[name] = entry
            self._rewards[name] = registered

    @property
    def names(self) -> list[str]:
        return list(self._rewards)

    def score(self, completions: Sequence[str], samples: Sequence[Any]) -> MixScores:
        """Score ``completions[i]`` against ``samples[i]`` with every reward of the mix."""
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions but {len(samples)} samples")
        completions, samples = list(completions), list(samples)
        components: dict[str, np.ndarray] = {}
        total = np.zeros(len(completions), dtype=np.float64)
        for name, registered in self._rewards.items():
            values = np.asarray(registered(completions, samples, **self.params[name]), dtype=np.float64)
            if values.shape != (len(completions),):
                raise ValueError(
                    f"reward {name!r} returned {values.shape[0] if values.ndim else 'a scalar'} "
                    f"values for {len(completions)} completions"
                )
            if not np.isfinite(values).all():
                bad = int(np.flatnonzero(~np.isfinite(values))[0])
                raise ValueError(
                    f"reward {name!r} returned {values[bad]} for completion {bad}: {completions[bad][:80]!r}"
                )
            components[name] = values
            total += self.weights[name] * values
        return MixScores(total=total, components=components)
