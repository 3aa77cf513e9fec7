"""The tiny model's base stage: its data is generic (no defect, no anomaly label), it is built once and cached,
and the commands start from it."""

import json
import re

import numpy as np
import pytest

from rlad import mask_text
from rlad.base_stage import BASE_STAGE_FILE, base_model_dir, with_base_stage
from rlad.config import BaseStageConfig, ConfigError, ModelConfig, load_config
from rlad.data.base_set import COUNTS, BaseSetSpec, write_base_set
from rlad.data.sources import read_sft_jsonl
from rlad.policy import load_policy, resolve_model_path
from rlad.tiny import TinySpec


def test_base_set_is_generic_grounded_and_a_pure_function_of_its_spec(tmp_path):
    spec = BaseSetSpec(images=40, size=112, grid=8, seed=3)
    first, again = write_base_set(spec, tmp_path / "a"), write_base_set(spec, tmp_path / "b")
    assert first.read_text() == again.read_text()
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    examples = read_sft_jsonl(first, grid=8)  # the SFT stage reads it as any user's SFT file
    assert len(examples) == len(rows) == 40
    words = re.compile(r"defect|anomal|scratch|crack|stain|hole|contamination|broken", re.I)
    for row, example in zip(rows, examples, strict=True):
        assert not example.sample.anomalous and not words.search(row["question"] + row["target"])
        seg = mask_text.decode(row["target"].split("<seg>")[1].split("</seg>")[0], 8)
        assert np.array_equal(seg, example.sample.mask)
        think = row["target"].split("<think>")[1]
        said = [i for i, w in enumerate(COUNTS) if re.search(rf"\b{w}\b [a-z]+ spots?\b", think)]
        count = said[0] if seg.any() else 0
        assert ("no spots" in think) == (count == 0) == (not seg.any())
        if row["question"].startswith("How many"):
            assert row["answer"] == "ABCD"[count]
        assert f"option {row['answer']}" in think and row["target"].endswith(f"<answer>{row['answer']}</answer>")
    assert {r["question"].split("\n")[0].split()[0] for r in rows} == {"How", "What"}


def test_base_stage_is_built_once_and_commands_start_from_it():
    stage = BaseStageConfig(images=50, epochs=0.2, batch_size=4)
    config = load_config(None, ["mask.grid=8", "model.image_size=224", "model.base.images=50",
                                "model.base.epochs=0.2", "model.base.batch_size=4"])  # fmt: skip
    with pytest.raises(ConfigError, match="with_base_stage"):  # never silently the random-weight model
        resolve_model_path(config.model)
    folder = with_base_stage(config).model.path
    assert folder == str(base_model_dir(TinySpec(), stage))
    summary = json.loads((base_model_dir(TinySpec(), stage) / BASE_STAGE_FILE).read_text())
    assert summary["base"]["images"] == 50 and summary["train"]["steps"] >= 1
    assert {"before", "after"} <= set(summary["held_out"])  # the spots' patch F1 before and after the stage
    stamp = (base_model_dir(TinySpec(), stage) / "model.safetensors").stat().st_mtime_ns
    assert (base_model_dir(TinySpec(), stage) / "model.safetensors").stat().st_mtime_ns == stamp  # cached
    policy = load_policy(ModelConfig(path=folder, image_size=224), shots=0)
    assert policy.path.name.startswith("tiny-base-")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.base.images=10"], "model.base.images must be 0 .no base stage. or >= 50, got 10"),
        (["model.base.images=100", "mask.grid=24"], "model.base.grid 8 must equal mask.grid 24"),
        (["model.base.images=100", "model.base.lr=0"], "model.base: epochs, lr, batch_size and grid must be positive"),
    ],
)
def test_bad_base_stage_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
