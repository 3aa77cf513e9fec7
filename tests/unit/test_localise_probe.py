"""experiments/learning/localise.py's pieces: the spec parser, the axis F1 and the spotted images, by hand."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "learning"))
from localise import GRID, axis_f1, parse_spec, spotted_image, target


def test_spec_text_becomes_tiny_spec_fields():
    assert parse_spec("") == {}
    assert parse_spec("rope_theta=50 mrope_section=2,7,7 head_dim=64") == {
        "rope_theta": 50, "mrope_section": (2, 7, 7), "head_dim": 64}  # fmt: skip
    assert parse_spec("rope_theta=12.5") == {"rope_theta": 12.5}
    with pytest.raises(SystemExit, match="'rope_theta' is not key=value"):
        parse_spec("rope_theta")


def test_axis_f1_counts_hits_twice_over_both_sides():
    pred, truth = np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool)
    assert axis_f1(pred, truth) == (2, 4)  # F1 = 2*1 / (2 + 2) = 0.5


def test_spotted_images_are_seeded_and_their_mask_is_the_target(tmp_path):
    a = spotted_image(np.random.default_rng(4), tmp_path, "a")
    b = spotted_image(np.random.default_rng(4), tmp_path, "b")
    assert np.array_equal(a.mask, b.mask) and a.mask.shape == (GRID, GRID)
    assert Path(a.image).read_bytes() == Path(b.image).read_bytes()
    masks = [spotted_image(np.random.default_rng(s), tmp_path, f"s{s}").mask for s in range(12)]
    assert any(m.any() for m in masks) and any(not m.any() for m in masks)  # 0-2 discs: both kinds occur
    assert target(a).startswith("<seg>") and target(a).endswith("</seg>")


def test_sees_probe_images_are_seeded_half_defective_and_their_cells_cover_the_defect():
    from sees import generated_image

    a_image, a_cells = generated_image(np.random.default_rng(3), 1.0)
    b_image, b_cells = generated_image(np.random.default_rng(3), 1.0)
    assert np.array_equal(np.asarray(a_image), np.asarray(b_image)) and np.array_equal(a_cells, b_cells)
    draws = [generated_image(np.random.default_rng(s), 2.0)[1] for s in range(16)]
    assert all(c.shape == (GRID, GRID) for c in draws)
    assert 3 <= sum(c.any() for c in draws) <= 13  # about half the images hold a defect


def test_sees_probe_reads_a_checkpoints_tower_and_freezes_it(tiny_dir):
    from safetensors.torch import load_file
    from sees import build_probe

    probe, _ = build_probe(0, str(tiny_dir), freeze=True)
    assert [n for n, w in probe.named_parameters() if w.requires_grad] == ["head.weight", "head.bias"]
    saved = load_file(str(next(tiny_dir.glob("*.safetensors"))))
    name, weight = next((n, w) for n, w in saved.items() if "visual" in n and n.endswith("weight"))
    tail = name.split("visual.", 1)[1]
    assert torch.equal(dict(probe.visual.named_parameters())[tail], weight)  # the checkpoint's, not a fresh init
    trainable, _ = build_probe(0, None, freeze=False)
    assert all(w.requires_grad for w in trainable.parameters())
