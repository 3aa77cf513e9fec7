"""Shared prompts give the log-probs and gradients of the plain layout, with each prompt run once per micro-batch."""

import pytest
import torch

from rlad.inputs import InputBuilder
from rlad.logprobs import shared_prompt_logprobs, token_logprobs
from rlad.shared_prompt import rope_index_of, shared_prompt_batch


def _plain(model, builder, prompts, completions, temperature=1.0):
    encoded = [builder.encode_completion(None, list(ids), prompts[p]) for p, ids in completions]
    batch = builder.collate(encoded, padding_side="left")
    logp, mask, entropy = token_logprobs(model, batch, temperature, entropy=True)
    return [row[m] for row, m in zip(logp, mask, strict=True)], [row[m] for row, m in zip(entropy, mask, strict=True)]


@pytest.mark.parametrize("shots", [0, 1])
def test_shared_prompt_logprobs_equal_plain_ones(tiny_policy, small_benchmark, shots):
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
    batch = shared_prompt_batch(builder, prompts, completions, rope_index_of(model)).to("cpu", model.dtype)
    with torch.no_grad():
        logp, mask, entropy = shared_prompt_logprobs(model, batch, temperature=0.7, entropy=True)
        want, want_entropy = _plain(model, builder, prompts, completions, temperature=0.7)
    assert batch.prompts["input_ids"].shape[0] == 3  # each prompt once
    for n, (_, ids) in enumerate(completions):
        assert int(mask[n].sum()) == len(ids)
        torch.testing.assert_close(logp[n, : len(ids)], want[n], atol=2e-5, rtol=0)
        torch.testing.assert_close(entropy[n, : len(ids)], want_entropy[n], atol=2e-5, rtol=0)
    assert float(logp[~mask].abs().sum()) == 0.0


def test_shared_prompt_gradients_equal_plain_ones(tiny_policy, small_benchmark):
    """The same loss through either layout gives the same gradient: the prompt's share, reached through its
    key/value cache, is summed over its completions."""
    _, samples = small_benchmark
    builder = tiny_policy.builder
    prompts = [builder.encode_prompt(s) for s in samples[:2]]
    completions = [(0, [40, 41, 42]), (0, [43, 44]), (1, [45, 46, 47, 48])]
    model = tiny_policy.model
    grads = []
    for layout in ("plain", "shared"):
        model.zero_grad()
        if layout == "plain":
            logp, _ = _plain(model, builder, prompts, completions)
            loss = sum(row.sum() for row in logp)
        else:
            batch = shared_prompt_batch(builder, prompts, completions, rope_index_of(model))
            loss = shared_prompt_logprobs(model, batch)[0].sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model.zero_grad()
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_bad_shared_prompt_input_is_named(tiny_policy, small_benchmark):
    _, samples = small_benchmark
    builder = tiny_policy.builder
    prompts = [builder.encode_prompt(s) for s in samples[:2]]
    with pytest.raises(ValueError, match=r"prompts \[1\] have no completion"):
        shared_prompt_batch(builder, prompts, [(0, [40])])
    with pytest.raises(ValueError, match=r"completion 1 \(prompt 1\) has no tokens"):
        shared_prompt_batch(builder, prompts, [(0, [40]), (1, [])])
    with pytest.raises(ValueError, match="follows prompt 2, but the batch has 2 prompts"):
        shared_prompt_batch(builder, prompts, [(0, [40]), (2, [41])])
