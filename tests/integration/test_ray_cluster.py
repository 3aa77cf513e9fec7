"""The "join an existing cluster" path as the README tells a user to walk it on a fresh machine: a token made
with ``ray get-auth-token --generate``, a separate ``ray start --head`` on loopback, then ``rlad train
--ray-address`` (or ``ray job submit``) runs a short job on it. Every process here gets a HOME of its own,
so no token or cache left on this machine by another run can make these pass.

Joining is in the default suite; job submission, the wrong-token message and the SIGKILL resume (a minute or
more each on two cores) are in the slow tier, which CI (``.ci/run``) runs too."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path, **extra: str) -> dict[str, str]:
    """This machine's environment with an empty HOME of the test's and no Ray settings of the caller's (the
    rlad cache stays the test session's: the tiny model is built once)."""
    from rlad.cache import cache_root

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"HOME": str(home), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "RLAD_CACHE": str(cache_root())}
    return env | extra


@pytest.fixture
def head_node(tmp_path, request):
    """A token-protected head node of its own (own HOME, own temp folder), set up with the README's commands;
    stopped by killing its processes only: ``ray stop`` would take down every Ray instance on the machine.
    Yields (GCS address, dashboard address or None, the HOME that holds the token)."""
    if ray.is_initialized():
        ray.shutdown()
    dashboard = getattr(request, "param", False)
    home = tmp_path / "head-home"
    home.mkdir()
    port, dashboard_port = _free_port(), _free_port()
    temp = f"/tmp/rlad-ray-{port}"  # short: Ray's socket paths must stay under the OS limit
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=_env(home), check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    assert (home / ".ray/auth_token").is_file()
    start = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             "--num-gpus=0", "--disable-usage-stats", f"--temp-dir={temp}"]  # fmt: skip
    # every port of its own: another Ray on this machine (a test session's, a user's) holds the defaults, e.g.
    # the job agent's 52365, and a head whose agent cannot bind it refuses jobs ("No available agent")
    start += [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
              f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]  # fmt: skip
    start += [f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1"] if dashboard else []
    start += [] if dashboard else ["--include-dashboard=false"]
    subprocess.run(start, check=True, capture_output=True, timeout=120, env=_env(home))
    try:
        yield f"127.0.0.1:{port}", (f"http://127.0.0.1:{dashboard_port}" if dashboard else None), home
    finally:
        subprocess.run(["pkill", "-9", "-f", temp], check=False)  # its GCS server outlives a plain SIGTERM
        shutil.rmtree(temp, ignore_errors=True)


def _train_words(root, tiny_dir, run_dir, *extra: str) -> list[str]:
    return ["train", f"data.root={root}", "mask.grid=8", "model.image_size=224", "data.shots=0",
            f"train.warm_start={tiny_dir}", f"train.run_dir={run_dir}", "generation.max_new_tokens=8",
            "grpo.steps=1", "grpo.prompts_per_step=2", "grpo.group_size=2", "train.eval_samples=2", *extra]  # fmt: skip


def test_rlad_train_joins_a_running_cluster(head_node, small_benchmark, tiny_dir, tmp_path):
    """The token in ~/.ray/auth_token is all the driver needs: rlad turns Ray's token auth on itself."""
    address, _, home = head_node
    root, _ = small_benchmark
    run_dir = tmp_path / "run"
    command = [str(BIN / "rlad"), *_train_words(root, tiny_dir, run_dir), "--ray-address", address]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env(home))
    assert done.returncode == 0, done.stderr[-3000:]
    port = address.split(":")[1]  # Ray reports loopback as the node's own address
    assert re.search(rf"Ray: joined the cluster at [\d.]+:{port} \(2 CPUs", done.stdout), done.stdout[:500]
    assert (run_dir / "final/config.json").is_file() and (run_dir / "checkpoints/step-000001/state.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("head_node", [True], indirect=True)
def test_a_ray_job_submitted_to_the_cluster_runs_rlad_train(head_node, small_benchmark, tiny_dir, tmp_path):
    """``ray job submit`` (README): the job's driver runs on the head and finds the cluster through Ray's own
    RAY_ADDRESS; the submitting shell holds the token and says RAY_AUTH_MODE=token, as the README says."""
    _, dashboard, home = head_node
    root, _ = small_benchmark
    run_dir = tmp_path / "run"
    submit = [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--", str(BIN / "rlad"),
              *_train_words(root, tiny_dir, run_dir)]  # fmt: skip
    for _ in range(6):  # the head's job agent comes up a few seconds after `ray start` returns
        done = subprocess.run(submit, capture_output=True, text=True, timeout=600,
                              env=_env(home, RAY_AUTH_MODE="token"))  # fmt: skip
        if "No available agent to submit job" not in done.stdout + done.stderr:
            break
        time.sleep(5)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-2000:])
    assert "Ray: joined the cluster at" in done.stdout and "succeeded" in done.stdout, done.stdout[-2000:]
    assert (run_dir / "final/config.json").is_file() and (run_dir / "report.json").is_file()


@pytest.mark.slow
def test_joining_without_the_right_token_is_one_line_saying_what_to_do(head_node, small_benchmark, tiny_dir, tmp_path):
    address, _, _ = head_node
    root, _ = small_benchmark
    empty_home = tmp_path / "driver-home"
    empty_home.mkdir()

    def train(env: dict[str, str], at: str = address) -> subprocess.CompletedProcess:
        command = [str(BIN / "rlad"), *_train_words(root, tiny_dir, tmp_path / "run"), "--ray-address", at]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    cases = {
        "no token": (_env(empty_home), "needs a token and this machine has none|asks for a token"),
        "no token, token mode": (_env(empty_home, RAY_AUTH_MODE="token"), "needs a token and this machine has none"),
        "a wrong token": (_env(empty_home, RAY_AUTH_TOKEN="0" * 32), "refused the token from RAY_AUTH_TOKEN"),
    }
    for case, (env, expected) in cases.items():
        done = train(env)
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 2, (case, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (case, done.stderr[-2000:])
        assert re.search(expected, last) and "~/.ray/auth_token" in last, (case, last)
    started = time.monotonic()
    done = train(_env(empty_home), at=f"127.0.0.1:{_free_port()}")  # nothing listens there
    assert done.returncode == 2 and "no Ray cluster answers at 127.0.0.1:" in done.stderr, done.stderr[-2000:]
    assert time.monotonic() - started < 60  # said at once, not after Ray's own minute of retries
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow
def test_a_driver_killed_with_sigkill_resumes_from_its_last_complete_checkpoint(head_node, small_benchmark, tiny_dir,
                                                                                tmp_path):  # fmt: skip
    """SIGKILL of the ``rlad train`` process mid-run (no cleanup code runs), then ``rlad train resume=``: it
    continues from the last complete checkpoint, every step is logged and stored once, nothing is half-written."""
    import signal

    import pyarrow.parquet as pq

    from rlad.logbook import read_metrics

    address, _, home = head_node
    root, _ = small_benchmark
    run_dir = tmp_path / "run"
    command = [str(BIN / "rlad"), "train", f"data.root={root}", "mask.grid=8", "model.image_size=224",
               "data.shots=0", f"model.path={tiny_dir}", "train.warm_start=base", f"train.run_dir={run_dir}",
               "generation.max_new_tokens=8", "grpo.steps=4", "grpo.prompts_per_step=2", "grpo.group_size=2",
               "train.save_steps=1", "train.eval_samples=0", "--ray-address", address]  # fmt: skip
    env = _env(home)
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
