"""The vision tower's windows in one attention call a block (rlad/vision_windows.py): the same outputs and
gradients as transformers' one call per window, for whole windows, edge windows and images of two sizes."""

import copy

import pytest
import torch

from rlad.config import ModelConfig
from rlad.policy import NO_HUB_KERNELS, load_policy
from rlad.vision_windows import WindowBatchedVisionAttention, batch_vision_windows, windowed_attention

pytestmark = pytest.mark.skipif(
    WindowBatchedVisionAttention is None, reason="this transformers' vision attention differs"
)


def _towers(tiny_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, local_files_only=True, **NO_HUB_KERNELS)
    looped = model.model.visual.float()
    batched = copy.deepcopy(looped)
    assert batch_vision_windows(batched) == len(looped.blocks)
    assert not any(type(block.attn) is WindowBatchedVisionAttention for block in looped.blocks)
    twice = copy.deepcopy(batched)  # and back: the loop again, for a side-by-side (check_gpu_path.py)
    assert batch_vision_windows(twice, batched=False) == len(looped.blocks)
    assert [type(block.attn) for block in twice.blocks] == [type(block.attn) for block in looped.blocks]
    return looped, batched


@pytest.mark.parametrize(
    "grids",
    [
        [[1, 16, 16], [1, 16, 16]],  # 224 px: whole 8 x 8-patch windows (a view, no mask)
        [[1, 12, 12]],  # 168 px: edge windows of 8 x 4 and 4 x 4 patches (padded, masked)
        [[1, 16, 16], [1, 12, 20]],  # two sizes: windows and images of different lengths
    ],
)
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_one_call_a_block_gives_what_one_call_a_window_does(tiny_dir, grids, implementation):
    looped, batched = _towers(tiny_dir)
    for tower in (looped, batched):
        tower.config._attn_implementation = implementation
    grid = torch.tensor(grids)
    patches = int(grid.prod(dim=1).sum())
    torch.manual_seed(0)
    pixels = torch.randn(patches, 3 * 2 * 14 * 14)
    outs = []
    for tower in (looped, batched):
        tower.zero_grad()
        out = tower(pixels, grid_thw=grid)
        out = getattr(out, "pooler_output", None) if not torch.is_tensor(out) else out
        out.square().mean().backward()
        outs.append((out.detach(), {n: p.grad.clone() for n, p in tower.named_parameters()}))
    (a, grads_a), (b, grads_b) = outs
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_the_policy_loader_swaps_every_vision_block(tiny_dir):
    policy = load_policy(ModelConfig(path=str(tiny_dir)))
    attentions = [block.attn for block in policy.model.model.visual.blocks]
    assert attentions and all(type(a) is WindowBatchedVisionAttention for a in attentions)


def test_boundaries_that_do_not_cut_the_sequence_are_refused():
    module = torch.nn.Module()
    module.scaling = 1.0
    q = torch.zeros(1, 2, 10, 4)
    with pytest.raises(ValueError, match="do not cut 10 positions"):
        windowed_attention(module, None, q, q, q, torch.tensor([0, 4, 8]))
