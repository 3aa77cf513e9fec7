"""Reward registry: a name -> plain function table, filled by a decorator and by entry points.

A reward is ``fn(completion: str, sample: VerifiableSample, **params) -> float``; its keyword-only
parameters with defaults are what a config may set beside its weight. A batched reward takes
``(completions: Sequence[str], samples: Sequence[VerifiableSample], **params) -> Sequence[float]`` and is
registered with ``batched=True`` (useful when a reward calls a model or vectorises well).

Third-party packages add rewards without editing rlad by declaring an entry point in the group
``rlad.rewards``; the entry point names either a module (importing it runs its ``@reward`` decorators)
or a function (registered under the entry point's name). Entry points are loaded once, on the first
lookup of a name not registered in-tree. A plugin that fails to import is named (``broken_plugins``, a
warning, the unknown-name error) and the others still load. Nothing is ever imported from a string found in a
data file.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from rlad.completion import BLOCKS

__all__ = [
    "ENTRY_POINT_GROUP",
    "RegisteredReward",
    "UnknownRewardError",
    "broken_plugins",
    "get_reward",
    "known_rewards",
    "reward",
    "reward_origin",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rlad.rewards"


class UnknownRewardError(KeyError):
    """A reward name that neither rlad nor an installed plugin registers."""

    def __str__(self) -> str:  # KeyError's own str() adds quotes around the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class RegisteredReward:
    name: str
    fn: Callable[..., Any]
    batched: bool
    params: dict[str, Any]  # keyword-only parameter -> default value, the knobs a config may set
    check: Callable[[dict[str, Any]], None] | None = None  # raises ValueError on bad parameter values
    blocks: tuple[str, ...] | None = None  # the completion blocks it judges (grpo.credit block); None: all of it

    def __call__(self, completions: list[str], samples: list[Any], **params: Any) -> list[float]:
        """Score a batch whatever the function's own form."""
        if self.batched:
            return list(self.fn(completions, samples, **params))
        return [self.fn(c, s, **params) for c, s in zip(completions, samples, strict=True)]


_REGISTRY: dict[str, RegisteredReward] = {}
_entry_points_loaded = False
_BROKEN: dict[str, str] = {}  # entry point "name = value" -> why it did not load
_PLUGIN_OF: dict[str, str] = {}  # reward name -> the entry point "name = value (package P)" that registered it


def reward(
    name: str,
    *,
    batched: bool = False,
    check: Callable[[dict[str, Any]], None] | None = None,
    blocks: tuple[str, ...] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the reward ``name``. Parameters a config may set must be keyword-only with defaults.

    ``check(params)``, if given, runs when a config naming this reward loads and raises ValueError for
    parameter values the reward cannot use. ``blocks`` names the completion blocks (``seg``, ``think``,
    ``answer``) whose tokens this reward's advantage reaches under ``grpo.credit: block``; None (the default)
    means every token, as in GRPO.

    >>> @reward("says_yes")
    ... def says_yes(completion, sample, *, bonus: float = 1.0) -> float:
    ...     return bonus if "yes" in completion else 0.0
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.fn is not fn:
            raise ValueError(
                f"reward {name!r} is already registered by {existing.fn.__module__}.{existing.fn.__qualname__}"
            )
        if blocks is not None and (not blocks or any(b not in BLOCKS for b in blocks)):
            raise ValueError(f"reward {name!r}: blocks must name some of {', '.join(BLOCKS)}, got {blocks!r}")
        _REGISTRY[name] = RegisteredReward(
            name=name, fn=fn, batched=batched, params=_config_params(name, fn), check=check,
            blocks=None if blocks is None else tuple(blocks),
        )  # fmt: skip
        return fn

    return register


def _config_params(name: str, fn: Callable[..., Any]) -> dict[str, Any]:
    sig = inspect.signature(fn)
    positional = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 2:
        raise TypeError(
            f"reward {name!r}: takes (completion, sample) positionally, found {[p.name for p in positional]}"
        )
    params = {}
    for p in sig.parameters.values():
        if p.kind is p.KEYWORD_ONLY:
            if p.default is p.empty:
                raise TypeError(f"reward {name!r}: keyword parameter {p.name!r} needs a default")
            params[p.name] = p.default
    return params


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    _BROKEN.clear()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        plugin = f"{ep.name} = {ep.value}"
        if ep.dist is not None:
            plugin += f" (package {ep.dist.name})"
        before = set(_REGISTRY)
        try:
            loaded = ep.load()
            if callable(loaded) and not inspect.ismodule(loaded) and ep.name not in _REGISTRY:
                reward(ep.name)(loaded)
            _PLUGIN_OF.update(dict.fromkeys(set(_REGISTRY) - before, plugin))
        except Exception as err:  # a broken plugin must not take the others (or rlad) down with it
            _BROKEN[plugin] = f"{type(err).__name__}: {err}"
            log.warning("reward plugin %s did not load, its rewards are unavailable: %s", plugin, _BROKEN[plugin])


def reward_origin(name: str) -> str:
    """Where the reward ``name`` comes from, for a reader who must install it: rlad's own ``rewards``
    package (a module of it, when someone added one), or the plugin's entry point and package."""
    fn = get_reward(name).fn
    if name in _PLUGIN_OF:
        return f"plugin: entry point {_PLUGIN_OF[name]}"
    if fn.__module__ == "rewards.builtin":
        return "built into rlad"
    return f"module {fn.__module__} (function {fn.__qualname__})"


def broken_plugins() -> dict[str, str]:
    """Entry points of the ``rlad.rewards`` group that failed to load -> the error, after the first lookup."""
    _load_entry_points()
    return dict(_BROKEN)


def get_reward(name: str) -> RegisteredReward:
    """The reward registered as ``name``; :class:`UnknownRewardError` lists the known names otherwise."""
    if name not in _REGISTRY:
        _load_entry_points()
    if name not in _REGISTRY:
        known = known_rewards()
        close = difflib.get_close_matches(name, known, n=1)
        message = f"unknown reward {name!r}"
        if close:
            message += f" (did you mean {close[0]!r}?)"
        message += f"; known rewards: {', '.join(known)}"
        if _BROKEN:
            message += "; plugins that failed to load: " + "; ".join(f"{k}: {v}" for k, v in _BROKEN.items())
        raise UnknownRewardError(message)
    return _REGISTRY[name]


def known_rewards() -> list[str]:
    """Every registered name, in-tree and from entry points, sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)
