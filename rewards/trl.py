"""rlad's verifiable rewards as TRL reward functions, so a TRL user trains with them in TRL's own GRPOTrainer.

    from rewards.trl import sample_column, trl_rewards

    funcs, weights = trl_rewards(config.rewards)            # one function per reward of the mix
    rows = [{"prompt": ..., "rlad_sample": sample_column(s)} for s in samples]
    GRPOTrainer(model=..., reward_funcs=funcs, args=GRPOConfig(..., reward_weights=weights),
                train_dataset=Dataset.from_list(rows))

Each function returns one reward of the mix, unweighted, with the mix's parameters, exactly as rlad scores it
(``rewards.mix.RewardMix``); TRL multiplies by ``reward_weights`` and sums, which is rlad's total. TRL logs
each under the reward's name. The ground truth travels in the dataset column ``rlad_sample`` (a JSON string:
TRL hands every dataset column to the reward functions). Completions may be plain text or TRL's
conversational form (a list of messages; the last one's ``content``). Needs ``pip install rlad[trl]``; rlad
itself never imports TRL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from rewards.mix import RewardMix

__all__ = ["SAMPLE_COLUMN", "sample_column", "trl_rewards"]

SAMPLE_COLUMN = "rlad_sample"


def sample_column(sample: Any) -> str:
    """The dataset value that carries ``sample`` (a ``VerifiableSample``) to the reward functions."""
    return json.dumps(sample.to_record())


def _text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a TRL completion is a string or a list of messages, got {type(completion).__name__}")


def trl_rewards(spec: Mapping[str, Mapping[str, Any] | None]) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """TRL ``reward_funcs`` and ``reward_weights`` for the config's ``rewards`` section (checked here, as at
    config load: an unknown reward or parameter fails now, not at TRL's first step)."""
    from rlad.sample import VerifiableSample

    mix = RewardMix(spec)
    funcs = []
    for name in mix.names:
        single = RewardMix({name: {**mix.params[name], "weight": 1.0}})

        def score(prompts: list, completions: list, _name: str = name, _mix: RewardMix = single, **columns: Any):
            if SAMPLE_COLUMN not in columns:
                raise KeyError(f"the dataset has no {SAMPLE_COLUMN!r} column: add sample_column(sample) to each row")
            samples = [VerifiableSample.from_record(json.loads(s)) for s in columns[SAMPLE_COLUMN]]
            texts = [_text(c) for c in completions]
            return _mix.score(texts, samples).components[_name].tolist()

        score.__name__ = name  # TRL logs rewards/<name>/mean
        funcs.append(score)
    return funcs, [mix.weights[n] for n in mix.names]
