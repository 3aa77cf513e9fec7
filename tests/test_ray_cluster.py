"""The "join an existing cluster" path: a separate ``ray start --head`` on loopback, then ``rlad train
--ray-address`` runs a short job on it (the way a multi-node cluster is used, on one machine)."""

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import ray

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head_node():
    """A head node of its own (own temp folder), stopped by killing its processes only: ``ray stop`` would
    take down every Ray instance on the machine."""
    if ray.is_initialized():
        ray.shutdown()
    port = _free_port()
    temp = f"/tmp/rlad-ray-{port}"  # short: Ray's socket paths must stay under the OS limit
    start = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]  # fmt: skip
    subprocess.run(start, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(["pkill", "-9", "-f", temp], check=False)  # its GCS server outlives a plain SIGTERM
        shutil.rmtree(temp, ignore_errors=True)


def test_rlad_train_joins_a_running_cluster(head_node, small_benchmark, tiny_dir, tmp_path):
    root, _ = small_benchmark
    run_dir = tmp_path / "run"
    command = [str(BIN / "rlad"), "train", f"data.root={root}", "mask.grid=8", "model.image_size=224",
               "data.shots=0", f"train.warm_start={tiny_dir}", f"train.run_dir={run_dir}",
               "generation.max_new_tokens=8", "grpo.steps=1", "grpo.prompts_per_step=2", "grpo.group_size=2",
               "train.eval_samples=2", "--ray-address", head_node]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "token"  # `ray start` clusters ask for the token in ~/.ray/auth_token (Ray >= 2.5x)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    port = head_node.split(":")[1]  # Ray reports loopback as the node's own address
    assert re.search(rf"Ray: joined the cluster at [\d.]+:{port} \(2 CPUs", done.stdout), done.stdout[:500]
    assert (run_dir / "final/config.json").is_file() and (run_dir / "checkpoints/step-000001/state.json").is_file()


def test_a_driver_killed_with_sigkill_resumes_from_its_last_complete_checkpoint(head_node, small_benchmark, tiny_dir,
                                                                                tmp_path):  # fmt: skip
    """SIGKILL of the ``rlad train`` process mid-run (no cleanup code runs), then ``rlad train resume=``: it
    continues from the last complete checkpoint, every step is logged and stored once, nothing is half-written."""
    import signal
    import time

    import pyarrow.parquet as pq

    from rlad.logbook import read_metrics

    root, _ = small_benchmark
    run_dir = tmp_path / "run"
    command = [str(BIN / "rlad"), "train", f"data.root={root}", "mask.grid=8", "model.image_size=224",
               "data.shots=0", f"model.path={tiny_dir}", "train.warm_start=base", f"train.run_dir={run_dir}",
               "generation.max_new_tokens=8", "grpo.steps=4", "grpo.prompts_per_step=2", "grpo.group_size=2",
               "train.save_steps=1", "train.eval_samples=0", "--ray-address", head_node]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "token"}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints/step-000002/state.json").is_file():
        assert driver.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not (run_dir / "final").exists()

    done = subprocess.run([*command[:2], f"resume={run_dir}", *command[-2:]], capture_output=True, text=True,
                          timeout=600, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"resumed .* at step [23] from step-00000[23]", done.stdout), done.stdout[-2000:]
    assert [m["step"] for m in read_metrics(run_dir / "metrics.jsonl")] == [0, 1, 2, 3]
    table = pq.read_table(run_dir / "replay").to_pandas()
    assert sorted(table["step"].unique()) == [0, 1, 2, 3] and len(table) == 4 * 2 * 2  # each step once
    assert not list(run_dir.rglob("*.partial")) and not list(run_dir.rglob("*.tmp"))
    assert all((c / "state.json").is_file() for c in (run_dir / "checkpoints").iterdir())
    assert (run_dir / "final/model.safetensors").is_file()
