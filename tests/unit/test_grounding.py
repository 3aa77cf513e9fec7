"""The auxiliary grounding loss (rlad/grounding.py) against values computed by hand."""

import math

import pytest
import torch

from rlad.grounding import TokenLabels, attach_head, grounding_loss, strip_head, token_cells


def test_token_cells_walk_each_image_row_by_row():
    rows, cols, side = token_cells(torch.tensor([[1, 4, 4], [1, 4, 4]]), merge=2)
    assert side == 2
    assert rows.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert cols.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("grid", [[[1, 4, 4], [1, 8, 8]], [[1, 4, 6]], [[2, 4, 4]], [[1, 5, 5]]])
def test_token_cells_refuse_grids_they_cannot_label(grid):
    with pytest.raises(ValueError, match="image_grid_thw"):
        token_cells(torch.tensor(grid), merge=2)


def test_uniform_logits_cost_log_of_the_classes():
    rows, cols, side = token_cells(torch.tensor([[1, 4, 4]]), merge=2)
    logits = torch.zeros(4, 2 * side + 1)
    loss, parts = grounding_loss(logits, rows, cols, side, position_weight=0.5)
    assert loss.item() == pytest.approx(0.5 * 2 * math.log(2))
    assert parts == pytest.approx({"grounding/row_loss": math.log(2), "grounding/col_loss": math.log(2)})
    covered = torch.tensor([1.0, 0.0])
    loss, parts = grounding_loss(logits, rows, cols, side, position_weight=0.5, mask_weight=2.0,
                                 query_tokens=torch.tensor([0, 3]), covered=covered)  # fmt: skip
    assert loss.item() == pytest.approx(math.log(2) + 2 * math.log(2))
    assert parts["grounding/mask_loss"] == pytest.approx(math.log(2))


def test_the_right_answers_cost_nearly_nothing_and_the_mask_reads_the_query_tokens():
    rows, cols, side = token_cells(torch.tensor([[1, 4, 4]]), merge=2)
    logits = torch.full((4, 5), -20.0)
    logits[torch.arange(4), rows] = 20.0
    logits[torch.arange(4), side + cols] = 20.0
    logits[:, -1] = torch.tensor([20.0, -20.0, -20.0, 20.0])  # tokens 0 and 3 look covered
    loss, _ = grounding_loss(logits, rows, cols, side, position_weight=1.0, mask_weight=1.0,
                             query_tokens=torch.tensor([0, 1, 2, 3]), covered=torch.tensor([1.0, 0, 0, 1]))  # fmt: skip
    assert loss.item() < 1e-6
    wrong, _ = grounding_loss(logits, rows, cols, side, position_weight=0.0, mask_weight=1.0,
                              query_tokens=torch.tensor([0, 3]), covered=torch.tensor([0.0, 0.0]))  # fmt: skip
    assert wrong.item() == pytest.approx(20.0, abs=1e-3)  # BCE of logit 20 against 0


def test_the_mask_part_needs_its_targets():
    rows, cols, side = token_cells(torch.tensor([[1, 4, 4]]), merge=2)
    with pytest.raises(ValueError, match="query_tokens"):
        grounding_loss(torch.zeros(4, 5), rows, cols, side, position_weight=1.0, mask_weight=1.0)


def test_the_head_comes_off_before_saving():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    head = attach_head(model, hidden_size=3, side=2)
    assert head.out_features == 5 and any(k.startswith("rlad_grounding_head") for k in model.state_dict())
    strip_head(model)
    assert not any(k.startswith("rlad_grounding_head") for k in model.state_dict())


def test_a_head_built_for_another_grid_is_refused_by_name():
    rows, cols, side = token_cells(torch.tensor([[1, 4, 4]]), merge=2)
    with pytest.raises(ValueError, match="grounding head has 17 outputs for a 2x2 token grid"):
        grounding_loss(torch.zeros(4, 17), rows, cols, side, position_weight=1.0)


