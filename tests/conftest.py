"""Shared test helpers: small verifiable samples built by hand, the tiny model and a small benchmark; the
``gpu`` marker's skip where CUDA is absent."""

import os

import numpy as np
import pytest

from rlad.sample import VerifiableSample


def make_sample(patches=(), grid=4, answer="A", options="AB", sample_id="s0", anomalous=None, subtask=""):
    """A sample whose ground-truth grid mask marks ``patches`` [(row, col), ...]."""
    mask = np.zeros((grid, grid), bool)
    for r, c in patches:
        mask[r, c] = True
    return VerifiableSample(
        sample_id=sample_id,
        question="Is there any defect in the object?",
        options={k: f"option {k}" for k in options},
        answer=answer,
        mask=mask,
        anomalous=bool(mask.any()) if anomalous is None else anomalous,
        subtask=subtask,
    )


@pytest.fixture
def sample_factory():
    return make_sample


@pytest.fixture(scope="session")
def tiny_dir():
    """The tiny Qwen2.5-VL checkpoint folder (built once into the rlad cache, then reused)."""
    from rlad.tiny import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture(scope="session")
def tiny_policy(tiny_dir):
    """The tiny policy in eval mode, 1-shot builder, images at 224 px."""
    from rlad.config import ModelConfig
    from rlad.policy import load_policy

    return load_policy(ModelConfig(path=str(tiny_dir), image_size=224), shots=1)


@pytest.fixture(scope="session")
def small_benchmark(tmp_path_factory):
    """A small generated benchmark (2 classes, 8 images each) and its samples at grid 8, 1-shot."""
    from rlad.data.readers import read_mmad
    from rlad.data.synth import SynthSpec, synthesize

    root = tmp_path_factory.mktemp("bench")
    synthesize(SynthSpec(classes=("pill", "wood"), images_per_class=8, references_per_class=1, size=224), root, 1)
    samples, _ = read_mmad(root / "mmad.json", root, grid=8, shots=1)
    return root, samples


@pytest.fixture(scope="module")
def checkpoint(small_benchmark, tiny_dir, tmp_path_factory):
    """The tiny model as a trained checkpoint would look: weights plus the rlad.yaml it was trained with (grid 8,
    224 px, 0-shot, 12 new tokens). A copy per test module, so a module may change its own."""
    import shutil

    from rlad.config import load_config, save_config

    root, _ = small_benchmark
    ckpt = tmp_path_factory.mktemp("ckpt") / "final"
    shutil.copytree(tiny_dir, ckpt)
    overrides = [f"data.root={root}", "mask.grid=8", "model.image_size=224", "data.shots=0",
                 "generation.max_new_tokens=12", "rollout.batch_size=8"]  # fmt: skip
    save_config(load_config(None, overrides), ckpt / "rlad.yaml")
    return ckpt


@pytest.fixture(autouse=True)
def _no_leaks_between_tests():
    """What one test may leave in this process for the next: the torch.distributed variables a learner built
    in-process sets (a subprocess started later would take itself for a distributed rank), and rewards a test
    registered (the next test's list of known rewards would hold them). The whole environment is restored."""
    from rewards import registry

    env = dict(os.environ)
    known = dict(registry._REGISTRY)
    yield
    for name in set(os.environ) - set(env):
        del os.environ[name]
    os.environ.update(env)
    registry._REGISTRY.clear()
    registry._REGISTRY.update(known)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: where there is none they are skipped, saying so, rather than failing."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
