"""rlad.attention: the matmul attention against transformers' own sdpa (same outputs and gradients) and which
calls take it."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from rlad.attention import cpu_attention, matmul_attention


class _Layer(torch.nn.Module):
    def __init__(self, groups: int, causal: bool = True):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = causal


def _inputs(batch, heads, kv_heads, q_len, k_len, dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g).to(dtype).requires_grad_()  # noqa: E731
    return make(batch, heads, q_len, dim), make(batch, kv_heads, k_len, dim), make(batch, kv_heads, k_len, dim)


def _padded_mask(batch, q_len, k_len, pad):
    """Left padding of ``pad[b]`` keys per row, causal over the last ``q_len`` positions (bool, True attends)."""
    keys = torch.arange(k_len)
    queries = torch.arange(k_len - q_len, k_len)
    causal = keys[None, :] <= queries[:, None]
    mask = causal[None].repeat(batch, 1, 1)
    for b, p in enumerate(pad):
        mask[b, :, :p] = False
    return mask[:, None]


def _both(layer, q, k, v, mask):
    """(ours, sdpa's), both (B, Lq, H, D)."""
    ours = matmul_attention(q, k, v, mask).transpose(1, 2)
    theirs = sdpa_attention_forward(layer, q, k, v, mask)[0]
    return ours, theirs


def test_a_decode_step_with_grouped_heads_equals_sdpa_values_and_gradients():
    """fp32, where rounding cannot hide a wrong fold of the heads or of the mask."""
    layer = _Layer(groups=2)
    q, k, v = _inputs(4, 4, 2, 1, 9, 8, torch.float32)
    mask = _padded_mask(4, 1, 9, pad=[0, 2, 5, 8])
    ours, theirs = _both(layer, q, k, v, mask)
    assert ours.shape == theirs.shape == (4, 1, 4, 8)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    weights = torch.randn(ours.shape)
    grads_ours = torch.autograd.grad((ours * weights).sum(), (q, k, v))
    grads_theirs = torch.autograd.grad((theirs * weights).sum(), (q, k, v))
    for a, b in zip(grads_ours, grads_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_many_queries_behind_a_cache_with_a_float_mask_equal_sdpa():
    layer = _Layer(groups=3)
    q, k, v = _inputs(2, 6, 2, 3, 7, 4, torch.float32, seed=1)
    bias = torch.randn(2, 1, 3, 7)
    ours, theirs = _both(layer, q, k, v, bias)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2])
def test_bf16_training_shapes_match_sdpa_to_bf16_rounding(groups):
    """Many queries behind a longer key cache (a completion behind its shared prompt), bf16: the matmul path.
    Against an fp32 reference it errs no more than transformers' eager attention, which rounds the softmax
    weights to bf16 the same way (sdpa's fused kernel keeps them in fp32 and errs about half as much)."""
    from transformers.models.qwen2.modeling_qwen2 import eager_attention_forward

    layer = _Layer(groups=groups)
    layer.training = False
    q, k, v = _inputs(3, 2 * groups, 2, 5, 12, 16, torch.bfloat16, seed=2)
    mask = _padded_mask(3, 5, 12, pad=[0, 3, 6])
    ours = cpu_attention(layer, q, k, v, mask)[0]
    additive = torch.zeros(mask.shape, dtype=torch.bfloat16).masked_fill(~mask, torch.finfo(torch.bfloat16).min)
    eager = eager_attention_forward(layer, q, k, v, additive, scaling=16**-0.5)[0]
    reference = sdpa_attention_forward(layer, *(t.detach().float() for t in (q, k, v)), mask)[0]
    err_ours = (ours.float() - reference).abs().max()
    err_eager = (eager.float() - reference).abs().max()
    assert err_ours <= 1.25 * err_eager, (err_ours, err_eager)
    ours.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_a_row_with_every_key_masked_gives_numbers_not_nan():
    """Left padding longer than a row's keys (a padding query): eager attention's uniform average, no NaN that
    a backward pass would spread."""
    q, k, v = _inputs(2, 2, 2, 1, 5, 4, torch.float32, seed=3)
    mask = torch.zeros(2, 1, 1, 5, dtype=torch.bool)
    mask[0] = True
    out = matmul_attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1, :, 0], v[1].mean(1).detach(), rtol=1e-5, atol=1e-6)


def test_which_calls_take_the_matmuls(monkeypatch):
    """bf16 decode steps and short gradient-taking blocks; fp32, dropout, a bf16 prefill without gradients and
    long blocks stay with sdpa, where its kernel is as fast or faster (rlad/attention.py's measurements)."""
    import transformers.integrations.sdpa_attention as sdpa_module

    from rlad.attention import MATMUL_MAX_QUERIES

    calls = []
    monkeypatch.setattr(sdpa_module, "sdpa_attention_forward", lambda *a, **kw: calls.append(a) or ("sdpa", None))
    layer = _Layer(groups=1)

    def path(q_len, dtype, grad=True, dropout=0.0):
        q, k, v = _inputs(1, 2, 2, q_len, q_len + 3, 8, dtype)
        mask = _padded_mask(1, q_len, q_len + 3, pad=[0])
        with torch.set_grad_enabled(grad):
            out = cpu_attention(layer, q, k, v, mask, dropout=dropout)[0]
        if isinstance(out, str):
            return out
        assert out.shape == (1, q_len, 2, 8) and out.dtype == dtype
        torch.testing.assert_close(out, matmul_attention(q, k, v, mask).transpose(1, 2))
        return "matmul"

    assert path(4, torch.bfloat16) == "matmul"
    assert path(1, torch.bfloat16, grad=False) == "matmul"
    assert path(MATMUL_MAX_QUERIES, torch.bfloat16) == "matmul"
    assert path(MATMUL_MAX_QUERIES + 1, torch.bfloat16) == "sdpa"
    assert path(4, torch.bfloat16, grad=False) == "sdpa"
    assert path(4, torch.bfloat16, dropout=0.1) == "sdpa"
    assert path(4, torch.float32) == "sdpa"
    assert path(1, torch.float32, grad=False) == "sdpa"
    assert len(calls) == 5


