"""The rollout engine on transformers models: the CPU engine (and the GPU fallback to vLLM).

Prompts are built by the one ``InputBuilder`` and left-padded; ``rollout.decode`` prefills each distinct prompt
once and decodes its ``n`` completions together (transformers' ``generate`` would prefill it ``n`` times).
Sampling settings come only from rlad's ``generation`` config section, never from the checkpoint's
``generation_config.json`` (TRL once sampled near-greedily at temperature 1.0 that way). The end-of-turn
token stops a completion; it is kept in ``token_ids`` (the learner trains on it) but not in ``text``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rlad.config import GenerationConfig
from rlad.faults import NonFiniteError
from rlad.inputs import InputBuilder, to_model
from rlad.logprobs import completion_logprobs
from rlad.sample import VerifiableSample
from rollout.decode import decode
from rollout.engine import Completion, banned_tokens, stop_tokens
from rollout.transport import TensorMeta, fingerprint, receive_tensors, weight_group

__all__ = ["TransformersEngine"]


class TransformersEngine:
    def __init__(
        self, model: Any, builder: InputBuilder, generation: GenerationConfig, batch_size: int = 16, version: int = 0
    ):
        self.model = model
        self.builder = builder
        self.generation = generation
        self.batch_size = batch_size
        self.policy_version = version

    def load_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Every parameter and buffer from ``state`` (strict: a missing or extra name is an error, never a
        silently stale weight), then ``version``."""
        self.model.load_state_dict(state, strict=True)
        self.policy_version = version

    def fingerprint(self) -> float:
        return fingerprint(self.model.state_dict().values())

    def load_adapter(self, folder: str, version: int) -> float:
        """LoRA adapters (peft format) on the base weights: the first call wraps the model, later ones replace the
        adapter tensors. Returns the fingerprint of the adapter tensors now in the model."""
        from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
        from safetensors.torch import load_file

        if not isinstance(self.model, PeftModel):
            self.model = PeftModel.from_pretrained(self.model, folder, is_trainable=False)
        else:
            result = set_peft_model_state_dict(self.model, load_file(str(Path(folder) / "adapter_model.safetensors")))
            if result.unexpected_keys:
                raise ValueError(f"adapter {folder}: unexpected tensors {result.unexpected_keys[:5]}")
        self.model.eval()
        self.policy_version = version
        return fingerprint(get_peft_model_state_dict(self.model).values())

    # -- the broadcast transport (rollout/weight_sync.py) ----------------------------------------------

    def weight_ranks(self) -> int:
        return 1

    def join_weight_group(self, init_method: str, first_rank: int, world_size: int, backend: str) -> None:
        self._weight_group = weight_group(init_method, first_rank, world_size, backend)

    def receive_weights(self, meta: Sequence[TensorMeta], plan: Sequence[Sequence[int]], version: int) -> float:
        """Every parameter from the broadcast (names checked both ways: none missing, none unknown), then
        ``version``; returns the fingerprint of the parameters the engine now samples with."""
        params = dict(self.model.named_parameters(remove_duplicate=False))  # tied weights under each name
        names = {m.name for m in meta}
        if names != set(params):
            raise ValueError(
                f"weight broadcast names differ from the engine's parameters: missing {sorted(set(params) - names)[:5]}"
                f", unknown {sorted(names - set(params))[:5]}"
            )
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for name, tensor in receive_tensors(self._weight_group, meta, plan, device, [0.0]):
                params[name].copy_(tensor)
        self.policy_version = version
        return fingerprint(params[m.name] for m in meta)

    # -- the freshness check ----------------------------------------------------------------------------

    def score(self, samples: Sequence[VerifiableSample], token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-probs (temperature 1) of the given completion tokens under the engine's weights, per token."""
        return completion_logprobs(self.model, self.builder, samples, token_ids)

    @torch.no_grad()
    def generate(
        self, samples: Sequence[VerifiableSample], n: int = 1, greedy: bool = False, seed: int | None = None
    ) -> list[Completion]:
        """``n`` completions per sample, in sample order (sample 0's n, then sample 1's, ...); each prompt is
        prefilled once for its n (``rollout.decode``)."""
        device = next(self.model.parameters()).device
        generator = None
        if seed is not None:
            generator = torch.Generator(device).manual_seed(seed)
        tokenizer = self.builder.tokenizer
        out: list[Completion] = []
        per_batch = max(1, self.batch_size // n)
        for start in range(0, len(samples), per_batch):
            chunk = samples[start : start + per_batch]
            inputs = self.builder.collate([self.builder.encode_prompt(s) for s in chunk], padding_side="left")
            inputs = to_model(inputs, device, self.model.dtype)
            decoded = decode(
                self.model, inputs, n, self.generation, greedy=greedy, stop=stop_tokens(self.builder),
                banned=banned_tokens(tokenizer), pad_id=tokenizer.pad_token_id, generator=generator,
            )  # fmt: skip
            for i, (ids, logprobs, finished) in enumerate(
                zip(decoded.token_ids, decoded.logprobs, decoded.finished, strict=True)
            ):
                if not all(math.isfinite(x) for x in logprobs):
                    raise NonFiniteError(
                        f"policy version {self.policy_version} produces non-finite log-probs: its weights diverged"
                    )
                text = tokenizer.decode(ids[:-1] if finished else ids, skip_special_tokens=True)
                out.append(Completion(chunk[i // n].sample_id, text, ids, finished, logprobs, self.policy_version))
        return out
