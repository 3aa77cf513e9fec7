"""Rollout engines for rlad (transformers on CPU/GPU, vLLM on GPU) and the Ray rollout worker.

`transformers_engine.TransformersEngine` generates completions today; the Ray rollout worker, weight sync
and the vLLM backend come with the GRPO-on-Ray and vLLM issues.
"""
