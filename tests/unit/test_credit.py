"""Per-block credit (grpo.credit: block): which tokens each reward's advantage share reaches, by hand; per-run
credit inside <seg> (grpo.cell_credit), by hand."""

from functools import partial

import numpy as np
import pytest
import torch

from rewards import get_reward
from rlad import credit
from rlad.credit import block_shares, cell_credits, token_advantages, token_blocks, token_pieces
from rlad.grpo import component_advantages, group_advantages, grpo_loss

PIECES = ["<seg>", "(1, ", "1)", "</seg>", "<think>", "a dent", "</think>", "\n", "<answer>", "A", "</answer>", ""]


def test_each_token_is_in_the_block_its_text_starts_in():
    assert token_blocks(PIECES) == [
        "seg", "seg", "seg", "seg", "think", "think", "think", None, "answer", "answer", "answer", None,
    ]  # fmt: skip
    # a token that straddles two blocks counts for the one it starts in; the first block of a name counts
    assert token_blocks(["<seg></seg><think>", "x</think>", "<seg>(0, 0)</seg>"]) == ["seg", "think", None]
    # no blocks at all (junk): every token is outside
    assert token_blocks(["hello", " world"]) == [None, None]


def test_token_pieces_join_to_the_text_the_engine_decoded():
    vocab = {1: "<seg>", 2: "</seg>", 3: " yes"}
    one_by_one = lambda ids: "".join(vocab[i] for i in ids)  # noqa: E731
    assert token_pieces(one_by_one, [1, 2, 3]) == ["<seg>", "</seg>", " yes"]
    # a decoder that drops a leading space from a lone token (sentencepiece-like): prefixes decide
    lone = lambda ids: one_by_one(ids).lstrip() if len(ids) == 1 else one_by_one(ids)  # noqa: E731
    assert token_pieces(lone, [1, 3, 3]) == ["<seg>", " yes", " yes"]


def test_block_shares_and_token_advantages_by_hand():
    blocks = {"format": None, "detection": ("seg",), "answer": ("think", "answer")}
    per_block = block_shares({"format": 0.25, "detection": 0.5, "answer": -1.0}, blocks)
    assert per_block == {"all": 0.25, "seg": 0.5, "think": -1.0, "answer": -1.0}
    # seg tokens 0.25 + 0.5; think and answer 0.25 - 1; between blocks and the end of text 0.25 only
    assert token_advantages(PIECES, per_block) == [0.75] * 4 + [-0.75] * 3 + [0.25] + [-0.75] * 3 + [0.25]


def test_the_builtin_rewards_judge_their_blocks():
    assert get_reward("detection").blocks == ("seg",)
    assert get_reward("answer").blocks == ("think", "answer")
    assert get_reward("format").blocks is None


def test_component_advantages_add_up_to_the_group_advantage():
    # one group of 2: detection [2, 0] and answer [0, 1] -> totals [2, 1]; centred detection [1, -1],
    # answer [-0.5, 0.5]; Dr.GRPO (none) keeps them; group scale divides both by std([2, 1]) + eps
    parts = {"detection": torch.tensor([2.0, 0.0]), "answer": torch.tensor([0.0, 1.0])}
    plain = component_advantages(parts, 2, "none")
    assert torch.equal(plain["detection"], torch.tensor([1.0, -1.0]))
    assert torch.equal(plain["answer"], torch.tensor([-0.5, 0.5]))
    for scale in ("group", "batch", "none"):
        shares = component_advantages(parts, 2, scale)
        total = group_advantages(parts["detection"] + parts["answer"], 2, scale)
        assert torch.allclose(shares["detection"] + shares["answer"], total)
    std = torch.tensor([2.0, 1.0]).std() + 1e-4
    assert torch.allclose(component_advantages(parts, 2, "group")["answer"], torch.tensor([-0.5, 0.5]) / std)
    # against a greedy completion's detection 1 and answer 1 (grpo.baseline greedy): detection [1, -1], answer
    # [-1, 0]; they add up to the totals [2, 1] against the greedy total 2
    greedy = {"detection": torch.tensor([1.0]), "answer": torch.tensor([1.0])}
    shares = component_advantages(parts, 2, "none", baselines=greedy)
    assert torch.equal(shares["detection"], torch.tensor([1.0, -1.0]))
    assert torch.equal(shares["answer"], torch.tensor([-1.0, 0.0]))
    total = group_advantages(parts["detection"] + parts["answer"], 2, "none", baseline=torch.tensor([2.0]))
    assert torch.equal(shares["detection"] + shares["answer"], total)


