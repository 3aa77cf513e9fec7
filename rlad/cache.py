"""rlad's on-disk cache: things built once on this machine (the tiny model, generated datasets) and reused.

``built_once(name, marker, build)`` returns ``cache_root() / name``, building it first if ``marker`` (a file
inside it) is missing. The build writes into a hidden sibling folder that is renamed into place when complete,
so concurrent builders (parallel tests) and interrupted builds never leave a half-built entry behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["built_once", "cache_root"]


def cache_root() -> Path:
    """$RLAD_CACHE, or ~/.cache/rlad."""
    return Path(os.environ.get("RLAD_CACHE") or Path.home() / ".cache" / "rlad")


def built_once(name: str, marker: str, build: Callable[[Path], object]) -> Path:
    """The cache entry ``name``; ``build(folder)`` fills a new folder when the entry lacks ``marker``."""
    final = cache_root() / name
    if not (final / marker).is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=".building-") as tmp:
            build(Path(tmp) / "entry")
            try:
                os.rename(Path(tmp) / "entry", final)
            except OSError:
                if not (final / marker).is_file():  # not a concurrent builder that finished first
                    raise
    return final
