"""The config schema: every knob of rlad, its default and its meaning, in one place.

A run's config is this schema, then a YAML file merged over it, then ``key=value`` overrides from the
command line. Unknown keys, wrong types and impossible values fail at load time with the key and the
file named, before anything starts. Each section holds the arguments of one component (``mask`` ->
``mask_text.mask_to_grid``, ``rewards`` -> ``rewards.RewardMix``); later stages add their sections here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlad.mask_text import Cover

__all__ = ["Config", "ConfigError", "MaskConfig", "load_config", "paper_rewards", "save_config", "to_yaml"]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file (or override) and the key."""


@dataclass
class MaskConfig:
    """How ground-truth pixel masks become the patch grid that ``<seg>`` describes."""

    grid: int = 24
    """Patches per side of the grid (paper: 24 on 512 px images)."""
    cover: Cover = Cover.any
    """When a patch is anomalous: ``any`` pixel of it, or an ``area`` share >= tau."""
    tau: float = 0.5
    """Share of a patch that must be anomalous under ``cover: area``; ignored under ``any``."""

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ConfigError(f"mask.grid must be >= 1, got {self.grid}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"mask.tau must be in (0, 1], got {self.tau}")


def paper_rewards() -> dict[str, Any]:
    """OmniAD's reward mix: format + detection (alpha 2) + answer (1 right, 0.1 wrong), equal weights."""
    return {
        "format": {"weight": 1.0},
        "detection": {"weight": 1.0, "alpha": 2.0},
        "answer": {"weight": 1.0, "correct": 1.0, "wrong": 0.1},
    }


@dataclass
class Config:
    seed: int = 0
    """Seed for data generation, sampling and initialisation."""
    mask: MaskConfig = field(default_factory=MaskConfig)
    rewards: dict[str, Any] = field(default_factory=paper_rewards)
    """Reward name -> {weight, parameters of that reward}. total = sum(weight * reward). A reward with
    weight 0 is still computed and logged. Names come from the reward registry (``rlad rewards``)."""


def _describe_omegaconf_error(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = getattr(err, "msg", None) or str(err)
    msg = msg.splitlines()[0]
    return f"key {key!r}: {msg}" if key else msg


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Schema defaults, then the YAML at ``path`` (if any), then ``overrides`` like ``mask.grid=8``."""
    merged: DictConfig = OmegaConf.structured(Config)
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            from_file = OmegaConf.load(path)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(from_file, DictConfig):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got a list")
        try:
            merged = OmegaConf.merge(merged, from_file)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{path}: {_describe_omegaconf_error(err)}") from err
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command-line override {item!r} is not of the form key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise ConfigError(f"command-line override {item!r}: {_describe_omegaconf_error(err)}") from err
    where = source + (f" with overrides {list(overrides)}" if overrides else "")
    try:
        config: Config = OmegaConf.to_object(merged)  # runs each section's __post_init__ checks
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {_describe_omegaconf_error(err)}") from err
    _check_rewards(config, where)
    return config


def _check_rewards(config: Config, where: str) -> None:
    from rewards import RewardMix, RewardSpecError, UnknownRewardError

    try:
        RewardMix(config.rewards)
    except (RewardSpecError, UnknownRewardError) as err:
        raise ConfigError(f"{where}: {err}") from err


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config (a run's snapshot); ``load_config`` reads it back unchanged."""
    Path(path).write_text(to_yaml(config))