def test_the_loss_takes_one_advantage_per_token():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    old, mask = torch.zeros(1, 3), torch.ones(1, 3)
    # the same advantage on every token is GRPO's loss
    same = grpo_loss(logp, old, torch.tensor([[1.0, 1.0, 1.0]]), mask).loss
    assert same.item() == pytest.approx(grpo_loss(logp, old, torch.tensor([1.0]), mask).loss.item())
    # A = [+1, -1, 0]: min(r, clip) = 1.28 for token 0, min(-0.5, -0.8) = -0.8 for token 1, 0 -> (-1.28 + 0.8) / 3
    mixed = grpo_loss(logp, old, torch.tensor([[1.0, -1.0, 0.0]]), mask).loss
    assert mixed.item() == pytest.approx((-1.28 + 0.8) / 3)


# the tiny tokenizer's pieces of "<seg>(3, 2)-(3, 4), (4, 3)</seg>..." (a run's ")" and the separator share a token)
RUNS = ["<seg>", "(", "3", ",", " 2", ")-(", "3", ",", " 4", "),", " (", "4", ",", " 3", ")", "</seg>",
        "<think>", "x", "</think>", "<answer>", "B", "</answer>", ""]  # fmt: skip


def test_precision_rule_judges_each_run_and_the_closing_tag_by_hand():
    truth = np.zeros((8, 8), bool)
    truth[3, 3:5] = True  # the first run, (3, 2)-(3, 4), names (3, 2) wrong, (3, 3) and (3, 4) right: p = 2/3
    truth[5, 0] = True  # never named: 1 of the 3 anomalous patches missed when the mask closes
    credit = cell_credits(RUNS, truth, 1.5, "precision")
    first, second = 1.5 * (2 * 2 / 3 - 1), 1.5 * (2 * 0 - 1)  # (4, 3) is normal: p = 0
    closing = 1.5 * (1 - 2 * 1 / 3)
    assert credit[:15] == pytest.approx([0.0] + [first] * 9 + [second] * 5)  # "<seg>" itself: no credit
    assert credit[15] == pytest.approx(closing)
    assert credit[16:] == [0.0] * 7  # think, answer, end of text: the rewards' business
    # every anomalous patch named and nothing else: +w on each run and on the close
    exact = np.zeros((8, 8), bool)
    exact[3, 2:5] = True
    exact[4, 3] = True
    assert cell_credits(RUNS, exact, 1.0, "precision")[1:16] == [1.0] * 15


def test_precision_rule_on_a_normal_image_a_repeat_and_a_malformed_mask():
    normal = np.zeros((8, 8), bool)
    cell_credits = partial(credit.cell_credits, rule="precision")
    assert cell_credits(["<seg>", "</seg>", "<answer>A</answer>"], normal, 1.0) == [0.0, 1.0, 0.0]  # right call
    assert cell_credits(["<seg>", "(0, 0)", "</seg>"], normal, 1.0) == [0.0, -1.0, 1.0]  # a false run; closing is
    # not wrong on an image with nothing to miss
    truth = np.zeros((8, 8), bool)
    truth[0, 0] = True
    # a run named twice: the second time names nothing new, so it counts as wrong
    assert cell_credits(["<seg>", "(0, 0)", ",", " (0, 0)", "</seg>"], truth, 1.0) == [0.0, 1.0, 0.0, -1.0, 1.0]
    # an anomalous image with an empty mask: the close misses everything
    assert cell_credits(["<seg>", "</seg>"], truth, 1.0) == [0.0, -1.0]
    # the close shares a token with the run it ends: that token gets both
    assert cell_credits(["<seg>", "(0, 1)</seg>"], truth, 1.0) == [0.0, -1.0 + -1.0]
    # malformed, missing or off-grid masks and weight 0 earn nothing here (format and detection judge them)
    # two <seg> blocks: the detection reward reads no mask there, so no run earns credit either
    for pieces in (["<seg>", "(0, 0", "</seg>"], ["(0, 0)"], ["<seg>", "(9, 9)", "</seg>"],
                   ["<seg>", "(0, 0)", "</seg>", "<seg>", "(0, 0)", "</seg>"]):  # fmt: skip
        assert cell_credits(pieces, truth, 1.0) == [0.0] * len(pieces)
    assert cell_credits(["<seg>", "(0, 0)", "</seg>"], truth, 0.0) == [0.0, 0.0, 0.0]


