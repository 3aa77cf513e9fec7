"""The learner: one data-parallel rank of GRPO training, a DeepSpeed engine around the policy.

``Learner`` is a plain class (a test builds it directly); ``rlad.train`` runs ``learner.workers`` of them as
Ray actors that join one torch.distributed group (gloo on CPU, NCCL on GPU), so DeepSpeed averages gradients
across them and ZeRO shards optimizer state (stage from ``learner.zero_stage``).

One call to ``learn`` is one GRPO step on this rank's share of the batch:

    for epoch in range(mu):                         # grpo.epochs_per_step
        for micro-batch of completions:
            logp = log p_theta(completion tokens)   # rlad.logprobs, same input builder as the rollout
            old  = logp.detach() on epoch 0         # "learner": the weights that sampled are these ones
                   or the engine's logprobs         # "engine" (always for groups replayed from the store)
            loss = grpo_loss(logp, old, A, ...)     # rlad.grpo, pure maths
            backward(loss * share of the batch)     # exact token-mean across micro-batches and ranks
        clip gradients, optimizer step              # DeepSpeed

The engine-vs-learner log-prob gap (``logprob_mismatch``) is measured on fresh completions every step: a
sync that left the rollout engine on stale weights shows up there at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from rlad.config import Config, ConfigError, GenerationConfig, GRPOConfig, LearnerConfig
from rlad.console import quiet_stdout
from rlad.credit import cell_credits, token_advantages, token_pieces
from rlad.grpo import grpo_loss, logprob_mismatch
from rlad.inputs import to_model
from rlad.logprobs import completion_logprobs, shared_prompt_logprobs, token_logprobs
from rlad.policy import PolicySpec, merge_lora_state, set_threads
from rlad.replay import Group, informative, replay_candidates
from rlad.run_dir import atomic_folder
from rlad.sample import VerifiableSample
from rlad.shared_prompt import SharedPromptBatch, rope_index_of, shared_prompt_batch
from rollout.transport import (
    NodeAddress,
    TensorMeta,
    fingerprint,
    flatten,
    node_address,
    rendezvous_url,
    to_shared,
    weight_group,
)

__all__ = ["Learner", "Rollout", "check_config", "learner_batch", "loss_units"]

CHECKPOINT_TAG = "learner"


@dataclass
class Rollout:
    """One completion as the learner trains on it."""

    sample: VerifiableSample
    token_ids: list[int]
    logprobs: list[float]  # the rollout engine's, per generated token
    advantage: float
    fresh: bool = True  # sampled by the current weights; False: replayed from the store (off-policy)
    padding: bool = False  # a stand-in for a rank with no share of a small batch: runs, counts for nothing
    block_advantages: dict[str, float] | None = None  # grpo.credit block: block -> share (rlad.credit)


def loss_units(rollouts: Sequence[Rollout], aggregation: str) -> int:
    """What the batch loss is a mean over: completion tokens (token_mean) or completions (the others)."""
    return sum(len(r.token_ids) for r in rollouts) if aggregation == "token_mean" else len(rollouts)


def _deepspeed_config(learner: LearnerConfig, max_grad_norm: float, world_size: int, bf16: bool) -> dict[str, Any]:
    base: dict[str, Any] = {}
    if learner.deepspeed:
        if not Path(learner.deepspeed).is_file():
            raise ConfigError(f"learner.deepspeed: {learner.deepspeed!r} is not a file (a DeepSpeed JSON config)")
        base = json.loads(Path(learner.deepspeed).read_text())
    # "auto" values are the Trainer's convention; here every batch and clipping number is set from rlad's config.
    zero = {k: v for k, v in base.get("zero_optimization", {}).items() if v != "auto"}
    zero["stage"] = learner.zero_stage
    if learner.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        # rlad's torch AdamW steps on the CPU copy (DeepSpeed's compiled CPU Adam is faster where it builds)
        base["zero_force_ds_cpu_optimizer"] = False
    if learner.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    base.update(
        train_micro_batch_size_per_gpu=learner.micro_batch_size,
        gradient_accumulation_steps=1,  # rlad marks the accumulation boundary itself (batches vary in size)
        train_batch_size=learner.micro_batch_size * world_size,
        gradient_clipping=max_grad_norm,
        zero_optimization=zero,
        bf16={"enabled": bf16},
        steps_per_print=10**9,
    )
    base.pop("optimizer", None)  # rlad's AdamW and schedule, below: one place for lr and weight decay
    base.pop("scheduler", None)
    base.pop("fp16", None)
    return base


def check_config(learner: LearnerConfig) -> None:
    """What a learner would refuse (``learner.deepspeed`` not a readable file), checked where it is cheap: the
    driver, before any actor starts."""
    _deepspeed_config(learner, 1.0, learner.workers, bf16=False)


class Learner:
    """Build, then ``setup`` (every rank at once: the process group forms there), then ``learn``.

    It takes the config sections it uses: the policy to train (``PolicySpec``), GRPO's settings, its own
    section, the sampling settings the rollout used (temperature, ``max_new_tokens``: the log-probs and the
    ``dr_grpo`` normaliser depend on them) and the run's seed (rank r seeds with ``seed + r``)."""

    def __init__(self, policy: PolicySpec, grpo: GRPOConfig, learner: LearnerConfig,
                 generation: GenerationConfig, seed: int = 0, rank: int = 0, world_size: int = 1):  # fmt: skip
        self.spec, self.grpo, self.settings, self.generation = policy, grpo, learner, generation
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        set_threads(learner.threads)

    @classmethod
    def from_config(cls, config: Config, checkpoint: str, rank: int = 0, world_size: int = 1) -> Learner:
        """A learner of the run ``config`` on the weights at ``checkpoint`` (tests, benchmarks)."""
        spec = PolicySpec.of(config, checkpoint)
        return cls(spec, config.grpo, config.learner, config.generation, config.seed, rank, world_size)

    def address(self) -> NodeAddress:
        return node_address()

    def setup(self, rendezvous: str | None = None) -> None:
        """Join the learners' process group at ``rendezvous`` (:func:`rendezvous_url`; default: this learner
        alone, through a fresh file), build the policy, the optimizer and the DeepSpeed engine."""
        import deepspeed

        rank, world_size = self.rank, self.world_size
        if rendezvous is None:
            rendezvous = rendezvous_url([self.address()], uuid.uuid4().hex)
        use_gpu = self.settings.num_gpus > 0 and torch.cuda.is_available()
        device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
        os.environ.update({"RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": str(world_size)})
        with quiet_stdout():  # DeepSpeed prints "... shm_comm_op built successfully" on CPUs
            deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo", auto_mpi_discovery=False,
                                       init_method=rendezvous, rank=rank, world_size=world_size)  # fmt: skip
        torch.manual_seed(self.seed + rank)

        self.policy = self.spec.load(device, trainable=True)
        self.builder = self.policy.builder
        self.rope_index = rope_index_of(self.policy.model)  # the shared prompts' M-RoPE positions
        self.reference = None
        grpo = self.grpo
        if grpo.kl_coef > 0:  # frozen copy of the starting policy; skipped entirely when the KL is off
            self.reference = self.spec.load(device).model
        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=grpo.lr, weight_decay=grpo.weight_decay)
        warmup = grpo.warmup_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
        bf16 = next(self.policy.model.parameters()).dtype == torch.bfloat16
        self.engine, *_ = deepspeed.initialize(
            model=self.policy.model,
            optimizer=optimizer,
            lr_scheduler=schedule,
            config=_deepspeed_config(self.settings, grpo.max_grad_norm, world_size, bf16),
        )
        self.device = device
        self.version = 0

    # -- one GRPO step ---------------------------------------------------------------------------------

    def _micro_batches(self, rollouts: Sequence[Rollout], count: int) -> list[list[Rollout]]:
        size = math.ceil(len(rollouts) / count) if rollouts else 0
        return [list(rollouts[i * size : (i + 1) * size]) for i in range(count)]

    def _encode(
        self, chunks: list[list[Rollout]], rollouts: Sequence[Rollout]
    ) -> list[tuple[list[Rollout], dict | SharedPromptBatch]]:
        """(completions, model inputs) per micro-batch; an empty one stands in with the share's first completion.
        Each prompt (images read and processed) is encoded once for the whole group of its completions, and, with
        ``learner.share_prompts``, run once per micro-batch too (``rlad.shared_prompt``)."""
        prompts: dict[str, Any] = {}
        dtype = next(self.engine.module.parameters()).dtype
        out = []
        for chunk in chunks:
            items = chunk or [rollouts[0]]
            for r in items:
                if r.sample.sample_id not in prompts:
                    prompts[r.sample.sample_id] = self.builder.encode_prompt(r.sample)
            if self.settings.share_prompts:
                order = list(dict.fromkeys(r.sample.sample_id for r in items))  # this micro-batch's prompts
                completions = [(order.index(r.sample.sample_id), r.token_ids) for r in items]
                batch = shared_prompt_batch(self.builder, [prompts[i] for i in order], completions, self.rope_index)
                out.append((items, batch.to(self.device, dtype)))
                continue
            encoded = [self.builder.encode_completion(r.sample, r.token_ids, prompts[r.sample.sample_id])
                       for r in items]  # fmt: skip
            # left padding: completions end together, so only their logits are computed (rlad.logprobs)
            batch = to_model(self.builder.collate(encoded, padding_side="left"), self.device, dtype)
            out.append((items, batch))
        return out

    def _advantages(self, items: Sequence[Rollout], mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B,) advantages, or (B, T) per token where the completions carry per-block shares (grpo.credit) or
        per-run credit is on (grpo.cell_credit)."""
        cells = self.grpo.cell_credit
        if not cells and not any(r.block_advantages for r in items):
            return torch.tensor([r.advantage for r in items], dtype=dtype, device=mask.device)
        adv = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        tokenizer = self.builder.tokenizer
        decode = partial(tokenizer.decode, skip_special_tokens=True)  # as the engine made the completion's text
        for row, r in enumerate(items):
            pieces = token_pieces(decode, r.token_ids) if cells or r.block_advantages else []
            if r.block_advantages:
                values = token_advantages(pieces, r.block_advantages)
            else:
                values = [r.advantage] * len(r.token_ids)
            if cells and not r.padding:
                credit = cell_credits(pieces, r.sample.mask, cells, self.grpo.cell_credit_rule)
                values = [v + c for v, c in zip(values, credit, strict=True)]
            adv[row, mask[row]] = torch.tensor(values, dtype=dtype, device=mask.device)
        return adv

    def _logprobs(self, model: Any, batch: dict | SharedPromptBatch, entropy: bool = False) -> tuple[torch.Tensor, ...]:
        """(logprobs, mask[, entropy]) of a micro-batch from ``_encode``, one row per completion."""
        temperature = self.generation.temperature
        if isinstance(batch, SharedPromptBatch):
            return shared_prompt_logprobs(model, batch, temperature, entropy)
        return token_logprobs(model, batch, temperature, entropy)

    def learn(self, rollouts: Sequence[Rollout], global_units: int, micro_batches: int) -> dict[str, float]:
        """One optimizer step per epoch over ``rollouts`` (this rank's share) in ``micro_batches`` pieces (the
        same count on every rank: collectives must line up). ``global_units`` is ``loss_units`` of the whole
        step's batch over every rank, so the summed gradients are those of one loss over the batch."""
        grpo = self.grpo
        engine = self.engine
        engine.train()
        start = time.perf_counter()
        chunks = self._micro_batches(rollouts, micro_batches)
        batches = self._encode(chunks, rollouts)  # once: every epoch reuses them
        old_learner: list[torch.Tensor | None] = [None] * len(chunks)
        advantages: list[torch.Tensor | None] = [None] * len(chunks)  # per micro-batch, made once (decoding)
        sums: dict[str, float] = {}
        weight_total = 0.0

        def add(name: str, value: float, weight: float) -> None:
            sums[name] = sums.get(name, 0.0) + value * weight

        grad_norm = 0.0
        skipped = 0
        for epoch in range(grpo.epochs_per_step):
            nonfinite = False
            for i, chunk in enumerate(chunks):
                engine.set_gradient_accumulation_boundary(i == len(chunks) - 1)
                # this rank ran out of completions: a zero-weight pass keeps the collectives of the ranks aligned
                dummy = not chunk or all(r.padding for r in chunk)
                items, batch = batches[i]
                logp, mask, entropy = self._logprobs(engine, batch, entropy=True)
                engine_logp = torch.zeros_like(logp)
                for row, r in enumerate(items):  # the engine's numbers sit at the completion's label positions
                    engine_logp[row, mask[row]] = torch.tensor(r.logprobs, dtype=logp.dtype, device=logp.device)
                fresh = torch.tensor([r.fresh for r in items], device=logp.device).unsqueeze(1)
                if epoch == 0:
                    old_learner[i] = logp.detach()
                    advantages[i] = self._advantages(items, mask, logp.dtype)
                # replayed groups were sampled by older weights: only the engine's numbers exist for them
                use_engine = torch.full_like(mask, grpo.old_logprobs == "engine") | ~fresh
                old = torch.where(use_engine, engine_logp, old_learner[i])
                ref = None
                if self.reference is not None:
                    with torch.no_grad():
                        ref = self._logprobs(self.reference, batch)[0]
                out = grpo_loss(
                    logp, old, advantages[i], mask, clip_eps_low=grpo.clip_eps_low,
                    clip_eps_high=grpo.clip_eps_high, ref_logp=ref,
                    kl_coef=grpo.kl_coef, kl_kind=grpo.kl_kind, aggregation=grpo.aggregation,
                    max_completion_length=self.generation.max_new_tokens,
                    behaviour_logp=engine_logp, tis_cap=grpo.tis_cap,
                )  # fmt: skip
                nonfinite |= not bool(torch.isfinite(out.loss.detach()))
                units = 0 if dummy else loss_units(items, grpo.aggregation)
                # DeepSpeed averages gradients over ranks: x world_size undoes that, units/global makes the
                # micro-batch's mean one share of the batch's mean.
                engine.backward(out.loss * (units / global_units) * self.world_size)
                if epoch == 0 and not dummy:
                    w = float(mask.sum())
                    weight_total += w
                    for name in ("loss", "policy_loss", "kl", "clip_fraction", "ratio_mean", "tis_mean",
                                 "tis_truncated"):  # fmt: skip
                        if getattr(out, name) is not None:
                            add(name, float(getattr(out, name).detach()), w)
                    add("entropy", float((entropy * mask).sum() / mask.sum().clamp(min=1)), w)
                    fresh_mask = mask & fresh
                    if fresh_mask.any():
                        add("logprob_mismatch", float(logprob_mismatch(engine_logp, logp.detach(), fresh_mask)), w)
            norm = None
            if self.settings.zero_stage == 0:  # DeepSpeed reports a norm only for ZeRO; here grads are whole
                grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
                norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            if self._nonfinite(nonfinite, norm):  # every rank decides alike: the step is skipped everywhere
                skipped += 1
                if self.settings.zero_stage:
                    engine.optimizer.zero_grad()
                else:
                    engine.zero_grad()
                continue
            engine.step()
            norm = engine.get_global_grad_norm() if norm is None else norm
            grad_norm = float(norm) if norm is not None else float("nan")
        self.version += 1
        seconds = time.perf_counter() - start
        tokens = sum(len(r.token_ids) for r in rollouts if not r.padding)
        metrics = {k: v / max(weight_total, 1.0) for k, v in sums.items()}
        metrics.update(grad_norm=grad_norm, lr=engine.get_lr()[0], learn_tokens=float(tokens), learn_seconds=seconds)
        metrics["skipped_steps"] = float(skipped)  # non-finite loss or gradients: weights and optimizer untouched
        return metrics

    def _nonfinite(self, loss_nonfinite: bool, norm: torch.Tensor | None) -> bool:
        """Whether this optimizer step must be skipped: a non-finite loss on any rank, or a non-finite gradient
        (the whole gradient under ZeRO-0, the partitions DeepSpeed holds under ZeRO 1-3; both agreed by
        all-reduce)."""
        flag = torch.tensor([float(loss_nonfinite)], device=self.device)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            return True
        if norm is not None:  # ZeRO-0: gradients were all-reduced in backward, every rank sees the same norm
            return not bool(torch.isfinite(norm))
        return bool(self.engine.optimizer.has_overflow(partition_gradients=True))

    # -- weights out, checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The full policy weights on CPU, for the rollout engines (ZeRO-3 gathers the shards; every rank
        must call, rank 0's copy is the one to send). On a CPU the tensors may be the live weights themselves
        (no copy): Ray serialises them when sent; clone to keep a snapshot. With LoRA: the adapters merged into
        the weights, under the plain model's names (the engines run the plain model)."""
        lora = self.spec.model.lora
        if lora.r:
            module_state = self.engine.module.state_dict()
            state = {k: v.detach().cpu() for k, v in merge_lora_state(module_state, lora.alpha / lora.r).items()}
        elif self.settings.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()  # collective; full only on rank 0
            state = {k: v.cpu() for k, v in (state or {}).items()}
        else:
            state = {k: v.detach().cpu() for k, v in self.engine.module.state_dict().items()}
        self._fingerprint = fingerprint(state.values())
        return state

    def score(self, samples: Sequence[VerifiableSample], token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-probs (temperature 1) of given completions under the current weights: the freshness check's
        reference (every rank calls under ZeRO-3; the forward gathers the shards)."""
        self.engine.eval()
        try:
            return completion_logprobs(self.engine.module, self.builder, samples, token_ids)
        finally:
            self.engine.train()

    # the broadcast transport (rollout.weight_sync: broadcast; rollout/weight_sync.py)

    def _sent_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """What the broadcast sends, by name: the parameters (LoRA: the merged weights, computed once per sync
        in :meth:`weight_meta`)."""
        if self.spec.model.lora.r:
            return self._merged
        return list(self.engine.module.named_parameters(remove_duplicate=False))

    def weight_meta(self) -> list[TensorMeta]:
        """Name, dtype and full shape of every parameter, in the order :meth:`broadcast_weights` sends them. A tied
        weight is listed under each of its names (``lm_head`` and ``embed_tokens``): vLLM's CPU build keeps a
        processed copy per layer, and an ``lm_head`` not sent stays stale there (found by the freshness test)."""
        if self.spec.model.lora.r:
            lora = self.spec.model.lora
            # the plain model's state dict: every parameter under each of its names (tied ones twice)
            self._merged = list(merge_lora_state(self.engine.module.state_dict(), lora.alpha / lora.r).items())
        return [
            TensorMeta(name, str(p.dtype).removeprefix("torch."), tuple(getattr(p, "ds_shape", p.shape)))
            for name, p in self._sent_parameters()
        ]

    def join_weight_group(self, init_method: str, world_size: int, backend: str) -> None:
        """Rank 0 only: become rank 0 (the sender) of the weight-broadcast group."""
        self._weight_group = weight_group(init_method, 0, world_size, backend)
        self._weight_backend = backend

    def broadcast_weights(self, plan: list[list[int]]) -> float:
        """Send every parameter, bucket by bucket (every learner rank calls: under ZeRO-3 each bucket is gathered
        from the shards first). Returns the fingerprint of what rank 0 sent (0.0 on the other ranks)."""
        import deepspeed

        params = [p for _, p in self._sent_parameters()]
        total = 0.0
        for bucket in plan:
            chosen = [params[i] for i in bucket]
            unique = list({id(p): p for p in chosen}.values())  # a tied weight is gathered once
            gathered = deepspeed.zero.GatheredParameters(unique) if self.settings.zero_stage == 3 else None
            with gathered or contextlib.nullcontext():
                if self.rank != 0:
                    continue
                flat = flatten([p.data for p in chosen])  # one collective per bucket
                flat = flat if self._weight_backend == "nccl" else flat.cpu()
                self._weight_group.broadcast(flat, 0).wait()
                total += fingerprint([flat])
        return total

    def save_adapter(self, folder: str) -> float:
        """``rollout.lora_sync: adapter``: rank 0 writes the LoRA adapters (peft format) into ``folder``, aside then
        renamed; returns the fingerprint of the adapter tensors (every rank calls; only rank 0 writes)."""
        from peft import get_peft_model_state_dict

        adapters = get_peft_model_state_dict(self.engine.module)
        if self.rank == 0:
            with atomic_folder(folder) as tmp:  # replaces this version if written before (a resumed run)
                self.engine.module.save_pretrained(str(tmp))
        return fingerprint(adapters.values())

    def shared_state(self) -> dict:
        """:meth:`state_dict` as numpy arrays, for Ray's object store (read without a copy on the node)."""
        return to_shared(self.state_dict())

    def fingerprint(self) -> float:
        """Sum of every weight of the last ``state_dict`` sent, in float64: a rollout engine holding these
        weights reports the same number (the freshness check after a sync)."""
        return self._fingerprint

    def save(self, folder: str) -> None:
        """Model, optimizer, schedule and RNG into ``folder`` (every rank calls; DeepSpeed writes the shards)."""
        client = {"version": self.version, "torch_rng": torch.get_rng_state()}
        self.engine.save_checkpoint(folder, tag=CHECKPOINT_TAG, client_state=client)

    def load(self, folder: str) -> int:
        _, client = self.engine.load_checkpoint(folder, tag=CHECKPOINT_TAG)
        if client is None:
            raise FileNotFoundError(f"{folder}: no learner checkpoint (tag {CHECKPOINT_TAG!r})")
        self.version = int(client["version"])
        torch.set_rng_state(client["torch_rng"])
        return self.version

    def save_pretrained(self, folder: str) -> None:
        """The policy as a plain checkpoint folder (weights and model config)."""
        state = self.state_dict()
        if self.rank == 0:
            module = self.engine.module
            plain = module.get_base_model() if self.spec.model.lora.r else module  # LoRA: the merged model
            plain.save_pretrained(folder, state_dict=state)


def learner_batch(config: Config, fresh: list[Group], past: list[Group], version: int, step: int):
    """A step's learner batch: fresh groups (all, or only those with signal under ``grpo.dynamic_sampling``)
    plus ``grpo.replay_share`` of replayed ones, at most ``grpo.max_staleness`` versions old; returns
    (rollouts, fresh groups kept, groups replayed)."""
    grpo = config.grpo
    chosen = informative(fresh) if grpo.dynamic_sampling else list(fresh)
    replayed: list[Group] = []
    if grpo.replay_share > 0:
        candidates = replay_candidates(past, version, grpo.max_staleness)
        want = round(len(fresh) * grpo.replay_share / (1 - grpo.replay_share))
        replayed = random.Random(f"{config.seed}-{step}").sample(candidates, min(want, len(candidates)))
    rollouts = [
        Rollout(
            g.sample,
            g.token_ids[i],
            g.logprobs[i],
            g.advantages[i],
            fresh=is_fresh,
            block_advantages=g.block_advantages[i] if g.block_advantages else None,
        )
        for groups, is_fresh in ((chosen, True), (replayed, False))
        for g in groups
        for i in range(len(g.completions))
    ]
    return rollouts, len(chosen), len(replayed)
