"""The one completion parser: blocks, layout, answer letter."""

import pytest

from rlad.completion import parse_completion

GOOD = "<seg>(1, 2)-(1, 3)</seg><think>a scratch on the left</think><answer>A</answer>"


def test_well_formed_completion():
    p = parse_completion(GOOD)
    assert (p.seg, p.think, p.answer, p.answer_letter) == ("(1, 2)-(1, 3)", "a scratch on the left", "A", "A")
    assert p.layout == ("seg", "think", "answer") and p.is_well_formed()


def test_white_space_between_blocks_is_allowed():
    p = parse_completion("  <seg></seg>\n<think> x </think>\t<answer> B\n</answer>\n")
    assert p.is_well_formed() and p.answer_letter == "B" and p.seg == ""


@pytest.mark.parametrize(
    "text",
    [
        "Sure! " + GOOD,  # text outside the blocks
        GOOD + " done",
        "<think>x</think><seg></seg><answer>A</answer>",  # wrong order
        "<seg></seg><answer>A</answer>",  # a block missing
        GOOD + "<answer>B</answer>",  # two answers
        "<seg><seg></seg></seg><think>x</think><answer>A</answer>",  # nested
        "<seg></seg><think>x<answer>A</answer></think>",  # answer inside think
        "<seg></seg><think>x</think><answer>A",  # unbalanced
        "</seg><seg><think>x</think><answer>A</answer>",  # close before open
        "",
    ],
)
def test_malformed_layouts_are_not_well_formed(text):
    assert not parse_completion(text).is_well_formed()


def test_ablation_layouts():
    assert parse_completion("<think>x</think><answer>A</answer>").is_well_formed(("think", "answer"))
    assert parse_completion("<answer>A</answer>").is_well_formed(("answer",))
    assert not parse_completion(GOOD).is_well_formed(("think", "answer"))


@pytest.mark.parametrize(
    "answer, letter",
    [
        ("A", "A"),
        (" C ", "C"),
        ("\nD\n", "D"),
        ("", None),
        (" ", None),
        ("AB", None),
        ("a", None),
        ("A.", None),
        ("(A)", None),
        ("The answer is A", None),
        ("Ä", None),
    ],
)
def test_answer_letter_only_a_single_capital(answer, letter):
    assert parse_completion(f"<seg></seg><think>x</think><answer>{answer}</answer>").answer_letter == letter


def test_letter_is_read_only_from_answer_block():
    p = parse_completion("<seg></seg><think>A is right</think>A")
    assert p.answer is None and p.answer_letter is None


def test_ambiguous_blocks_are_unread_but_others_still_parse():
    p = parse_completion("<seg>(0, 0)</seg><think>x</think><answer>A</answer><answer>B</answer>")
    assert p.answer is None and p.seg == "(0, 0)" and p.layout is None


def test_non_string_is_a_type_error():
    with pytest.raises(TypeError):
        parse_completion(b"<answer>A</answer>")
