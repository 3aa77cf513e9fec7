"""GRPO maths against hand-computed values and against TRL's loss on the same tensors."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from rlad.grpo import group_advantages, grpo_loss, kl_estimate, logprob_mismatch, tis_weights


def test_group_advantages_by_hand():
    # groups [1, 0] and [0, 1]: mean 0.5, sample std sqrt((0.25 + 0.25) / 1) = 0.70711
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=2)
    expected = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert torch.allclose(adv, torch.tensor([expected, -expected, -expected, expected]))
    # no std: centred only (Dr.GRPO)
    assert torch.equal(
        group_advantages(torch.tensor([1.0, 0.0, 3.0, 1.0]), 2, "none"), torch.tensor([0.5, -0.5, 1, -1])
    )
    # a group that agrees carries no signal
    assert torch.equal(group_advantages(torch.tensor([2.0, 2.0, 2.0]), 3), torch.zeros(3))
    # batch std: one std for everything; [0, 2 | 4, 6] has mean-centred [-1, 1, -1, 1] and std 2.582
    batch = group_advantages(torch.tensor([0.0, 2.0, 4.0, 6.0]), 2, "batch")
    assert torch.allclose(batch, torch.tensor([-1.0, 1.0, -1.0, 1.0]) / (torch.tensor([0.0, 2, 4, 6]).std() + 1e-4))
    with pytest.raises(ValueError, match="group_size=3"):
        group_advantages(torch.zeros(4), 3)


def test_greedy_baseline_advantages_by_hand():
    # grpo.baseline greedy: groups [1, 0] and [3, 1] against their greedy completions' 0.5 and 3
    rewards, greedy = torch.tensor([1.0, 0.0, 3.0, 1.0]), torch.tensor([0.5, 3.0])
    assert torch.equal(group_advantages(rewards, 2, "none", baseline=greedy), torch.tensor([0.5, -0.5, 0.0, -2.0]))
    # the scale is still the samples' spread: std([1, 0]) = std([3, 1]) / 2 = 0.70711
    scaled = group_advantages(rewards, 2, "group", baseline=greedy)
    std = torch.tensor([math.sqrt(0.5)] * 2 + [math.sqrt(2.0)] * 2) + 1e-4
    assert torch.allclose(scaled, torch.tensor([0.5, -0.5, 0.0, -2.0]) / std)
    # a group that agrees still learns where it differs from the greedy completion
    assert torch.equal(group_advantages(torch.tensor([2.0, 2.0]), 2, "none", baseline=torch.tensor([1.5])),
                       torch.tensor([0.5, 0.5]))  # fmt: skip
    with pytest.raises(ValueError, match=r"one value per prompt \(2,\), got \(4,\)"):
        group_advantages(rewards, 2, baseline=torch.zeros(4))


def test_clipped_surrogate_by_hand():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    mask = torch.ones(1, 3)
    # A = +1: clip to [0.8, 1.28] -> [1.28, 0.8, 1.1]; min(r, clip(r)) = [1.28, 0.5, 1.1]; loss = -2.88 / 3
    out = grpo_loss(logp, old, torch.tensor([1.0]), mask)
    assert out.loss.item() == pytest.approx(-0.96)
    assert out.clip_fraction.item() == pytest.approx(1 / 3)  # only 1.5 was cut (it pushes the way A does)
    assert out.ratio_mean.item() == pytest.approx(1.0333333)
    # A = -1: min(-r, -clip(r)) = [-1.5, -0.8, -1.1]; loss = 3.4 / 3; the 0.5 ratio is the clipped one
    out = grpo_loss(logp, old, torch.tensor([-1.0]), mask)
    assert out.loss.item() == pytest.approx(3.4 / 3)
    assert out.clip_fraction.item() == pytest.approx(1 / 3)
    # symmetric PPO clip: eps_high 0.2 -> 1.5 clipped to 1.2
    out = grpo_loss(logp, old, torch.tensor([1.0]), mask, clip_eps_high=0.2)
    assert out.loss.item() == pytest.approx(-(1.2 + 0.5 + 1.1) / 3)


def test_truncated_importance_weights_by_hand():
    old = torch.tensor([[0.0, -1.0, -0.5]])
    engine = torch.tensor([[-1.0, 0.0, -0.5]])  # pi_old / pi_engine = e, 1/e, 1
    assert tis_weights(old, engine, 2.0).tolist()[0] == pytest.approx([2.0, math.exp(-1), 1.0])  # e capped at 2
    logp = old + torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1 against old
    mask = torch.ones(1, 3)
    # A = +1: min(r, clip(r)) = [1.28, 0.5, 1.1] (test above), weighted by [2, 1/e, 1]: loss = -(2.56 + 0.5/e + 1.1) / 3
    out = grpo_loss(logp, old, torch.tensor([1.0]), mask, behaviour_logp=engine, tis_cap=2.0)
    assert out.loss.item() == pytest.approx(-(2.56 + 0.5 / math.e + 1.1) / 3)
    assert out.tis_mean.item() == pytest.approx((2 + 1 / math.e + 1) / 3)
    assert out.tis_truncated.item() == pytest.approx(1 / 3)
    # the weight carries no gradient: d loss / d logp is the unweighted one times w
    logp = logp.clone().requires_grad_(True)
    grpo_loss(logp, old, torch.tensor([1.0]), mask, behaviour_logp=engine, tis_cap=2.0).loss.backward()
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -0.5 / math.e / 3, -1.1 * 1.0 / 3])
    assert grpo_loss(logp, old, torch.tensor([1.0]), mask).tis_mean is None  # off by default in the pure function
    with pytest.raises(ValueError, match="behaviour_logp"):
        grpo_loss(logp, old, torch.tensor([1.0]), mask, tis_cap=2.0)


def test_aggregations_by_hand():
    # ratio 1 everywhere, so per-token loss = -A: completion 0 has 3 tokens (A = 1), completion 1 one token (A = 3)
    logp = torch.zeros(2, 3)
    adv = torch.tensor([1.0, 3.0])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    tok = grpo_loss(logp, logp, adv, mask, aggregation="token_mean").loss  # (-1 * 3 - 3) / 4 tokens
    seq = grpo_loss(logp, logp, adv, mask, aggregation="seq_mean_token_mean").loss  # mean(-1, -3)
    dr = grpo_loss(logp, logp, adv, mask, aggregation="dr_grpo", max_completion_length=4).loss  # -6 / (2 * 4)
    assert (tok.item(), seq.item(), dr.item()) == pytest.approx((-1.5, -2.0, -0.75))
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(logp, logp, adv, mask, aggregation="dr_grpo")


def test_gradient_at_ratio_one_is_minus_advantage_per_token():
    logp = torch.zeros(2, 2, requires_grad=True)
    out = grpo_loss(logp, logp.detach(), torch.tensor([2.0, -1.0]), torch.ones(2, 2))
    out.loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.5], [0.25, 0.25]]))  # -A / 4 tokens


def test_kl_estimators_by_hand():
    ref = torch.zeros(3)
    logp = torch.tensor([0.0, math.log(2), -math.log(2)])
    # k3 = exp(ref - logp) - (ref - logp) - 1: 0; 0.5 + ln 2 - 1 = 0.19315; 2 - ln 2 - 1 = 0.30685
    assert torch.allclose(kl_estimate(logp, ref), torch.tensor([0.0, 0.5 + math.log(2) - 1, 1 - math.log(2)]))
    assert torch.allclose(kl_estimate(logp, ref, "k1"), logp)
    mask = torch.ones(1, 3)
    out = grpo_loss(logp[None], logp[None].detach(), torch.tensor([0.0]), mask, ref_logp=ref[None], kl_coef=0.1)
    assert out.kl.item() == pytest.approx((0.5 + math.log(2) - 1 + 1 - math.log(2)) / 3)
    assert out.loss.item() == pytest.approx(0.1 * out.kl.item())
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_loss(logp[None], logp[None], torch.tensor([0.0]), mask, kl_coef=0.1)


def test_logprob_mismatch():
    mask = torch.tensor([[1, 1, 0]])
    assert logprob_mismatch(torch.tensor([[0.0, -1.0, 5.0]]), torch.tensor([[0.2, -1.0, 0.0]]), mask).item() == (
        pytest.approx(0.1)
    )


def _trl_loss(loss_type, logp, old_logp, ref_logp, advantages, mask, beta, eps_low, eps_high, max_len):
    """TRL's GRPOTrainer._compute_loss on our tensors: a stand-in `self` whose model returns ``logp``."""
    from trl import GRPOTrainer

    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None),
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        model=SimpleNamespace(training=False),  # eval mode: no gradient-accumulation scaling
        current_gradient_accumulation_steps=1,
        max_completion_length=max_len,
        accelerator=SimpleNamespace(gather=lambda t: t, reduce=lambda t, reduction: t, num_processes=1),
        _entropy_bonus_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
    )
    inputs = {
        "prompt_ids": torch.zeros(logp.shape[0], 1, dtype=torch.long),
        "prompt_mask": torch.ones(logp.shape[0], 1, dtype=torch.long),
        "completion_ids": torch.zeros(logp.shape, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old_logp,
        "ref_per_token_logps": ref_logp,
        "num_items_in_batch": mask.sum(),
    }
    return GRPOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize(
    ("ours", "trl"), [("seq_mean_token_mean", "grpo"), ("token_mean", "bnpo"), ("dr_grpo", "dr_grpo")]
)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_matches_trl(ours, trl, beta):
    gen = torch.Generator().manual_seed(0)
    B, T = 6, 7
    old = -torch.rand(B, T, generator=gen) * 3
    logp = old + torch.randn(B, T, generator=gen) * 0.3  # ratios spread on both sides of the clip band
    ref = old + torch.randn(B, T, generator=gen) * 0.2
    mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (B, 1), generator=gen)).long()
    adv = torch.randn(B, generator=gen)
    want = _trl_loss(trl, logp, old, ref, adv, mask, beta, 0.2, 0.28, T)
    got = grpo_loss(logp, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28, ref_logp=ref, kl_coef=beta,
                    aggregation=ours, max_completion_length=T)  # fmt: skip
    assert got.loss.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-7)
    assert 0 < got.clip_fraction.item() < 1  # the comparison exercised both clipped and unclipped tokens
