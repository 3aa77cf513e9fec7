"""What a run prints: one progress bar per stage, one line per stage saying where its outputs went, errors
in full — and with ``rlad --verbose`` everything the libraries say.

Quiet by default means silencing what is known and harmless here, at its source, in this process and in
the Ray workers it starts (they inherit the environment set here; a joined cluster gets it through the
job's runtime environment, :func:`child_env`):

- DeepSpeed's "Setting accelerator to CPU" warning, when there is no CUDA (``DS_ACCELERATOR=cpu`` says so);
- the "Loading weights" / "Writing model shards" bars and info messages of transformers and huggingface_hub;
- Ray's start-up and token-generation messages.

Progress bars (:func:`progress`) are tqdm on the driver and Ray's ``tqdm_ray`` inside a Ray task or actor, so
a bar in the SFT task draws as one bar on the driver's console instead of a forwarded line per refresh.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Any

__all__ = ["child_env", "progress", "quiet_stdout", "setup", "verbose"]

_QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' loading/writing bars follow huggingface_hub's switch
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
_QUIET_LOGGERS = ("ray", "transformers", "DeepSpeed", "torch.distributed", "accelerate", "peft")


def verbose() -> bool:
    """Whether this process (or the driver that started it) was asked to print everything."""
    return os.environ.get("RLAD_VERBOSE", "") not in ("", "0")


def setup(is_verbose: bool) -> None:
    """Configure this process's console before any heavy import; its Ray workers inherit the environment."""
    if is_verbose:
        os.environ["RLAD_VERBOSE"] = "1"
    level = logging.INFO if is_verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if is_verbose:
        return
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if "DS_ACCELERATOR" not in os.environ and not _has_cuda():
        os.environ["DS_ACCELERATOR"] = "cpu"  # DeepSpeed warns when it has to guess this
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_stdout() -> contextlib.AbstractContextManager:
    """Around a library call that prints what it knows to be routine (``--verbose`` lets it through)."""
    return contextlib.nullcontext() if verbose() else contextlib.redirect_stdout(io.StringIO())


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def child_env() -> dict[str, str]:
    """The console settings a Ray worker on another node needs (``runtime_env`` env vars)."""
    keys = ("RLAD_VERBOSE", "DS_ACCELERATOR", *_QUIET_ENV)
    env = {k: os.environ[k] for k in keys if k in os.environ}
    if env.get("DS_ACCELERATOR") == "cpu":
        del env["DS_ACCELERATOR"]  # another node may have GPUs: it detects its own accelerator
    return env


def ray_logging_level() -> int:
    """The level ``ray.init`` sets on Ray's own loggers in this process."""
    return logging.INFO if verbose() else logging.ERROR


def _in_ray_worker() -> bool:
    import sys

    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


class _Quiet:
    """A bar that draws nothing (``disable``), with the part of tqdm's interface rlad uses."""

    def __init__(self, total: int | None = None, initial: int = 0) -> None:
        self.total, self.n = total, initial

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description(self, desc: str) -> None:
        pass

    def set_postfix(self, values: dict[str, str]) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RayBar:
    """Ray's ``tqdm_ray`` bar with the context-manager part of tqdm's interface."""

    def __init__(self, bar: Any, desc: str, initial: int) -> None:
        self.bar, self.desc = bar, desc
        if initial:
            bar.update(initial)

    @property
    def n(self) -> int:
        return self.bar.n

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_description(self, desc: str) -> None:
        self.bar.set_description(desc)

    def set_postfix(self, values: dict[str, str]) -> None:
        self.bar.set_description(" ".join([self.desc, *(f"{k}={v}" for k, v in values.items())]))

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> _RayBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str = "it", initial: int = 0, disable: bool = False) -> Any:
    """A progress bar that shows once on the driver's console, wherever it is created."""
    if disable:
        return _Quiet(total, initial)
    if _in_ray_worker():
        from ray.experimental.tqdm_ray import tqdm as ray_tqdm

        return _RayBar(ray_tqdm(total=total, desc=desc, unit=unit), desc, initial)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)
