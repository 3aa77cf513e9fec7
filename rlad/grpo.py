"""GRPO maths as pure tensor functions: group advantages, KL estimators, the clipped surrogate loss.

Nothing here knows about Ray, DeepSpeed or models: the learner computes per-token log-probabilities and hands
them in. Shapes: B = completions in the batch (prompts x group_size), T = completion tokens (padded).

- Advantages (OmniAD's GRPO): A_i = (r_i - mean(r_group)) / (std(r_group) + eps), with the group's sample std
  (``scale="group"``); ``"batch"`` divides by the batch's std instead, ``"none"`` only centres (Dr.GRPO).
  With a ``baseline`` per prompt (``grpo.baseline: greedy``; not in the paper) r_i is measured against it
  instead of the group's mean: the self-critical baseline of SCST (Rennie et al., 2017), the reward of the
  prompt's greedy completion, so a sample earns a positive advantage only by beating what greedy decoding writes.
- Per-block credit (``grpo.credit: block``; not in the paper): each weighted reward's share of A_i
  (``component_advantages``; the shares add up to A_i) reaches only the tokens of the blocks that reward judges
  (``rlad.credit``), so the loss takes (B, T) advantages.
- Surrogate: ratio = exp(logp - old_logp) per token; loss = -min(ratio * A, clip(ratio, 1 - eps_low,
  1 + eps_high) * A), the decoupled clip of DAPO (eps_low = eps_high gives PPO's).
- Truncated importance sampling (TIS) against the rollout engine: when the policy that sampled (the engine's
  ``behaviour_logp``: an older version in async mode, or the same weights in another numeric path) is not
  the one the ratio starts from (``old_logp``, recomputed by the learner), each token's surrogate is weighted
  by w = min(exp(old_logp - behaviour_logp), tis_cap), detached (Yao et al., "Your efficient RL framework
  secretly brings you off-policy RL training"; verl's and OpenRLHF's TIS).
- KL to a frozen reference, added per token with ``kl_coef``: k3 = exp(ref - logp) - (ref - logp) - 1
  (unbiased, always >= 0; what GRPO uses) or k1 = logp - ref.
- Aggregation over tokens: ``token_mean`` (every completion token of the batch counts once; DAPO, TRL's
  "bnpo"/"dapo"), ``seq_mean_token_mean`` (mean per completion, then over completions; the GRPO paper, TRL's
  "grpo"), ``dr_grpo`` (sum over tokens / (B * max_completion_length); Dr.GRPO).

Tested against hand-computed values and against TRL's ``GRPOTrainer._compute_loss`` on the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "LossOutput", "component_advantages", "group_advantages", "grpo_loss", "kl_estimate", "logprob_mismatch",
    "tis_weights",
]  # fmt: skip

Scale = Literal["group", "batch", "none"]
Aggregation = Literal["token_mean", "seq_mean_token_mean", "dr_grpo"]


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale: Scale = "group",
    eps: float = 1e-4,
    baseline: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) total rewards, consecutive ``group_size`` completions per prompt -> (B,) advantages. ``baseline``
    (prompts,): what each group's rewards are measured against instead of their mean (the greedy completion's
    reward); the scale is still the group's (or the batch's) spread."""
    return _centred(rewards, group_size, baseline) / _divisor(rewards, group_size, scale, eps)


