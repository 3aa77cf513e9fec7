"""Reading JSON-lines files whose every line is one object, with errors that name ``file:line``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["json_objects"]


def json_objects(path: str | Path, error: type[Exception]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("file:line", object)`` for each non-blank line; a line that is not a JSON object raises
    ``error`` naming it. The file is read line by line (streamed, never whole)."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{where}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise error(f"{where}: expected an object, got {type(row).__name__}")
            yield where, row
