"""Config schema: every shipped YAML loads; bad keys, types and values fail naming the file and key."""

from pathlib import Path

import pytest

from rlad.config import ConfigError, load_config, save_config
from rlad.mask_text import Cover

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*ROOT.glob("configs/**/*.yaml"), *ROOT.glob("experiments/**/*.yaml")])


def test_there_are_shipped_configs():
    assert any(p.name == "demo.yaml" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_every_shipped_config_loads(path):
    load_config(path)


def test_defaults_and_overrides():
    cfg = load_config(None, ["mask.grid=8", "mask.cover=area", "rewards.detection.alpha=3"])
    assert cfg.mask.grid == 8 and cfg.mask.cover is Cover.area
    assert cfg.rewards["detection"] == {"weight": 1.0, "alpha": 3.0}
    assert cfg.rewards["answer"]["wrong"] == 0.1  # untouched defaults stay


def test_file_merges_over_defaults_and_overrides_over_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("mask:\n  grid: 12\nrewards:\n  answer: {weight: 0.0}\n")
    cfg = load_config(f, ["mask.grid=6"])
    assert cfg.mask.grid == 6 and cfg.rewards["answer"]["weight"] == 0.0 and cfg.rewards["format"]["weight"] == 1.0


def test_snapshot_round_trip(tmp_path):
    cfg = load_config(ROOT / "configs/demo.yaml", ["output.blocks=[think,answer]", "rewards.detection.weight=0"])
    save_config(cfg, tmp_path / "snap.yaml")
    assert load_config(tmp_path / "snap.yaml") == cfg


def test_a_moved_key_in_an_older_snapshot_is_read_under_its_new_name(tmp_path, caplog):
    """A run folder written before ``grpo.reward_chunk`` became ``scoring.chunk`` still resumes, with a warning
    naming the file and both keys; the other ``grpo`` keys of that file are kept."""
    f = tmp_path / "config.yaml"
    f.write_text("grpo:\n  reward_chunk: 32\n  group_size: 4\n")
    with caplog.at_level("WARNING", logger="rlad.config"):
        cfg = load_config(f, ["grpo.reward_chunk=64"])
    assert cfg.scoring.chunk == 64 and cfg.grpo.group_size == 4
    said = [r.getMessage() for r in caplog.records]
    assert any(f"{f}: grpo.reward_chunk is now scoring.chunk (read as scoring.chunk=32)" in m for m in said), said
    assert any("override 'grpo.reward_chunk=64': grpo.reward_chunk is now scoring.chunk" in m for m in said), said


def test_format_reward_follows_the_output_layout():
    assert load_config().rewards["format"]["blocks"] == ["seg", "think", "answer"]
    cfg = load_config(None, ["output.blocks=[think,answer]", "rewards.detection.weight=0"])
    assert cfg.rewards["format"]["blocks"] == ["think", "answer"]


@pytest.mark.parametrize("key", ["train.run_dir", "sft.output_dir"])
def test_output_folders_cannot_escape_the_working_directory(key):
    with pytest.raises(ConfigError, match=rf"{key} 'runs/../../elsewhere' leaves the working directory"):
        load_config(None, [f"{key}=runs/../../elsewhere"])
    assert load_config(None, [f"{key}=/tmp/rlad-run"])  # an absolute path is explicit: taken as given


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["output.blocks=[answer,think]"], r"output.blocks must be an ordered subset"),
        (["output.blocks=[seg,think]"], r"ends with 'answer'"),
        (["output.blocks=[think,answer]"], r"no 'seg' block, so rewards.detection.weight must be 0 \(got 1.0\)"),
        (["rewards.format.blocks=[think,answer]"], r"rewards.format.blocks \['think', 'answer'\] differs from output"),
    ],
)
def test_impossible_output_layouts_are_refused(overrides, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, overrides)


