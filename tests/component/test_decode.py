"""The transformers engine's sampling loop: the tokens transformers' ``generate`` picks greedily, exact sampling
under temperature, top-k and top-p, banned tokens never drawn, seeded draws repeatable."""

import math

import pytest
import torch

from rlad.config import GenerationConfig
from rlad.inputs import to_model
from rollout.decode import _next_tokens, decode
from rollout.engine import banned_tokens, stop_tokens


@pytest.mark.parametrize("kv_cache", ["static", "dynamic"])
def test_greedy_decode_matches_transformers_generate(tiny_policy, small_benchmark, kv_cache):
    """Prompts of different lengths (left-padded), two images each (1-shot), each prefilled once and expanded to
    3 rows: every row writes the tokens ``generate`` writes for that prompt alone, with its log-probs."""
    from transformers import GenerationConfig as HFGenerationConfig

    _, samples = small_benchmark
    model, builder = tiny_policy.model, tiny_policy.builder
    chosen = [samples[0], samples[7], samples[12]]
    batch = to_model(builder.collate([builder.encode_prompt(s) for s in chosen], padding_side="left"), "cpu",
                     model.dtype)  # fmt: skip
    stop, banned = stop_tokens(builder), banned_tokens(builder.tokenizer)
    settings = GenerationConfig(max_new_tokens=14, kv_cache=kv_cache)
    got = decode(model, batch, 3, settings, greedy=True, stop=stop, banned=banned,
                 pad_id=builder.tokenizer.pad_token_id)  # fmt: skip
    for p, sample in enumerate(chosen):
        alone = to_model(builder.collate([builder.encode_prompt(sample)]), "cpu", model.dtype)
        hf = HFGenerationConfig(max_new_tokens=14, do_sample=False, eos_token_id=stop, suppress_tokens=banned,
                                pad_token_id=builder.tokenizer.pad_token_id, return_dict_in_generate=True,
                                output_logits=True)  # fmt: skip
        with torch.no_grad():
            result = model.generate(**alone, generation_config=hf)
        want = result.sequences[0, alone["input_ids"].shape[1] :].tolist()
        cut = next((j + 1 for j, t in enumerate(want) if t in stop), len(want))
        want_logp = torch.log_softmax(torch.stack(result.logits, 1)[0].float(), -1)
        want_logp = want_logp.gather(1, torch.tensor(want).unsqueeze(1)).squeeze(1)[:cut]
        for row in range(3 * p, 3 * p + 3):
            assert got.token_ids[row] == want[:cut]
            assert got.finished[row] == (cut < len(want) or want[-1] in stop)
            assert got.logprobs[row] == pytest.approx(want_logp.tolist(), abs=1e-4)


def _draws(logits, settings, count=20000, banned=()):
    g = torch.Generator().manual_seed(0)
    tokens, logps = _next_tokens(logits.expand(count, -1), settings, False, banned, g)
    return torch.bincount(tokens, minlength=logits.shape[-1]).double() / count, tokens, logps


def test_sampling_follows_temperature_top_k_top_p_and_bans():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().unsqueeze(0)
    freq, tokens, logps = _draws(logits, GenerationConfig(temperature=1.0))
    assert torch.allclose(freq, probs.double(), atol=0.015)
    assert torch.allclose(logps, probs.log()[tokens])  # the log-prob of the drawn token, before any mask
    freq = _draws(logits, GenerationConfig(temperature=2.0))[0]
    tempered = torch.softmax(logits[0] / 2.0, -1).double()
    assert torch.allclose(freq, tempered, atol=0.015)
    freq = _draws(logits, GenerationConfig(top_k=2))[0]
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0, 0], dtype=torch.double), atol=0.015)
    # top_p 0.8: tokens 0 and 1 already hold 0.8, so token 2 is cut; 0.81 keeps it
    assert _draws(logits, GenerationConfig(top_p=0.8))[0][2:].sum() == 0
    freq = _draws(logits, GenerationConfig(top_p=0.81))[0]
    assert freq[3] == 0 and freq[2] > 0.1
    freq, tokens, logps = _draws(logits, GenerationConfig(), banned=[0])
    assert freq[0] == 0 and torch.allclose(freq[1:], (probs[1:] / probs[1:].sum()).double(), atol=0.015)
    assert torch.allclose(logps, probs.log()[tokens])  # still the unmasked policy's log-prob


def test_seeded_draws_repeat_and_greedy_takes_the_argmax():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(3))
    a = _next_tokens(logits, GenerationConfig(top_p=0.9), False, [], torch.Generator().manual_seed(7))
    b = _next_tokens(logits, GenerationConfig(top_p=0.9), False, [], torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0])
    banned = int(logits[0].argmax())
    token, logp = _next_tokens(logits, GenerationConfig(temperature=0.3), True, [banned], None)
    assert torch.equal(token, logits.index_fill(1, torch.tensor([banned]), -math.inf).argmax(-1))
    picked = torch.log_softmax(logits, -1).gather(1, token.unsqueeze(1)).squeeze(1)  # temperature 1 when greedy
    assert torch.allclose(logp, picked)