def test_gain_rule_pays_each_run_what_it_added_to_the_patch_f1_by_hand():
    truth = np.zeros((8, 8), bool)
    truth[3, 3:5] = True  # 3 anomalous patches: (3, 3), (3, 4), (5, 0)
    truth[5, 0] = True
    # run 1 (3, 2)-(3, 4): 2 right of 3 named -> F1 2*2/(3+3) = 2/3; run 2 (4, 3): wrong -> 2*2/(4+3) = 4/7
    credit = cell_credits(RUNS, truth, 2.0)
    assert credit[:15] == pytest.approx([0.0] + [2.0 * 2 / 3] * 9 + [2.0 * (4 / 7 - 2 / 3)] * 5)
    assert credit[15:] == [0.0] * 8  # the close and everything after it: nothing (the runs carry the score)
    # the credits of one token per run add up to w x the mask's F1 (shaping by a potential)
    assert credit[1] + credit[10] == pytest.approx(2.0 * 4 / 7)
    normal = np.zeros((8, 8), bool)
    # an image with no defect: the empty mask keeps its score 1 (no credit); the first run drops it to 0, a second
    # one changes nothing more
    assert cell_credits(["<seg>", "</seg>"], normal, 1.0) == [0.0, 0.0]
    assert cell_credits(["<seg>", "(0, 0)", ",", " (1, 1)", "</seg>"], normal, 1.0) == [0.0, -1.0, 0.0, 0.0, 0.0]
    # a repeated run adds nothing to the named patches but the F1's denominator counts them once: no change
    one = np.zeros((8, 8), bool)
    one[0, 0] = True
    assert cell_credits(["<seg>", "(0, 0)", ",", " (0, 0)", "</seg>"], one, 1.0) == [0.0, 1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="cell credit rule 'f1': one of 'gain', 'relative', 'precision'"):
        cell_credits(["<seg>", "</seg>"], one, 1.0, "f1")


def test_relative_rule_is_the_gain_less_its_mean_over_the_mask_by_hand():
    truth = np.zeros((8, 8), bool)
    truth[3, 3:5] = True
    truth[5, 0] = True
    # gains 2/3 and 4/7 - 2/3 (the gain test above), mean 2/7: each less it; the credits of the mask sum to 0
    credit = cell_credits(RUNS, truth, 2.0, "relative")
    first, second = 2.0 * (2 / 3 - 2 / 7), 2.0 * (4 / 7 - 2 / 3 - 2 / 7)
    assert credit[:15] == pytest.approx([0.0] + [first] * 9 + [second] * 5)
    assert credit[15:] == [0.0] * 8
    assert credit[1] + credit[10] == pytest.approx(0.0)
    # one run, or an image without a defect: nothing to tell runs apart by
    assert cell_credits(["<seg>", "(3, 3)", "</seg>"], truth, 1.0, "relative") == [0.0, 0.0, 0.0]
    normal = np.zeros((8, 8), bool)
    assert cell_credits(["<seg>", "(0, 0)", ",", " (1, 1)", "</seg>"], normal, 1.0, "relative") == [0.0] * 5
