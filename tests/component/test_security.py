"""What rlad reads from files it did not write: never a pickle, never code. Checked on the source itself and on
the paths a hostile config or dataset could try."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlad.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("rlad", "rewards", "rollout") for p in (ROOT / d).rglob("*.py")]


def _calls(pattern):
    return [f"{p.relative_to(ROOT)}:{i}" for p in SOURCES
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]  # fmt: skip


def test_no_unsafe_deserialisation_or_eval_in_the_package():
    torch_loads = [line for p in SOURCES for line in p.read_text().splitlines() if "torch.load(" in line]
    assert torch_loads and all("weights_only=True" in line for line in torch_loads), torch_loads
    assert _calls(r"^\s*(import pickle|from pickle|import dill|import cloudpickle)") == []
    assert _calls(r"(?<![.\w])(eval|exec)\(") == []  # model.eval() is a method call, allowed
    assert _calls(r"yaml\.load\(|yaml\.unsafe_load|UnsafeLoader") == []  # configs: OmegaConf / safe YAML only


def test_weights_are_written_as_safetensors(tiny_dir):
    assert list(Path(tiny_dir).glob("*.safetensors")) and not list(Path(tiny_dir).glob("*.bin"))


@pytest.mark.parametrize("name", ["os:system", "tests.evil_module", "rewards.builtin.answer"])
def test_a_reward_named_in_a_config_is_looked_up_never_imported(name, tmp_path):
    """Rewards come from the registry or declared entry points only: a module path in a config is just an
    unknown name (nothing is imported)."""
    before = set(sys.modules)
    path = tmp_path / "c.yaml"
    path.write_text(f"rewards:\n  '{name}': {{weight: 1.0}}\n")
    with pytest.raises(ConfigError, match=rf"c.yaml: unknown reward '{re.escape(name)}'; known rewards: "):
        load_config(path)
    assert not {m for m in set(sys.modules) - before if "evil" in m}


@pytest.mark.parametrize(
    "value, says",
    [
        ("${oc.eval:__import__('os').getcwd()}", r"c.yaml: key 'train.run_dir'"),  # not even parsed
        ("${python:1}", r"c.yaml: key 'train.run_dir': Unsupported interpolation type python"),
    ],
)
def test_config_interpolations_never_run_code(value, says, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  run_dir: {value}\n")
    with pytest.raises(ConfigError, match=says):
        load_config(path)


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs `ss` (iproute2) to list listening sockets")
def test_a_learner_listens_on_loopback_only(small_benchmark, tiny_dir):
    """On one node the learners' process group meets through a file, and gloo's sockets bind to loopback: a
    learner opens no port on the network."""
    from rlad.learner import Learner

    root, _ = small_benchmark
    config = load_config(None, [f"data.root={root}", "mask.grid=8", "model.image_size=224", f"model.path={tiny_dir}"])
    Learner.from_config(config, str(tiny_dir)).setup()
    listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, check=True).stdout.splitlines()
    mine = [line.split()[3] for line in listening if f"pid={os.getpid()}," in line]
    assert all(address.startswith(("127.0.0.1:", "[::1]:")) for address in mine), mine