@pytest.mark.parametrize(
    "text, says",
    [
        ("mask:\n  gird: 8\n", r"c.yaml: key 'mask.gird'"),
        ("mask:\n  grid: eight\n", r"c.yaml: key 'mask.grid'.*could not be converted"),
        ("mask:\n  cover: half\n", r"c.yaml: key 'mask.cover'.*any, area"),
        ("mask:\n  grid: 0\n", r"c.yaml: mask.grid must be >= 1"),
        ("mask:\n  tau: 1.5\n", r"c.yaml: mask.tau must be in \(0, 1\]"),
        ("model: tiny\n", r"c.yaml: .*ModelConfig\. value: tiny"),
        ("model:\n  pth: /ckpt\n", r"c.yaml: key 'model.pth'"),
        (
            "model:\n  dtype: fp16\n",
            r"c.yaml: key 'model.dtype': Invalid value 'fp16', expected one of \['auto', 'float32', 'bfloat16'\]",
        ),
        (
            "model:\n  attn_implementation: flash\n",
            r"c.yaml: key 'model.attn_implementation': Invalid value 'flash', expected one of \['auto', 'sdpa'",
        ),
        ("model:\n  tiny: {layers: 2}\n", r"c.yaml: model.tiny: unknown keys \['layers'\]"),
        ("data:\n  shots: 2\n", r"c.yaml: key 'data.shots': Invalid value '2', expected one of \[0, 1\]"),
        (
            "data:\n  on_bad: ignore\n",
            r"c.yaml: key 'data.on_bad': Invalid value 'ignore', expected one of \['error', 'skip'\]",
        ),
        ("grpo:\n  kl_kind: k2\n", r"c.yaml: key 'grpo.kl_kind': Invalid value 'k2', expected one of \['k1', 'k3'\]"),
        (
            "learner:\n  zero_stage: 4\n",
            r"c.yaml: key 'learner.zero_stage': Invalid value '4', expected one of \[0, 1, 2, 3\]",
        ),
        ("train:\n  placement: mixed\n", r"c.yaml: key 'train.placement': Invalid value 'mixed', expected one of"),
        ("sft:\n  lr: 0\n", r"c.yaml: sft.lr must be > 0"),
        ("scoring:\n  chunk: 0\n", r"c.yaml: scoring.chunk must be >= 1, got 0"),
        (
            "rewards:\n  detektion: {weight: 1}\n",
            r"c.yaml: unknown reward 'detektion' \(did you mean 'detection'\?\); known rewards: answer, detection",
        ),
        ("rewards:\n  detection: {alpha: two}\n", r"c.yaml: rewards.detection.alpha must be a number"),
        (
            "model:\n  gradient_checkpointing: true\n",
            r"c.yaml: learner.share_prompts needs model.gradient_checkpointing false",
        ),
        ("sft:\n  grounding_mask_weight: -1\n", r"c.yaml: sft.grounding_mask_weight must be >= 0, got -1"),
        ("sft:\n  grounding_kind_weight: -0.5\n", r"c.yaml: sft.grounding_kind_weight must be >= 0, got -0.5"),
        (
            "sft:\n  grounding_position_weight: 1\nmodel:\n  lora: {r: 8}\n",
            r"c.yaml: sft.grounding_\* is implemented for full fine-tuning",
        ),
        (
            "sft:\n  grounding_mask_weight: 1\nmask: {grid: 8}\nmodel: {image_size: 448}\n",
            r"c.yaml: sft.grounding_mask_weight needs one image token per mask cell: mask.grid 8 against "
            r"model.image_size 448",
        ),
        (
            "sft:\n  grounding_position_weight: 1\nmodel: {image_size: null}\n",
            r"c.yaml: sft.grounding_\* labels image tokens .* set model.image_size",
        ),
        ("mask: [1, 2]\n", r"c.yaml"),
        ("- a\n- b\n", r"c.yaml: top level must be a mapping"),
        ("mask: {grid: 8\n", r"c.yaml: not valid YAML"),
    ],
)
def test_bad_files_are_rejected_naming_file_and_key(tmp_path, text, says):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=says):
        load_config(f)


@pytest.mark.parametrize(
    "override, says",
    [
        ("mask.grid", "not of the form key=value"),
        ("mask.grid=x", r"override 'mask.grid=x': key 'mask.grid'"),
        ("nope=1", r"override 'nope=1': key 'nope'"),
        ("rewards.answer.wrong=high", r"with overrides \['rewards.answer.wrong=high'\]: rewards.answer.wrong"),
        ("data.synth.visibility=0", r"data.synth.visibility must be > 0, got 0"),
        ("grpo.cell_credit=-0.5", r"grpo.cell_credit must be a finite number >= 0 \(0 turns it off\), got -0.5"),
        ("grpo.cell_credit=.inf", r"grpo.cell_credit must be a finite number >= 0 \(0 turns it off\), got inf"),
    ],
)
def test_bad_overrides_are_rejected(override, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, [override])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nowhere.yaml does not exist"):
        load_config(tmp_path / "nowhere.yaml")


def test_every_config_field_has_a_docstring():
    """The schema is the reference: each field is followed by its docstring (``rlad config`` users read it)."""
    import ast

    import rlad.config

    tree = ast.parse(Path(rlad.config.__file__).read_text())
    undocumented = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for i, statement in enumerate(node.body):
                if isinstance(statement, ast.AnnAssign):
                    after = node.body[i + 1] if i + 1 < len(node.body) else None
                    if not (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)):
                        undocumented.append(f"{node.name}.{statement.target.id}")
    assert undocumented == []
