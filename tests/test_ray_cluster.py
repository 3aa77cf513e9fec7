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