def test_a_label_part_reads_only_covered_query_tokens():
    """Uniform kind logits cost log(classes) on each labelled token; unlabelled ones (−1) add nothing; a confident
    right kind costs nearly nothing and a confident wrong one its margin."""
    rows, cols, side = token_cells(torch.tensor([[1, 4, 4]]), merge=2)
    logits = torch.zeros(4, 2 * side + 1 + 3)
    kinds = torch.tensor([2, -1, -1, 0])
    loss, parts = grounding_loss(logits, rows, cols, side, position_weight=0.0, query_tokens=torch.arange(4),
                                 labels=[TokenLabels("kind", 0.5, kinds, 3)])  # fmt: skip
    assert parts == pytest.approx({"grounding/row_loss": math.log(2), "grounding/col_loss": math.log(2),
                                   "grounding/kind_loss": math.log(3)})  # fmt: skip
    assert loss.item() == pytest.approx(0.5 * math.log(3))
    logits[0, 5 + 2] = 30.0  # token 0: kind 2, right
    logits[3, 5 + 1] = 10.0  # token 3: kind 1, wrong (truth 0)
    _, parts = grounding_loss(logits, rows, cols, side, position_weight=0.0, query_tokens=torch.arange(4),
                              labels=[TokenLabels("kind", 1.0, kinds, 3)])  # fmt: skip
    wrong = -math.log(1 / (2 + math.exp(10)))
    assert parts["grounding/kind_loss"] == pytest.approx((0.0 + wrong) / 2, abs=1e-6)


def test_each_label_part_reads_its_own_slice_of_the_head():
    """Kind (3 classes), colour (2), shape (4) after the 5 position and mask outputs: a logit placed in one part's
    slice moves that part's loss only, and each part is weighted by its own weight."""
    rows, cols, side = token_cells(torch.tensor([[1, 4, 4]]), merge=2)
    logits = torch.zeros(4, 5 + 3 + 2 + 4)
    labels = [TokenLabels("kind", 1.0, torch.tensor([0, -1, -1, -1]), 3),
              TokenLabels("colour", 0.5, torch.tensor([1, -1, -1, 1]), 2),
              TokenLabels("shape", 0.25, torch.tensor([3, -1, -1, -1]), 4)]  # fmt: skip
    loss, parts = grounding_loss(logits, rows, cols, side, position_weight=0.0, query_tokens=torch.arange(4),
                                 labels=labels)  # fmt: skip
    assert loss.item() == pytest.approx(math.log(3) + 0.5 * math.log(2) + 0.25 * math.log(4))
    assert [parts[f"grounding/{n}_loss"] for n in ("kind", "colour", "shape")] == pytest.approx(
        [math.log(3), math.log(2), math.log(4)])  # fmt: skip
    logits[0, 5 + 3 + 1] = 30.0  # token 0's colour (1): right, in the colour slice
    _, moved = grounding_loss(logits, rows, cols, side, position_weight=0.0, query_tokens=torch.arange(4),
                              labels=labels)  # fmt: skip
    assert moved["grounding/kind_loss"] == pytest.approx(math.log(3))  # the kind slice did not see it
    assert moved["grounding/shape_loss"] == pytest.approx(math.log(4))
    assert moved["grounding/colour_loss"] == pytest.approx((0.0 + math.log(2)) / 2, abs=1e-6)


def test_a_batch_without_a_covered_token_adds_no_label_loss():
    rows, cols, side = token_cells(torch.tensor([[1, 4, 4]]), merge=2)
    loss, parts = grounding_loss(torch.zeros(4, 8), rows, cols, side, position_weight=0.0,
                                 query_tokens=torch.arange(4),
                                 labels=[TokenLabels("kind", 1.0, torch.full((4,), -1), 3)])  # fmt: skip
    assert loss.item() == 0.0 and "grounding/kind_loss" not in parts


def test_a_label_part_needs_its_tokens_and_a_head_with_its_classes():
    rows, cols, side = token_cells(torch.tensor([[1, 4, 4]]), merge=2)
    kinds = TokenLabels("kind", 1.0, torch.zeros(4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="the kind part needs query_tokens"):
        grounding_loss(torch.zeros(4, 8), rows, cols, side, position_weight=1.0, labels=[kinds])
    with pytest.raises(ValueError, match="grounding head has 5 outputs for a 2x2 token grid and 3 kind, 9 colour"):
        grounding_loss(torch.zeros(4, 5), rows, cols, side, position_weight=1.0,
                       labels=[kinds, TokenLabels("colour", 1.0, torch.zeros(4, dtype=torch.long), 9)])  # fmt: skip
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    assert attach_head(model, hidden_size=3, side=2, classes=[6, 9, 4]).out_features == 5 + 19
