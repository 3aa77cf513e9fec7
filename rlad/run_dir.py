"""The run folder: its layout named once, written atomically, and by one process at a time.

Layout (``train.run_dir``)::

    config.yaml            the resolved config            sft/              the SFT stage (its final/)
    checkpoints/step-N/    learner state + state.json     replay/           the replay store (Parquet parts)
    metrics.jsonl          one row per GRPO step          tensorboard/      TensorBoard events
    eval/                  held-out completions           final/            the trained policy
    report.json            held-out rows, where things are adapters/        LoRA adapters per version
    .lock                  held by the one writing process

Atomic writes: a file through a sibling temporary and a rename (:func:`write_text_atomic`); a folder built
aside and renamed into place (:func:`atomic_folder`). A reader — or a resume after a crash — sees the old
thing or the new one, never half of one; :func:`last_checkpoint` finds the newest *complete* checkpoint.

One writer: two ``rlad train`` processes on one run folder (a run and, by mistake, ``rlad train resume=``
of the same folder) each log, store and checkpoint the same steps: ``metrics.jsonl`` then holds steps twice,
the replay store holds every group twice, and one of them dies renaming a checkpoint the other just wrote.
So a run holds an OS lock on ``<run_dir>/.lock`` (``fcntl.flock``) for as long as it runs, and a second
process is refused before it touches anything, with the holder named. The OS drops the lock when the holder
exits however it exits — SIGKILL included — so a crashed run leaves no stale lock: its folder can be
resumed at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "LOCK_NAME",
    "RunFolderBusyError",
    "atomic_folder",
    "check_run_dir",
    "checkpoint_dir",
    "complete_checkpoints",
    "hold_run_dir",
    "last_checkpoint",
    "partial_path",
    "resume_config",
    "run_snapshot",
    "save_checkpoint",
    "set_aside_replay_parts",
    "write_text_atomic",
]

LOCK_NAME = ".lock"
SNAPSHOT_NAME = "config.yaml"


def run_snapshot(run_dir: str | Path) -> Path:
    """The resolved config a run wrote when it started; ConfigError when ``run_dir`` holds none (it is not a
    run folder, so there is nothing to resume)."""
    from rlad.config import ConfigError

    snapshot = Path(run_dir) / SNAPSHOT_NAME
    if not snapshot.is_file():
        raise ConfigError(f"resume={run_dir}: not a run folder (no {snapshot})")
    return snapshot


def resume_config(run_dir: str | Path, config_file: str | Path | None = None, overrides: Sequence[str] = ()) -> Any:
    """The config to continue ``run_dir`` with: the run's own snapshot (or ``config_file``), then ``overrides``
    (e.g. more ``grpo.steps``), with ``train.run_dir`` at ``run_dir``."""
    from rlad.config import load_config

    snapshot = run_snapshot(run_dir)
    return load_config(config_file or snapshot, [*overrides, f"train.run_dir={run_dir}"])


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint taken after ``step`` GRPO steps lives."""
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete ``checkpoints/step-N`` folders (renamed into place with their state.json), oldest first."""
    return [p.parent for p in sorted((Path(run_dir) / "checkpoints").glob("step-*/state.json"))]


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, the one ``rlad train resume=`` continues from."""
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: str | Path, learners: list[Any], state: dict[str, Any], keep: int) -> Path:
    """Learner shards and the driver's state (``state.json``) written aside, then renamed into place; the
    newest ``keep`` are kept. A crash mid-save leaves the previous checkpoint as the last complete one."""
    import ray

    final = checkpoint_dir(run_dir, state["step"])
    try:
        with atomic_folder(final) as tmp:
            ray.get([learner.save.remote(str(tmp / "learner")) for learner in learners])
            (tmp / "state.json").write_text(json.dumps(state, indent=2))
    except (OSError, ray.exceptions.RayTaskError) as err:
        previous = last_checkpoint(run_dir)
        raise OSError(
            f"checkpoint {final} could not be written ({str(err).strip().splitlines()[-1][:300]}); "
            f"the previous one, {previous.name if previous else 'none'}, is intact"
        ) from err
    for old in sorted((Path(run_dir) / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old)
    return final


def set_aside_replay_parts(store: Any, completed_steps: int) -> None:
    """Replay parts written after the checkpoint (their steps will be redone) move to ``replay-superseded/``
    beside the store (a ``rlad.replay.ReplayStore``): kept for inspection, outside what ``pyarrow`` reads as
    the store."""
    for part in store.parts():
        if int(part.name.split("-")[1]) >= completed_steps:
            aside = store.folder.parent / "replay-superseded" / f"{int(time.time())}-{part.name}"
            aside.parent.mkdir(exist_ok=True)
            part.rename(aside)


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` into ``path`` through a sibling temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def partial_path(final: str | Path) -> Path:
    """The sibling a folder is built in before :func:`atomic_folder` renames it to ``final``."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial")


@contextlib.contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside ``final``; when the block ends without error it becomes ``final`` (an
    existing ``final`` is replaced), and on error it is removed and ``final`` stays as it was."""
    final = Path(final)
    tmp = partial_path(final)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a crash
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _usual_file_modes(tmp)
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def _usual_file_modes(folder: Path) -> None:
    """Every file under ``folder`` readable as the umask allows (safetensors writes its files 0600 through a
    temporary file, so an exported model was unreadable to the serving user while its config was not)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask | (path.stat().st_mode & 0o111))


class RunFolderBusyError(RuntimeError):
    """Another live process holds the run folder; the message names it."""


@contextlib.contextmanager
def hold_run_dir(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process (creating the folder), or raise :class:`RunFolderBusyError`. A run
    that fails before it writes anything (Ray unreachable, say) takes the folder it created away again."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise RunFolderBusyError(
                f"{run_dir} is in use by {holder}: one process writes a run folder at a time. Wait for it to "
                f"finish or stop it, then `rlad train resume={run_dir}`; or choose another train.run_dir"
            ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"rlad process {os.getpid()} on {socket.gethostname()} (since {started})".encode(), 0)
        try:
            yield
        except BaseException:
            if created and [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
                shutil.rmtree(run_dir)  # nothing but our lock: leave no empty run folder behind
            raise
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def check_run_dir(config: Any) -> None:
    """The run folder can be written and its disk holds a checkpoint (``train.save_total_limit`` of them, plus
    the export): ConfigError naming the folder now, not an OSError hours into the run."""
    from rlad.config import ConfigError
    from rlad.policy import parameter_count

    run_dir = Path(config.train.run_dir)
    existed = run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".rlad-write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
        free = shutil.disk_usage(run_dir).free
        if not existed:
            run_dir.rmdir()  # nothing is left behind by a run that a later check refuses
    except OSError as err:
        raise ConfigError(f"train.run_dir {run_dir} cannot be written: {err}") from err
    model_dir = config.train.warm_start or config.model.path
    keep = config.train.save_total_limit
    # a learner checkpoint is fp32 weights + Adam's two moments (12 bytes a parameter); a new one is written
    # before the oldest kept is deleted; the export is one fp32 copy
    need = parameter_count(model_dir) * (12 * (keep + 1) + 4)
    if need > free:
        raise ConfigError(
            f"train.run_dir {run_dir}: {free / 2**30:.2f} GiB free, but {keep} checkpoints (+1 being written) and "
            f"the exported policy of {model_dir} need about {need / 2**30:.2f} GiB (train.save_total_limit)"
        )
