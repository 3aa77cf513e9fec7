"""One writer per run folder, tried with real processes: a second one is refused naming the holder, and a
holder killed with SIGKILL leaves no stale lock."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlad.run_dir import RunFolderBusyError, hold_run_dir

BIN = Path(sys.executable).parent
HOLD = """import sys
from rlad.run_dir import hold_run_dir
with hold_run_dir(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path / 'run'`` until the test ends (or kills it)."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "held"
    yield run_dir, process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_a_second_process_is_refused_and_a_killed_holder_leaves_no_lock(holder):
    run_dir, process = holder
    with pytest.raises(RunFolderBusyError, match=rf"in use by rlad process {process.pid} on .*resume="):
        with hold_run_dir(run_dir):
            pass
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with hold_run_dir(run_dir):  # the OS released the dead holder's lock
        assert f"rlad process {os.getpid()}" in (run_dir / ".lock").read_text()
    with hold_run_dir(run_dir):  # and this process's own, once its run ended
        pass


def test_rlad_train_into_a_held_folder_stops_before_it_writes(holder, small_benchmark, tiny_dir):
    run_dir, process = holder
    root, _ = small_benchmark
    command = [str(BIN / "rlad"), "train", f"data.root={root}", "mask.grid=8", "model.image_size=224",
               "data.shots=0", f"train.warm_start={tiny_dir}", f"train.run_dir={run_dir}", "grpo.steps=1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"in use by rlad process {process.pid}" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # no config, no metrics, no replay store


def test_resume_reads_the_runs_own_snapshot_and_refuses_a_folder_that_is_not_a_run(tmp_path):
    """``rlad train resume=DIR`` and ``run_train(config, resume=True)`` meet one check: the folder must hold the
    snapshot the run wrote; the snapshot is then the config, overrides on top, ``train.run_dir`` at the folder."""
    from rlad.config import ConfigError, load_config, save_config
    from rlad.run_dir import resume_config

    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=rf"resume={run_dir}: not a run folder \(no {run_dir}/config.yaml\)"):
        resume_config(run_dir)
    run_dir.mkdir()
    save_config(load_config(None, ["grpo.steps=3", "mask.grid=6", "train.run_dir=elsewhere"]), run_dir / "config.yaml")
    config = resume_config(run_dir, overrides=["grpo.steps=5"])
    assert (config.grpo.steps, config.mask.grid, config.train.run_dir) == (5, 6, str(run_dir))