def component_advantages(
    components: dict[str, torch.Tensor],
    group_size: int,
    scale: Scale = "group",
    eps: float = 1e-4,
    baselines: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Each weighted reward's share of the group advantage (``grpo.credit: block``; not in the paper).

    ``components``: name -> (B,) weighted reward. Each is centred in its group like the total (against its
    own ``baselines[name]``, (prompts,), when given), and all are divided by the total's scale, so the shares
    add up to ``group_advantages`` of their sum (against the sum of the baselines).
    """
    total = sum(components.values())
    divisor = _divisor(total, group_size, scale, eps)
    return {
        name: _centred(r, group_size, None if baselines is None else baselines[name]) / divisor
        for name, r in components.items()
    }


def _centred(rewards: torch.Tensor, group_size: int, baseline: torch.Tensor | None = None) -> torch.Tensor:
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (prompts * group_size,), got {tuple(rewards.shape)} for {group_size=}")
    grouped = rewards.view(-1, group_size)  # (prompts, G)
    if baseline is None:
        return (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    if baseline.shape != (grouped.shape[0],):
        raise ValueError(f"baseline must be one value per prompt ({grouped.shape[0]},), got {tuple(baseline.shape)}")
    return (grouped - baseline.to(grouped.dtype)[:, None]).view(-1)


def _divisor(rewards: torch.Tensor, group_size: int, scale: Scale, eps: float) -> torch.Tensor:
    """What centred rewards are divided by: 1 (Dr.GRPO), or the group's or the batch's std + eps."""
    if scale == "none":
        return torch.ones_like(rewards)
    if scale == "group":
        grouped = rewards.view(-1, group_size)
        std = grouped.std(dim=1, keepdim=True).expand_as(grouped).reshape(-1) if group_size > 1 else 0 * rewards
    elif scale == "batch":
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else 0 * rewards
    else:
        raise ValueError(f"scale must be group, batch or none, got {scale!r}")
    return std + eps


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: Literal["k1", "k3"] = "k3") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs (any shape)."""
    delta = ref_logp - logp
    if kind == "k3":
        return torch.exp(delta) - delta - 1
    if kind == "k1":
        return -delta
    raise ValueError(f"kl kind must be k1 or k3, got {kind!r}")


@dataclass
class LossOutput:
    loss: torch.Tensor  # () the scalar to backpropagate
    policy_loss: torch.Tensor  # () the surrogate part alone (detached)
    kl: torch.Tensor  # () mean per-token KL over completion tokens (detached; 0 without a reference)
    clip_fraction: torch.Tensor  # () share of completion tokens whose ratio was clipped against the advantage
    ratio_mean: torch.Tensor  # () mean importance ratio over completion tokens
    tis_mean: torch.Tensor | None = None  # () mean TIS weight over completion tokens (None: TIS off)
    tis_truncated: torch.Tensor | None = None  # () share of completion tokens whose TIS weight hit the cap


def tis_weights(old_logp: torch.Tensor, behaviour_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token truncated importance weights min(pi_old / pi_behaviour, cap), detached (any shape)."""
    return torch.exp(old_logp - behaviour_logp).clamp(max=cap).detach()


def _aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: Aggregation, max_len: int | None) -> torch.Tensor:
    if how == "token_mean":
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    if how == "seq_mean_token_mean":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if how == "dr_grpo":
        if not max_len:
            raise ValueError("dr_grpo aggregation needs max_completion_length")
        return (per_token * mask).sum() / (per_token.shape[0] * max_len)
    raise ValueError(f"aggregation must be token_mean, seq_mean_token_mean or dr_grpo, got {how!r}")


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.28,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_kind: Literal["k1", "k3"] = "k3",
    aggregation: Aggregation = "token_mean",
    max_completion_length: int | None = None,
    behaviour_logp: torch.Tensor | None = None,
    tis_cap: float = 0.0,
) -> LossOutput:
    """The GRPO objective for one batch (module docstring).

    logp (B, T): current policy's log-prob of each sampled token (with grad); old_logp (B, T): the same under
    the policy that sampled (detached); advantages (B,), one per completion, or (B, T), one per token
    (``grpo.credit: block``); mask (B, T): 1 on completion tokens, 0 on padding;
    ref_logp (B, T): the frozen reference's, needed when ``kl_coef > 0``; behaviour_logp (B, T): the rollout
    engine's, weighting each token's surrogate by :func:`tis_weights` when ``tis_cap > 0``.
    """
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    adv = advantages.unsqueeze(1) if advantages.ndim == 1 else advantages  # (B, 1): the same for every token
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high) * adv
    per_token = -torch.min(unclipped, clipped)  # (B, T)
    tis = None
    if tis_cap > 0:
        if behaviour_logp is None:
            raise ValueError("tis_cap > 0 needs behaviour_logp")
        tis = tis_weights(old_logp, behaviour_logp, tis_cap)
        per_token = per_token * tis
    policy_loss = _aggregate(per_token, mask, aggregation, max_completion_length)
    kl_mean = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if kl_coef:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp")
        kl = kl_estimate(logp, ref_logp, kl_kind)
        per_token = per_token + kl_coef * kl
        kl_mean = (kl * mask).sum() / mask.sum().clamp(min=1.0)
    loss = _aggregate(per_token, mask, aggregation, max_completion_length)
    # A token is clipped when the clipped term won the min: ratio left the band on the side the advantage pushes.
    was_clipped = ((ratio < 1 - clip_eps_low) & (adv < 0)) | ((ratio > 1 + clip_eps_high) & (adv > 0))
    tokens = mask.sum().clamp(min=1.0)
    return LossOutput(
        loss=loss,
        policy_loss=policy_loss.detach(),
        kl=kl_mean.detach(),
        clip_fraction=((was_clipped * mask).sum() / tokens).detach(),
        ratio_mean=((ratio * mask).sum() / tokens).detach(),
        tis_mean=None if tis is None else (tis * mask).sum() / tokens,
        tis_truncated=None if tis is None else ((tis >= tis_cap) * mask).sum() / tokens,
    )


def logprob_mismatch(engine_logp: torch.Tensor, learner_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |engine - learner| log-prob over completion tokens: how far the rollout engine's numbers are from
    the learner's for the same weights (stale weights after a sync show up here; TRL saw 0.2 against 0.015)."""
    mask = mask.to(learner_logp.dtype)
    return ((engine_logp - learner_logp).abs() * mask).sum() / mask.sum().clamp(min=1.0)