def _group_cache(groups, n, kv_heads, prompt, new, filled, dim, dtype, pads, seed=4):
    """A decode step's static cache for ``groups`` prompts of ``n`` rows each: every row of a group holds the same
    prompt keys/values (left-padded by ``pads[k]``), then its own completion in ``[prompt, filled)`` and an unwritten
    tail (garbage, masked) up to ``prompt + new``; the bool mask as transformers builds it (True attends)."""
    g = torch.Generator().manual_seed(seed)
    length, rows = prompt + new, groups * n
    key, value = (torch.randn(rows, kv_heads, length, dim, generator=g) for _ in range(2))
    for t in (key, value):
        t[:, :, :prompt] = torch.randn(groups, kv_heads, prompt, dim, generator=g).repeat_interleave(n, 0)
    mask = torch.zeros(rows, 1, 1, length, dtype=torch.bool)
    mask[..., :filled] = True
    for k, pad in enumerate(pads):
        mask[k * n : (k + 1) * n, ..., :pad] = False
    return key.to(dtype), value.to(dtype), mask


@pytest.mark.parametrize("filled_new", [1, 5])
def test_a_groups_decode_step_against_one_prompt_copy_equals_attention_over_the_whole_cache(filled_new):
    """rlad.attention.shared_prompt_attention: the group's rows over one copy of their prompt, each row over its own
    completion, merged by log-sum-exp — the same numbers as sdpa over every cached row (fp32)."""
    from rlad.attention import SharedPrompt, shared_prompt_attention

    groups, n, heads, kv_heads, prompt, dim = 3, 4, 4, 2, 11, 8
    key, value, mask = _group_cache(groups, n, kv_heads, prompt, 7, prompt + filled_new, dim, torch.float32,
                                    pads=[0, 3, 6])  # fmt: skip
    query = torch.randn(groups * n, heads, 1, dim, generator=torch.Generator().manual_seed(5))
    ours = shared_prompt_attention(query, key, value, mask, SharedPrompt(n, prompt, prompt + filled_new))
    theirs = sdpa_attention_forward(_Layer(groups=2), query, key, value, mask)[0].transpose(1, 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # through the registered function, as a model's forward hands it the keyword
    via = cpu_attention(_Layer(groups=2), query, key, value, mask, rlad_shared_prompt=SharedPrompt(n, prompt,
                        prompt + filled_new))[0]  # fmt: skip
    torch.testing.assert_close(via, theirs.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_a_groups_decode_step_in_bf16_errs_no_more_than_sdpa():
    from rlad.attention import SharedPrompt, shared_prompt_attention

    groups, n, prompt, filled = 2, 8, 40, 49
    key, value, mask = _group_cache(groups, n, 2, prompt, 20, filled, 64, torch.bfloat16, pads=[0, 9])
    query = torch.randn(groups * n, 6, 1, 64, generator=torch.Generator().manual_seed(6)).bfloat16()
    layer = _Layer(groups=3)
    reference = sdpa_attention_forward(layer, query.float(), key.float(), value.float(), mask)[0]
    ours = shared_prompt_attention(query, key, value, mask, SharedPrompt(n, prompt, filled)).transpose(1, 2)
    sdpa = sdpa_attention_forward(layer, query, key, value, mask)[0]
    assert ours.dtype == torch.bfloat16
    err_ours, err_sdpa = ((x.float() - reference).abs().max() for x in (ours, sdpa))
    assert err_ours <= 1.25 * err_sdpa + 1e-3, (err_ours, err_sdpa)


def test_a_shared_prompt_that_does_not_fit_the_step_is_refused_by_name():
    from rlad.attention import SharedPrompt, shared_prompt_attention

    key, value, mask = _group_cache(2, 4, 2, 6, 4, 8, 8, torch.float32, pads=[0, 0])
    query = torch.randn(8, 4, 1, 8)
    for bad in (SharedPrompt(3, 6, 8), SharedPrompt(4, 6, 6), SharedPrompt(4, 6, 11), SharedPrompt(4, 0, 3)):
        with pytest.raises(ValueError, match="does not describe a decode step of 8 rows x 1 queries over 10 cached"):
            shared_prompt_attention(query, key, value, mask, bad)
    with pytest.raises(ValueError, match="8 rows x 2 queries"):  # a prefill is not a decode step
        shared_prompt_attention(torch.randn(8, 4, 2, 8), key, value, mask, SharedPrompt(4, 6, 8))
    with pytest.raises(ValueError, match=r"dropout 0\.1"):
        cpu_attention(_Layer(groups=2), query, key, value, mask, dropout=0.1, rlad_shared_prompt=SharedPrompt(4, 6, 8))
