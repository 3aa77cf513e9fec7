"""Verifiable rewards for rlad: a registry of plain functions, the paper's built-ins, and the reward mix.

Add a reward: write ``fn(completion, sample, *, param=default) -> float`` in a module of this package,
decorate it with ``@reward("name")``, import the module at the end of this file (``from rewards import mine``),
and name it in a config's ``rewards``.
Out of tree: declare the function (or a module of decorated functions) under the entry point group
``rlad.rewards`` in your own package.
"""

# the public names first: a reward module imported below may itself say ``from rewards import reward``
from rewards.mix import MixScores, RewardMix, RewardSpecError
from rewards.registry import (
    ENTRY_POINT_GROUP,
    RegisteredReward,
    UnknownRewardError,
    broken_plugins,
    get_reward,
    known_rewards,
    reward,
    reward_origin,
)

# reward modules: importing one registers its @reward functions; add yours on a line of its own below
# isort: split
from rewards import builtin  # noqa: F401  (format, detection, answer)

__all__ = [
    "ENTRY_POINT_GROUP",
    "MixScores",
    "RegisteredReward",
    "RewardMix",
    "RewardSpecError",
    "UnknownRewardError",
    "broken_plugins",
    "get_reward",
    "known_rewards",
    "reward",
    "reward_origin",
]
