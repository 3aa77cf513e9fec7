"""Text-as-Mask codec: round trips, the paper's examples, leniency and strictness, pixel <-> grid."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rlad.mask_text import Cover, MaskTextError, decode, encode, grid_to_mask, mask_to_grid, max_text_chars


@st.composite
def square_masks(draw):
    grid = draw(st.sampled_from([1, 2, 3, 8, 16, 24, 32]))
    return draw(arrays(bool, (grid, grid)))


@settings(max_examples=300, deadline=None)
@given(square_masks())
def test_decode_inverts_encode(mask):
    assert np.array_equal(decode(encode(mask), mask.shape[0]), mask)


@pytest.mark.parametrize("grid", [1, 2, 8, 24])
def test_extremes_round_trip(grid):
    full = np.ones((grid, grid), bool)
    assert encode(full) == ", ".join(f"({r}, 0)-({r}, {grid - 1})" for r in range(grid))
    assert np.array_equal(decode(encode(full), grid), full)
    empty = np.zeros((grid, grid), bool)
    assert encode(empty) == ""
    assert not decode("", grid).any()
    single = empty.copy()
    single[grid - 1, grid - 1] = True
    assert encode(single) == f"({grid - 1}, {grid - 1})-({grid - 1}, {grid - 1})"
    assert np.array_equal(decode(encode(single), grid), single)


def test_encode_writes_maximal_sorted_runs():
    m = np.zeros((4, 4), bool)
    m[2, [0, 1, 3]] = True  # two runs in one row: 0-1 and 3
    m[0, 2] = True
    assert encode(m) == "(0, 2)-(0, 2), (2, 0)-(2, 1), (2, 3)-(2, 3)"


def test_paper_example_l_shape():
    # OmniAD: "(14, 8)-(14, 9), (15, 8)-(15, 10), (16, 8)-(16, 10)" is 8 patches in rows 14-16.
    text = "(14, 8)-(14, 9), (15, 8)-(15, 10), (16, 8)-(16, 10)"
    m = decode(text, 24)
    assert m.sum() == 8
    assert sorted(set(np.nonzero(m)[0].tolist())) == [14, 15, 16]
    assert m[14, 8:10].all() and m[15, 8:11].all() and m[16, 8:11].all()
    assert encode(m) == text


def test_paper_example_top_left():
    # OmniAD: "(4, 3)-(4, 4), (5, 3)-(5, 4)" answers "Top left": all four patches in the top-left third.
    m = decode("(4, 3)-(4, 4), (5, 3)-(5, 4)", 24)
    rows, cols = np.nonzero(m)
    assert m.sum() == 4 and rows.max() < 8 and cols.max() < 8


@pytest.mark.parametrize(
    "text",
    [
        "(1, 2)-(1, 3),(2, 2)-(2, 2)",  # no space after comma
        "  ( 1 ,2 ) - ( 1, 3 ) ,\n(2,2)  ",  # odd white space everywhere
        "(2, 2), (1, 2)-(1, 3)",  # unsorted, singleton written (r, c)
        "(1, 2)-(1, 2), (1, 3)-(1, 3), (2, 2)",  # not maximal
        "(1, 2)-(1, 3), (1, 3)-(1, 3), (2, 2)",  # overlapping runs: union
        "(1, 2)-(1, 3), (2, 2),",  # trailing comma
        "(01, 02)-(01, 03), (2, 2)",  # leading zeros
    ],
)
def test_decode_is_lenient_on_harmless_variation(text):
    want = np.zeros((4, 4), bool)
    want[1, 2:4] = True
    want[2, 2] = True
    assert np.array_equal(decode(text, 4), want)


@pytest.mark.parametrize(
    "text, says",
    [
        ("(1, 2)-(2, 3)", "spans rows"),
        ("(1, 3)-(1, 2)", "col_start 3 > col_end 2"),
        ("(4, 0)", "outside"),
        ("(0, 4)", "outside"),
        ("(0, 1)-(0, 4)", "outside"),
        ("no anomaly", "not a patch coordinate"),
        ("(1, 2) (1, 3)", "not a patch coordinate"),  # missing separator
        ("(1, 2); (1, 3)", "not a patch coordinate"),
        ("(-1, 2)", "not a patch coordinate"),
        ("(1.5, 2)", "not a patch coordinate"),
        ("(1, 2", "not a patch coordinate"),
        (",", "not a patch coordinate"),
        ("(1, 2),, (1, 3)", "not a patch coordinate"),
        ("(١, 2)", "not a patch coordinate"),  # Arabic-Indic digit: int() would read it, we don't
        ("(99999999999999999999, 1)", "not a patch coordinate"),
        ("(1, 2) and a crack", "not a patch coordinate"),
    ],
)
def test_decode_rejects_malformed(text, says):
    with pytest.raises(MaskTextError, match=says):
        decode(text, 4)


def test_decode_rejects_absurdly_long_text():
    text = "(0, 0), " * (max_text_chars(24) // 8 + 1)
    with pytest.raises(MaskTextError, match="exceeds"):
        decode(text, 24)


def test_canonical_worst_case_fits_the_length_limit():
    checker = (np.indices((24, 24)).sum(axis=0) % 2).astype(bool)
    assert len(encode(checker)) < max_text_chars(24) / 3


def test_mask_to_grid_any_pixel_marks_the_patch():
    pix = np.zeros((48, 48), np.uint8)
    pix[0, 0] = 255  # one pixel in patch (0, 0) of a 4x4 grid (12 px patches)
    pix[30, 47] = 1  # one pixel in patch (2, 3)
    g = mask_to_grid(pix, 4, "any")
    assert g.sum() == 2 and g[0, 0] and g[2, 3]


def test_mask_to_grid_area_rule_and_tiny_defect_guarantee():
    pix = np.zeros((40, 40), bool)
    pix[0:10, 0:5] = True  # half of patch (0, 0) in a 4x4 grid of 10 px patches
    pix[10:13, 10:13] = True  # 9% of patch (1, 1)
    g = mask_to_grid(pix, 4, Cover.area, tau=0.5)
    assert g[0, 0] and not g[1, 1] and g.sum() == 1
    tiny = np.zeros((40, 40), bool)
    tiny[25, 25] = True  # 1% of patch (2, 2): below tau, yet the image must stay anomalous on the grid
    g = mask_to_grid(tiny, 4, "area", tau=0.5)
    assert g.sum() == 1 and g[2, 2]
    assert not mask_to_grid(np.zeros((40, 40)), 4, "area").any()


def test_mask_to_grid_uneven_sizes_partition_every_pixel():
    # 50 px over a 24-grid: patches of 2 or 3 px; the full mask must mark every patch, one pixel only one patch.
    assert mask_to_grid(np.ones((50, 37), bool), 24).all()
    pix = np.zeros((50, 37), bool)
    pix[49, 36] = True
    assert mask_to_grid(pix, 24).sum() == 1


@settings(max_examples=100, deadline=None)
@given(square_masks(), st.integers(0, 40), st.integers(0, 40))
def test_grid_to_mask_then_mask_to_grid_is_identity(grid_mask, extra_h, extra_w):
    grid = grid_mask.shape[0]
    shape = (grid + extra_h, grid + extra_w)
    pixels = grid_to_mask(grid_mask, shape)
    assert pixels.shape == shape
    assert np.array_equal(mask_to_grid(pixels, grid, "any"), grid_mask)
    assert np.array_equal(mask_to_grid(pixels, grid, "area", tau=1.0), grid_mask)


def test_pixel_grid_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match="smaller than the 24x24 grid"):
        mask_to_grid(np.zeros((10, 10)), 24)
    with pytest.raises(ValueError, match="2-D"):
        mask_to_grid(np.zeros((10, 10, 3)), 2)
    with pytest.raises(MaskTextError, match="square"):
        encode(np.zeros((3, 4), bool))
