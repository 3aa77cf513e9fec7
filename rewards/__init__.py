"""Verifiable rewards for rlad: a registry of plain functions, the paper's built-ins, and the reward mix.

Add a reward: write ``fn(completion, sample, *, param=default) -> float`` in a module of this package,
decorate it with ``@reward("name")``, import the module below, and name it in a config's ``rewards``.
Out of tree: declare the function (or a module of decorated functions) under the entry point group
``rlad.rewards`` in your own package.
"""

from rewards import builtin  # noqa: F401  (registers format, detection, answer)
from rewards.mix import MixScores, RewardMix, RewardSpecError
from rewards.registry import ENTRY_POINT_GROUP, RegisteredReward, UnknownRewardError, get_reward, known_rewards, reward

__all__ = [
    "ENTRY_POINT_GROUP",
    "MixScores",
    "RegisteredReward",
    "RewardMix",
    "RewardSpecError",
    "UnknownRewardError",
    "get_reward",
    "known_rewards",
    "reward",
]
