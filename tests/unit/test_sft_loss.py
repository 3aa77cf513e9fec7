"""sft.seg_loss_weight: which tokens get the weight, and the weighted loss by hand."""

from types import SimpleNamespace

import pytest
import torch

from rlad.sft import seg_token_weights, seg_weighted_loss

OPEN, CLOSE = 7, 8


def test_seg_token_weights_cover_the_span_tags_included():
    # prompt (-100), <seg>, 3, 4, </seg>, 5, 6 (the think text), padding (-100)
    labels = torch.tensor([[-100, -100, OPEN, 3, 4, CLOSE, 5, 6, -100]])
    w = seg_token_weights(labels, (OPEN, CLOSE), 5.0)
    assert w.tolist() == [[0, 0, 5, 5, 5, 5, 1, 1, 0]]
    empty = torch.tensor([[OPEN, CLOSE, 5]])  # a normal image's empty mask: just the two tags
    assert seg_token_weights(empty, (OPEN, CLOSE), 3.0).tolist() == [[3, 3, 1]]


def test_weighted_loss_by_hand():
    torch.manual_seed(0)
    labels = torch.tensor([[-100, OPEN, 3, CLOSE, 5, 6]])
    logits = torch.randn(1, 6, 10)
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="none")
    # targets after the shift: <seg>, 3, </seg>, 5, 6 with weights 2, 2, 2, 1, 1 -> (2*(a+b+c) + d + e) / 8
    want = (2 * ce[:3].sum() + ce[3:].sum()) / 8
    got = seg_weighted_loss(SimpleNamespace(logits=logits), labels, seg_ids=(OPEN, CLOSE), weight=2.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # weight 1 is the plain token mean (transformers' own causal-LM loss); accumulation divides it
    plain = seg_weighted_loss(SimpleNamespace(logits=logits), labels, seg_ids=(OPEN, CLOSE), weight=1.0, accum=2)
    assert plain.item() == pytest.approx(ce.mean().item() / 2, rel=1e-6)
