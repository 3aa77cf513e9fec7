"""The engine's packed bf16 linear layers (``rollout/packed_linear.py``): the same numbers as ``torch.nn.Linear``,
never a stale weight, gradients untouched, and an engine whose completions do not change."""

import pytest
import torch

from rollout.packed_linear import PackedLinear, can_pack, pack_for_cpu, pack_linears

needs_packing = pytest.mark.skipif(not can_pack(), reason="no CPU bf16 units (AMX / AVX512-BF16) or oneDNN here")


def _layers(bias: bool) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    torch.manual_seed(0)
    plain = torch.nn.Linear(96, 160, bias=bias).to(torch.bfloat16)
    packed = torch.nn.Linear(96, 160, bias=bias).to(torch.bfloat16)
    packed.load_state_dict(plain.state_dict())
    assert pack_linears(packed) == 1 and isinstance(packed, PackedLinear)
    return plain, packed


@needs_packing
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 96), (8, 96), (128, 1, 96), (2, 300, 96), (0, 96)])
def test_packed_products_equal_plain_linear_bit_for_bit(bias, shape):
    plain, packed = _layers(bias)
    x = torch.randn(shape, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(packed(x), plain(x))
        assert torch.equal(packed(x), plain(x))  # the second call reads the kept packed copy
        assert torch.equal(packed(x.transpose(0, -2).contiguous().transpose(0, -2)), plain(x))  # a strided input
    assert (packed._packed is not None) == (x.numel() > 0)  # an empty batch takes the plain path


@needs_packing
def test_a_changed_weight_is_repacked_never_stale():
    """Every way a weight changes in place moves its version: ``load_state_dict`` (the object-store sync), a
    ``copy_`` (the broadcast), an in-place add (a merged adapter); a new tensor changes its address."""
    plain, packed = _layers(True)
    x = torch.randn(4, 96, dtype=torch.bfloat16)
    with torch.no_grad():
        packed(x)
        for change in (
            lambda m: m.load_state_dict({k: v * 2 for k, v in m.state_dict().items()}),
            lambda m: m.weight.copy_(torch.randn_like(m.weight)),
            lambda m: m.weight.add_(0.5),
            lambda m: setattr(m.weight, "data", torch.randn_like(m.weight)),
        ):
            change(packed)
            plain.load_state_dict(packed.state_dict())
            assert torch.equal(packed(x), plain(x))


@needs_packing
def test_gradients_and_other_dtypes_take_the_plain_path():
    plain, packed = _layers(True)
    x = torch.randn(4, 96, dtype=torch.bfloat16, requires_grad=True)
    packed(x).float().sum().backward()
    assert packed.weight.grad is not None and x.grad is not None and packed._packed is None
    plain32, packed32 = plain.float(), packed.float()
    with torch.no_grad():
        assert torch.equal(packed32(x.detach().float()), plain32(x.detach().float()))
    assert packed32._packed is None


def test_packing_keeps_names_tied_weights_and_leaves_other_models_alone():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 10, bias=False)).to(torch.bfloat16)
    model[1].weight = model[0].weight  # tied, as a language model's output layer often is
    names = list(model.state_dict())
    assert pack_linears(model) == 1
    assert list(model.state_dict()) == names and model[1].weight is model[0].weight
    assert pack_for_cpu(torch.nn.Sequential(torch.nn.Linear(4, 4))) == 0  # fp32: nothing to pack


@needs_packing
def test_a_bf16_engine_writes_the_same_completions_packed_or_not(small_benchmark, tiny_dir):
    """The tiny VLM in bf16 through the rollout engine: sampled (seeded) and greedy completions of a GRPO-sized
    group, token for token and log-prob for log-prob, with ``rollout.pack_weights`` on and off; and after a
    weight update both follow the new weights alike."""
    from rlad.config import load_config
    from rollout.worker import make_engine

    root, samples = small_benchmark
    overrides = [f"data.root={root}", "mask.grid=8", "model.image_size=224", "data.shots=1", "model.dtype=bfloat16",
                 "generation.max_new_tokens=24", "rollout.batch_size=16"]  # fmt: skip
    engines = {on: make_engine(load_config(None, [*overrides, f"rollout.pack_weights={on}"]), str(tiny_dir))
               for on in (True, False)}  # fmt: skip
    assert any(isinstance(m, PackedLinear) for m in engines[True].model.modules())
    assert not any(isinstance(m, PackedLinear) for m in engines[False].model.modules())
    chosen = samples[:2]
    for step in range(2):
        runs = {on: (e.generate(chosen, n=4, seed=3), e.generate(chosen, greedy=True)) for on, e in engines.items()}
        for ours, theirs in zip([c for r in runs[True] for c in r], [c for r in runs[False] for c in r], strict=True):
            assert ours.token_ids == theirs.token_ids and ours.logprobs == theirs.logprobs
        state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                 for k, v in engines[False].model.state_dict().items()}  # fmt: skip
        for engine in engines.values():
            engine.load_weights(state, step + 1)
