"""Shared-prefix packing gives the log-probs of the plain layout, with the prompt run once per group."""

import pytest
import torch

from rlad.inputs import InputBuilder
from rlad.logprobs import packed_logprobs, token_logprobs
from rlad.packing import pack_groups, rope_index_of


def _plain(model, builder, prompts, completions, temperature=1.0):
    encoded = [builder.encode_completion(None, list(ids), prompts[p]) for p, ids in completions]
    batch = builder.collate(encoded, padding_side="left")
    logp, mask, entropy = token_logprobs(model, batch, temperature, entropy=True)
    return [row[m] for row, m in zip(logp, mask, strict=True)], [row[m] for row, m in zip(entropy, mask, strict=True)]


@pytest.mark.parametrize("shots", [0, 1])
def test_packed_logprobs_equal_plain_ones(tiny_policy, small_benchmark, shots):
    """Three prompts of different lengths (two of them with two images at 1-shot), completions of different
    lengths, listed out of prompt order: every completion's log-probs and entropies match the plain
    left-padded batch's, at temperature 0.7."""
    _, samples = small_benchmark
    builder = InputBuilder(tiny_policy.tokenizer, tiny_policy.image_processor, image_size=224, shots=shots)
    chosen = [samples[0], samples[5], samples[9]]
    prompts = [builder.encode_prompt(s) for s in chosen]
    g = torch.Generator().manual_seed(0)
    vocab = len(builder.tokenizer)
    lengths = [5, 1, 9, 3, 7, 2]
    owners = [2, 0, 1, 0, 2, 1]
    completions = [
        (p, torch.randint(10, vocab - 10, (n,), generator=g).tolist()) for p, n in zip(owners, lengths, strict=True)
    ]
    model = tiny_policy.model
    packed = pack_groups(builder, prompts, completions, rope_index_of(model)).to("cpu", model.dtype)  # additive mask
    with torch.no_grad():
        logp, mask, entropy = packed_logprobs(model, packed, temperature=0.7, entropy=True)
        want, want_entropy = _plain(model, builder, prompts, completions, temperature=0.7)
    assert packed.inputs["input_ids"].shape[0] == 3  # one row per prompt
    for n, (_, ids) in enumerate(completions):
        assert int(mask[n].sum()) == len(ids)
        torch.testing.assert_close(logp[n, : len(ids)], want[n], atol=2e-5, rtol=0)
        torch.testing.assert_close(entropy[n, : len(ids)], want_entropy[n], atol=2e-5, rtol=0)
    assert float(logp[~mask].abs().sum()) == 0.0


def test_packed_gradients_equal_plain_ones(tiny_policy, small_benchmark):
    """The same loss through either layout gives the same gradient (the prompt's share summed over its group);
    here with the boolean mask ``pack_groups`` builds (the test above: the additive one the learner uses)."""
    _, samples = small_benchmark
    builder = tiny_policy.builder
    prompts = [builder.encode_prompt(s) for s in samples[:2]]
    completions = [(0, [40, 41, 42]), (0, [43, 44]), (1, [45, 46, 47, 48])]
    model = tiny_policy.model
    grads = []
    for layout in ("plain", "packed"):
        model.zero_grad()
        if layout == "plain":
            logp, _ = _plain(model, builder, prompts, completions)
            loss = sum(row.sum() for row in logp)
        else:
            loss = packed_logprobs(model, pack_groups(builder, prompts, completions, rope_index_of(model)))[0].sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model.zero_grad()
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_bad_packing_input_is_named(tiny_policy, small_benchmark):
    _, samples = small_benchmark
    builder = tiny_policy.builder
    prompts = [builder.encode_prompt(s) for s in samples[:2]]
    with pytest.raises(ValueError, match="needs a completion"):
        pack_groups(builder, prompts, [(0, [40])])
    with pytest.raises(ValueError, match=r"completion 1 .* no tokens"):
        pack_groups(builder, prompts, [(0, [40]), (1, [])])
